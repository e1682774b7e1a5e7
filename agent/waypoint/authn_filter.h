#pragma once

// RequestAuthentication as a request filter ("jwt_authn"): runs the Authenticator for the
// waypoint's destination workload (the target the authorization filter gets) and
//   - on reject answers what Envoy's jwt_authn answers: 401 with the JWT error text (403
//     "Audiences in Jwt are not allowed") and a `www-authenticate` header;
//   - on allow fills `request.auth` (read by requestPrincipals and request.auth.claims[...] in
//     the authorization filter that follows), `jwt_principal` for the access log, and the header
//     changes (outputPayloadToHeader, outputClaimToHeaders, forwardOriginalToken: false) that the
//     proxy applies to the forwarded request.
// Exp and nbf are checked against the clock the proxy gives the filter (ProxyContext::clock).
//
// Thread-safety: immutable after construction; OnRequest may run on any thread (the
// Authenticator and its JwksProvider are thread-safe).

#include <memory>

#include "agent/authn/authenticator.h"
#include "agent/authz/request.h"
#include "agent/common/clock.h"
#include "agent/waypoint/filter.h"

namespace ambit::waypoint {

class AuthnFilter final : public RequestFilter {
 public:
  // clock must outlive the filter.
  AuthnFilter(std::shared_ptr<const authn::Authenticator> authenticator, authz::Workload target,
              const Clock* clock)
      : authenticator_(std::move(authenticator)), target_(std::move(target)), clock_(clock) {}
  const char* name() const override { return "jwt_authn"; }
  FilterResult OnRequest(RequestContext& ctx) override;

 private:
  std::shared_ptr<const authn::Authenticator> authenticator_;
  authz::Workload target_;
  const Clock* clock_;
};

}  // namespace ambit::waypoint
