#include "agent/config/security_config.h"

#include <utility>

namespace ambit::config {

std::vector<authz::CompiledPolicy> SecurityConfig::CompiledAuthorizationPolicies() const {
  std::vector<authz::CompiledPolicy> out;
  out.reserve(authorization_policies.size());
  for (const auto& [key, policy] : authorization_policies) {
    absl::StatusOr<authz::CompiledPolicy> compiled = authz::Compile(policy);
    if (compiled.ok()) out.push_back(*std::move(compiled));
  }
  return out;
}

}  // namespace ambit::config
