// JWTs and JWKS documents, as a waypoint meets them: tokens arrive in request headers, query
// strings and cookies from any client; a JWKS comes from the config (jwks) or a jwksUri server.
// Input: [mode (byte & 1): 0 token, 1 JWKS document][payload].
//  - token: the payload goes into the Authorization header, the access_token parameter and a
//    cookie of one request, through an Authenticator whose rules (fixed here) hold an RSA, an EC,
//    an Ed25519 and an oct key (secret "fuzz-secret", so seeds can carry valid HS256 tokens);
//  - JWKS: parsed; every usable key is turned into a public key and asked to verify a fixed token
//    under every algorithm.
// Properties: no crash, leak or hang; a parsed token's signing input is its first two segments;
// a rejection is 401 or 403 with Envoy's text and a www-authenticate value; an accepted token's
// principal is "<iss>/<sub>"; a JWKS that parses has at least one key.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "agent/authn/authenticator.h"
#include "agent/authn/jose.h"
#include "agent/authn/signature.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using namespace ambit::authn;  // NOLINT(build/namespaces): a harness, not a library

constexpr char kJwks[] =
    R"({"keys":[{"kty":"oct","kid":"hs","k":"ZnV6ei1zZWNyZXQ"},{"kty":"RSA","kid":"rs","alg":"RS2)"
    R"(56","e":"AQAB","n":"hbmqFZGp9ST06ZtLigDgXKOBO-g8YR1mX0B3milvI3pmtPWHeHkKT7fstEshT8gL44f7aH)"
    R"(_bL1_f5WLQYFtDbDzvuQ0UT1TshZytgaIGojPfne3TX0yV1SrxpOW9JOznIsfxqo2MT-dAjkVNK1zvfsSBpsAWbZTk)"
    R"(Vw65pB2rECQkwMCcVch2hghG7zYk58G0lotr_Jh7_RPBkGnJtHSw5AV2qVlRJ1JtKztMyUE6eSxh9j3JugWb5cRcZp)"
    R"(Kv-h_UEZHzIva7rHizBtTHWqO2AQ-HaC1u_LDxZAows468aEhAzWdwNJE5EQselkZkfcp2jMCl0-vU_5K2RQ14azmz)"
    R"(jw"},{"kty":"EC","kid":"es","crv":"P-256","x":"sFfeg5Axi1ypa8aMTvJdQEtjwiDGi3LtplvICsANtq0)"
    R"(","y":"dnJfyiWI50YuXLs4t-V0W4AVgKaRqFoA4NBISNfCOLk"},{"kty":"OKP","kid":"ed","crv":"Ed2551)"
    R"(9","x":"3eoaUPBPy9w1uzCguc2gQ7tdNf4PBDYGJwvrVAk26Kc"}]})";

const Authenticator& TheAuthenticator() {
  static const Authenticator* const a = [] {
    RequestAuthentication ra;
    ra.name = "jwt";
    ra.namespace_name = "foo";
    JwtRule rule;
    rule.issuer = "https://issuer.example.com";
    rule.audiences = {"api"};
    rule.jwks = kJwks;
    rule.output_payload_to_header = "x-payload";
    rule.output_claim_to_headers = {{"x-sub", "sub"}, {"x-group", "groups"}};
    JwtRule cookie = rule;
    cookie.issuer = "https://other.example.com";
    cookie.from_cookies = {"session"};
    cookie.space_delimited_claims = {"roles"};
    ra.jwt_rules = {rule, cookie};
    auto created = Authenticator::Create({ra}, {}, &CryptoSignatureVerifier(), nullptr);
    FUZZ_REQUIRE(created.ok());
    return created->release();
  }();
  return *a;
}

void FuzzToken(const std::string& token) {
  Jwt jwt;
  if (ParseJwt(token, &jwt) == JwtStatus::kOk) {
    FUZZ_REQUIRE(absl::StartsWith(token, jwt.signing_input + "."));
    FUZZ_REQUIRE(!jwt.signature.empty());
  }
  ambit::authz::Request request;
  request.layer = ambit::authz::Layer::kL7;
  request.method = "GET";
  request.host = "httpbin.foo";
  request.path = "/get?access_token=" + token;
  request.headers.Add("authorization", "Bearer " + token);
  request.headers.Add("cookie", "session=" + token);
  ambit::authz::Workload target;
  target.namespace_name = "foo";
  for (int64_t now : {int64_t{0}, int64_t{1800000000}}) {
    const AuthnResult r =
        TheAuthenticator().Authenticate(target, request, absl::FromUnixSeconds(now));
    if (r.allowed) {
      FUZZ_REQUIRE(r.http_status == 0);
      if (r.auth) {
        const auto* iss = r.auth->claims.Find("iss");
        const auto* sub = r.auth->claims.Find("sub");
        FUZZ_REQUIRE(iss != nullptr && iss->AsString() != nullptr);
        const std::string sub_text = sub != nullptr && sub->AsString() ? *sub->AsString() : "";
        FUZZ_REQUIRE(r.auth->principal == absl::StrCat(*iss->AsString(), "/", sub_text));
      }
    } else {
      FUZZ_REQUIRE(r.http_status == 401 || r.http_status == 403);
      FUZZ_REQUIRE(!r.body.empty() && absl::StartsWith(r.www_authenticate, "Bearer realm="));
    }
    (void)Authenticator::ApplyMutations(request.headers, r.header_mutations);
  }
  // Lone tokens anywhere in a header value, as Envoy's extraction allows.
  request.headers = {};
  request.headers.Add("authorization", token);
  (void)TheAuthenticator().Authenticate(target, request, absl::FromUnixSeconds(1800000000));
}

void FuzzJwks(const std::string& text) {
  absl::StatusOr<Jwks> jwks = ParseJwks(text);
  if (!jwks.ok()) {
    FUZZ_REQUIRE(!jwks.status().message().empty());
    return;
  }
  FUZZ_REQUIRE(!jwks->keys.empty());
  static constexpr Algorithm kAll[] = {Algorithm::kRs256, Algorithm::kPs384, Algorithm::kEs256,
                                       Algorithm::kEs384, Algorithm::kEs512, Algorithm::kHs256,
                                       Algorithm::kEdDsa};
  const std::string signature(132, '\x01');
  for (const Jwk& key : jwks->keys) {
    (void)SubjectPublicKeyInfo(key);
    for (Algorithm alg : kAll) {
      const size_t size = alg == Algorithm::kEs256 ? 64 : (alg == Algorithm::kEs384 ? 96 : 132);
      (void)CryptoSignatureVerifier().Verify(key, alg, "e30.e30", signature.substr(0, size));
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ambit::fuzz::Input in(data, size);
  const uint8_t mode = in.Byte();
  const std::string payload(in.Rest());
  if ((mode & 1) == 0) {
    FuzzToken(payload);
  } else {
    FuzzJwks(payload);
  }
  return 0;
}
