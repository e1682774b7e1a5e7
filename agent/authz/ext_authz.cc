#include "agent/authz/ext_authz.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace ambit::authz {

Decision ResolveExtAuthz(Decision pending, const absl::StatusOr<bool>& provider_allowed) {
  if (pending.reason != DecisionReason::kExtAuthzRequired || !pending.ext_authz.has_value()) {
    return pending;
  }
  const ExtAuthzRequirement requirement = *pending.ext_authz;
  Decision d = std::move(pending);
  if (provider_allowed.ok() && *provider_allowed) {
    const Verdict& v = requirement.if_allowed;
    d.allowed = v.allowed;
    d.reason = v.reason;
    d.policy = v.policy;
    d.rule_index = v.rule_index;
    d.explanation =
        absl::StrCat("ext_authz provider \"", requirement.provider, "\" allowed; ", v.explanation);
    return d;
  }
  d.allowed = false;
  d.reason = DecisionReason::kExtAuthzDenied;
  d.policy = requirement.policy;
  d.rule_index = requirement.rule_index;
  d.explanation = provider_allowed.ok()
                      ? absl::StrCat("denied by ext_authz provider \"", requirement.provider,
                                     "\" (CUSTOM policy ", requirement.policy, " rule ",
                                     requirement.rule_index, ")")
                      : absl::StrCat("denied: ext_authz provider \"", requirement.provider,
                                     "\" failed (CUSTOM policy ", requirement.policy,
                                     "): ", provider_allowed.status().message());
  return d;
}

}  // namespace ambit::authz
