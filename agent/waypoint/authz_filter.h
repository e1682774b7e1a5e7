#pragma once

// L7 AuthorizationPolicy as a request filter: evaluates the snapshot's engine for the waypoint's
// destination workload and answers 403 `RBAC: access denied` on deny, as Envoy's RBAC filter
// does. A CUSTOM policy that matches asks the provider's client in `authorizers` (Istio's order:
// CUSTOM, then DENY, then ALLOW) and acts on its answer; without a client for the provider the
// request is denied (fail closed) with the provider named in the log.
//
// Thread-safety: immutable after construction; OnRequest may run on any thread.

#include <memory>
#include <string>

#include "agent/authz/engine.h"
#include "agent/waypoint/ext_authz_client.h"
#include "agent/waypoint/filter.h"
#include "agent/waypoint/metrics.h"

namespace ambit::waypoint {

inline constexpr char kRbacDeniedBody[] = "RBAC: access denied";

class AuthzFilter final : public RequestFilter {
 public:
  // `authorizers` may be null (no provider can be asked); `local_principal` is the waypoint's own
  // SPIFFE ID, the check's destination principal. `metrics` (may be null; it outlives the filter)
  // counts the checks by provider and result.
  AuthzFilter(std::shared_ptr<const authz::Engine> engine, authz::Workload target,
              std::shared_ptr<AuthorizerSet> authorizers = nullptr,
              std::string local_principal = "", HttpMetrics* metrics = nullptr)
      : engine_(std::move(engine)),
        target_(std::move(target)),
        authorizers_(std::move(authorizers)),
        local_principal_(std::move(local_principal)),
        metrics_(metrics) {}
  const char* name() const override { return "rbac"; }
  FilterResult OnRequest(RequestContext& ctx) override;

 private:
  FilterResult AskAuthorizer(authz::Decision d, RequestContext& ctx);
  // Acts on the authorizer's answer. Static: a pending check may outlive this filter (a new
  // configuration replaced it), never the request's context.
  static FilterResult OnAnswer(const authz::Decision& d, const authz::ExtAuthzProvider& p,
                               AuthzCheckResponse r, RequestContext& ctx, HttpMetrics* metrics);

  std::shared_ptr<const authz::Engine> engine_;
  authz::Workload target_;
  std::shared_ptr<AuthorizerSet> authorizers_;
  std::string local_principal_;
  HttpMetrics* metrics_;
};

}  // namespace ambit::waypoint
