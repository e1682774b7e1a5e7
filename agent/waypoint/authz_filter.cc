#include "agent/waypoint/authz_filter.h"

#include "absl/strings/str_cat.h"
#include "agent/common/log.h"

namespace ambit::waypoint {
namespace {
constexpr const char* kLog = "waypoint";
}  // namespace

FilterResult AuthzFilter::OnRequest(RequestContext& ctx) {
  authz::Decision d = engine_->Evaluate(target_, ctx.request);
  ctx.policy = d.policy;
  if (d.reason == authz::DecisionReason::kExtAuthzRequired) {
    const std::string provider = d.ext_authz ? d.ext_authz->provider : std::string("?");
    ctx.details = "ext_authz_unavailable";
    AMBIT_LOG(kLog, Warning) << "denied " << ctx.request.method << " " << ctx.request.host
                             << ctx.request.path << ": CUSTOM policy " << d.policy
                             << " requires external authorization by provider \"" << provider
                             << "\", which this waypoint does not support yet (fail closed)";
    return FilterResult::Respond(403, kRbacDeniedBody);
  }
  if (d.reason == authz::DecisionReason::kBadRequest) {
    ctx.details = "bad_request";
    return FilterResult::Respond(400, "Bad Request");
  }
  if (!d.allowed) {
    ctx.details = "rbac_access_denied";
    AMBIT_LOG(kLog, Debug) << "denied: " << d.explanation;
    return FilterResult::Respond(403, kRbacDeniedBody);
  }
  return FilterResult::Continue();
}

}  // namespace ambit::waypoint
