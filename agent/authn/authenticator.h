#pragma once

// RequestAuthentication at a waypoint (or any L7 enforcement point): which JWT rules apply to a
// request, where its tokens are, whether they are valid, and what the request looks like after
// (the authenticated JwtAuth for authz, header changes). The semantics are those of Envoy's
// jwt_authn filter as istiod configures it for a RequestAuthentication:
//   - every jwtRule is a provider; the requirement is "any of the providers, or allow_missing";
//   - a request without any token passes, unauthenticated (an AuthorizationPolicy with
//     requestPrincipals is what then denies it);
//   - a token present must be valid: one provider whose locations hold tokens that all verify
//     under it, or every token found verified by the provider of its issuer among those reading
//     its location; otherwise 401 with Envoy's text (403 "Audiences in Jwt are not allowed");
//   - CORS preflight requests (OPTIONS with Origin and Access-Control-Request-Method) skip it;
//   - `request.auth.principal` is "<iss>/<sub>"; scope, scp, permission and each rule's
//     spaceDelimitedClaims are split on spaces for matching.
// Which RequestAuthentications apply follows AuthorizationPolicy (authz/engine.h): at a waypoint
// (Workload::waypoint set) only targetRefs attach (Gateway = the waypoint, GatewayClass
// istio-waypoint from the root namespace, Service = the addressed services); elsewhere the root
// namespace's and the workload's namespace's policies whose selector matches.
// Immutable once built; thread-safe (the JwksProvider must be too).

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/authn/jose.h"
#include "agent/authn/jwks_provider.h"
#include "agent/authn/jwt_cache.h"
#include "agent/authn/model.h"
#include "agent/authn/signature.h"
#include "agent/authz/engine.h"
#include "agent/authz/request.h"

namespace ambit::authn {

struct AuthenticatorOptions {
  std::string root_namespace = "istio-system";  // MeshConfig rootNamespace
  std::string scheme = "http";                  // for the www-authenticate realm
};

// One change to the request headers before it goes upstream. Names are lower case.
struct HeaderMutation {
  enum class Op { kSet, kRemove };
  Op op = Op::kSet;
  std::string name;
  std::string value;  // kSet only

  friend bool operator==(const HeaderMutation&, const HeaderMutation&) = default;
};

// Where a token was found.
struct TokenLocation {
  enum class Kind { kHeader, kParam, kCookie };
  Kind kind = Kind::kHeader;
  std::string name;    // header name (lower case), query parameter or cookie name
  std::string prefix;  // headers only

  // "header authorization (prefix \"Bearer \")", "query parameter access_token", "cookie session".
  std::string ToString() const;
  friend bool operator==(const TokenLocation&, const TokenLocation&) = default;
};

// What happened to one token, for explanations.
struct TokenCheck {
  TokenLocation location;
  std::string policy;  // RequestAuthentication "namespace/name" of the rule used; empty: none
  int rule = -1;       // index in its jwtRules
  std::string issuer;  // the token's iss, when it parsed
  JwtStatus status = JwtStatus::kOk;
  std::string detail;  // more than StatusText, e.g. which JWKS problem

  friend bool operator==(const TokenCheck&, const TokenCheck&) = default;
};

struct AuthnResult {
  bool allowed = true;
  // 0 when allowed, else 401 or 403; body is Envoy's text (StatusText(status)).
  int http_status = 0;
  JwtStatus status = JwtStatus::kOk;
  std::string body;
  std::string www_authenticate;                  // set with 401 and 403
  std::optional<authz::JwtAuth> auth;            // the first valid token; nullopt: unauthenticated
  std::vector<HeaderMutation> header_mutations;  // apply in order when allowed
  // Explanation.
  std::vector<std::string> policies;  // the RequestAuthentications that apply, by key
  bool cors_preflight = false;        // skipped as a CORS preflight
  std::vector<TokenCheck> checks;     // per token, in the order checked
  std::string reason;                 // one line: what decided
};

class Authenticator {
 public:
  // Rules with an inline jwks have it parsed here (an error names the policy and rule); rules
  // with a jwksUri ask `remote` at request time (null: such tokens are always rejected, as while
  // the key set is unavailable). verifier and remote must outlive the Authenticator.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(
      std::vector<RequestAuthentication> policies, AuthenticatorOptions options,
      const SignatureVerifier* verifier, const JwksProvider* remote);

  // now: the time exp and nbf are checked against. cache (optional, the calling thread's own):
  // tokens already verified under a provider's current key set skip the parse and the signature
  // check; the result is the same with or without it (jwt_cache.h).
  AuthnResult Authenticate(const authz::Workload& target, const authz::Request& request,
                           absl::Time now, VerifiedJwtCache* cache = nullptr) const;

  // The policies that apply to target, by key.
  std::vector<std::string> ApplicablePolicies(const authz::Workload& target) const;

  // Applies mutations to headers (a copy of the request's) as the upstream request would carry
  // them; for explanations and tests.
  static authz::HeaderMap ApplyMutations(const authz::HeaderMap& headers,
                                         const std::vector<HeaderMutation>& mutations);

 private:
  struct Provider;
  Authenticator(std::vector<RequestAuthentication> policies, std::vector<Provider> providers,
                AuthenticatorOptions options, const SignatureVerifier* verifier,
                const JwksProvider* remote);

  std::vector<const Provider*> Applicable(const authz::Workload& target) const;

  std::vector<RequestAuthentication> policies_;
  std::vector<Provider> providers_;
  AuthenticatorOptions options_;
  const SignatureVerifier* verifier_;
  const JwksProvider* remote_;

 public:
  ~Authenticator();
};

}  // namespace ambit::authn
