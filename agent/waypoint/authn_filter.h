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
// Thread-safety: OnRequest may run on any thread (the Authenticator and its JwksProvider are
// thread-safe) unless a cache of verified tokens is given: that one belongs to one worker, and so
// do the filters sharing it.

#include <memory>

#include "agent/authn/authenticator.h"
#include "agent/authn/jwt_cache.h"
#include "agent/authz/request.h"
#include "agent/common/clock.h"
#include "agent/waypoint/filter.h"

namespace ambit::waypoint {

class AuthnFilter final : public RequestFilter {
 public:
  // clock must outlive the filter. cache: the worker's verified tokens (null: none).
  AuthnFilter(std::shared_ptr<const authn::Authenticator> authenticator, authz::Workload target,
              const Clock* clock, std::shared_ptr<authn::VerifiedJwtCache> cache = nullptr)
      : authenticator_(std::move(authenticator)),
        target_(std::move(target)),
        clock_(clock),
        cache_(std::move(cache)) {}
  const char* name() const override { return "jwt_authn"; }
  FilterResult OnRequest(RequestContext& ctx) override;

 private:
  std::shared_ptr<const authn::Authenticator> authenticator_;
  authz::Workload target_;
  const Clock* clock_;
  std::shared_ptr<authn::VerifiedJwtCache> cache_;
};

}  // namespace ambit::waypoint
