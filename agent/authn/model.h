#pragma once

// Istio's RequestAuthentication (security.istio.io/v1 and v1beta1) as plain value types, kept as
// written in the resource. The config layer fills and validates them (agent/config/kube_yaml.cc);
// the Authenticator (authenticator.h) applies them. Thread-compatible value types.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/authz/model.h"

namespace ambit::authn {

// jwtRules[].fromHeaders[]: a header carrying the token after `prefix` (e.g. "Bearer ").
struct HeaderLocation {
  std::string name;
  std::string prefix;

  friend bool operator==(const HeaderLocation&, const HeaderLocation&) = default;
};

// jwtRules[].outputClaimToHeaders[]: copy the claim (a dotted path into nested objects) into the
// request header.
struct ClaimToHeader {
  std::string header;
  std::string claim;

  friend bool operator==(const ClaimToHeader&, const ClaimToHeader&) = default;
};

// The Envoy default for JWTRule.timeout: how long a jwksUri fetch may take.
inline constexpr absl::Duration kDefaultJwksFetchTimeout = absl::Seconds(5);
// Envoy refuses a fetch timeout of 2^32 s or more (HttpUri.timeout): a rule with one would never
// be served, so the config layer and the control channel refuse it too.
inline constexpr absl::Duration kJwksFetchTimeoutLimit = absl::Seconds(int64_t{1} << 32);

struct JwtRule {
  std::string issuer;
  std::vector<std::string> audiences;  // empty: any audience
  std::string jwks;                    // inline JWKS JSON; empty: fetched from jwks_uri
  std::string jwks_uri;
  // Token locations. All three empty: Envoy's defaults, `Authorization: Bearer <token>` and the
  // query parameter `access_token`. Any one set replaces the defaults entirely.
  std::vector<HeaderLocation> from_headers;
  std::vector<std::string> from_params;
  std::vector<std::string> from_cookies;
  std::string output_payload_to_header;  // empty: none
  bool forward_original_token = false;
  std::vector<ClaimToHeader> output_claim_to_headers;
  // Longer than 0, shorter than kJwksFetchTimeoutLimit, whole nanoseconds (as on the wire).
  absl::Duration timeout = kDefaultJwksFetchTimeout;
  // Claims besides scope, scp and permission whose string value is split on spaces for matching.
  std::vector<std::string> space_delimited_claims;

  friend bool operator==(const JwtRule&, const JwtRule&) = default;
};

struct RequestAuthentication {
  std::string name;            // metadata.name
  std::string namespace_name;  // metadata.namespace
  // spec.selector.matchLabels; nullopt when there is no selector.
  std::optional<std::map<std::string, std::string>> selector;
  std::vector<authz::TargetRef> target_refs;  // spec.targetRef / spec.targetRefs
  std::vector<JwtRule> jwt_rules;
  std::string source_file;  // where the config layer found it, for messages

  // "namespace/name".
  std::string Key() const { return namespace_name + "/" + name; }
  friend bool operator==(const RequestAuthentication&, const RequestAuthentication&) = default;
};

// One thing wrong with a target reference: the field it is about ("name", or empty for the
// reference as a whole) and why.
struct TargetRefProblem {
  std::string field;
  std::string message;
};

// What keeps `ref` from being a RequestAuthentication's target, as istiod decides: it names its
// target, which is a Gateway, the istio-waypoint GatewayClass, a core Service or an Istio
// ServiceEntry. Empty when it may be one. The config layer and the control channel both check
// with it, so what loads is what travels.
std::vector<TargetRefProblem> TargetRefProblems(const authz::TargetRef& ref);

}  // namespace ambit::authn
