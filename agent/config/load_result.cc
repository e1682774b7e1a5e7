#include "agent/config/load_result.h"

#include <algorithm>

namespace ambit::config {

bool LoadResult::HasErrors() const {
  return std::any_of(errors.begin(), errors.end(), [](const ConfigError& e) { return !e.warning; });
}

authz::EngineOptions AuthzEngineOptions(const state::MeshConfig& mesh) {
  authz::EngineOptions options;
  options.root_namespace = mesh.root_namespace;
  options.trust_domains =
      authz::TrustDomainBundle::Of(mesh.trust_domain, mesh.trust_domain_aliases);
  const std::string& n = mesh.path_normalization;
  if (n == "NONE") {
    options.path_normalization = authz::PathNormalization::kNone;
  } else if (n == "MERGE_SLASHES") {
    options.path_normalization = authz::PathNormalization::kMergeSlashes;
  } else if (n == "DECODE_AND_MERGE_SLASHES") {
    options.path_normalization = authz::PathNormalization::kDecodeAndMergeSlashes;
  } else {
    options.path_normalization = authz::PathNormalization::kBase;  // "" and "BASE"
  }
  return options;
}

absl::StatusOr<std::unique_ptr<authz::Engine>> BuildAuthzEngine(const LoadResult& result) {
  return authz::Engine::Create(result.security.CompiledAuthorizationPolicies(),
                               AuthzEngineOptions(result.state.mesh));
}

}  // namespace ambit::config
