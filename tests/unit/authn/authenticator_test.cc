#include "agent/authn/authenticator.h"

#include <openssl/nid.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "agent/authn/signature.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_jwks_fetcher.h"
#include "tests/unit/authn/test_signer.h"

namespace ambit::authn {
namespace {

using testing::B64;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::JwksOf;
using testing::TestKey;

constexpr int64_t kNow = 1800000000;
constexpr char kIssuer[] = "https://issuer.example.com";
constexpr char kOtherIssuer[] = "https://other.example.com";

std::string Payload(const std::string& extra = "", const std::string& iss = kIssuer) {
  return absl::StrCat(R"({"iss":")", iss, R"(","sub":"user-1","aud":"api","exp":)", kNow + 3600,
                      extra, "}");
}

class AuthenticatorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    rsa_ = new TestKey(TestKey::Rsa());
    ec_ = new TestKey(TestKey::Ec(NID_X9_62_prime256v1));
  }

  JwtRule Rule(const std::string& issuer = kIssuer) {
    JwtRule r;
    r.issuer = issuer;
    r.audiences = {"api"};
    r.jwks = JwksOf({rsa_->Jwk("rsa-1", "RS256"), ec_->Jwk("ec-1")});
    return r;
  }

  // One RequestAuthentication in namespace foo without selector (sidecar-style attachment).
  std::unique_ptr<Authenticator> Make(std::vector<JwtRule> rules,
                                      const JwksProvider* remote = nullptr) {
    RequestAuthentication ra;
    ra.name = "jwt";
    ra.namespace_name = "foo";
    ra.jwt_rules = std::move(rules);
    auto a = Authenticator::Create({ra}, {}, &CryptoSignatureVerifier(), remote);
    EXPECT_TRUE(a.ok()) << a.status();
    return a.ok() ? *std::move(a) : nullptr;
  }

  authz::Request Request(authz::HeaderMap headers, std::string path = "/get?x=1") {
    authz::Request r;
    r.layer = authz::Layer::kL7;
    r.method = "GET";
    r.host = "httpbin.foo";
    r.path = std::move(path);
    r.headers = std::move(headers);
    return r;
  }

  // Every request of every test is also authenticated through the fixture's cache of verified
  // tokens, which lives as long as the test (across authenticators, clocks and key sets), twice:
  // a miss that fills it, then a hit. Each must decide exactly as the uncached call does.
  AuthnResult Run(const Authenticator& a, const authz::Request& r, int64_t now = kNow) {
    authz::Workload w;
    w.namespace_name = "foo";
    AuthnResult plain = a.Authenticate(w, r, absl::FromUnixSeconds(now));
    for (int pass = 0; pass < 2; ++pass) {
      AuthnResult cached = a.Authenticate(w, r, absl::FromUnixSeconds(now), &cache_);
      ExpectSame(plain, cached, pass);
    }
    return plain;
  }

  static void ExpectSame(const AuthnResult& want, const AuthnResult& got, int pass) {
    SCOPED_TRACE(::testing::Message() << "with the cache, pass " << pass);
    EXPECT_EQ(got.allowed, want.allowed);
    EXPECT_EQ(got.http_status, want.http_status);
    EXPECT_EQ(got.status, want.status);
    EXPECT_EQ(got.body, want.body);
    EXPECT_EQ(got.www_authenticate, want.www_authenticate);
    EXPECT_EQ(got.auth, want.auth);
    EXPECT_EQ(got.header_mutations, want.header_mutations);
    EXPECT_EQ(got.policies, want.policies);
    EXPECT_EQ(got.checks, want.checks);
    EXPECT_EQ(got.reason, want.reason);
  }

  AuthnResult Bearer(const Authenticator& a, const std::string& token, int64_t now = kNow) {
    return Run(a, Request({{"authorization", "Bearer " + token}}), now);
  }

  static TestKey* rsa_;
  static TestKey* ec_;
  VerifiedJwtCache cache_;
};

TestKey* AuthenticatorTest::rsa_ = nullptr;
TestKey* AuthenticatorTest::ec_ = nullptr;

TEST_F(AuthenticatorTest, ValidTokenGivesPrincipalAudiencesPresenterAndClaims) {
  auto a = Make({Rule()});
  AuthnResult r =
      Bearer(*a, rsa_->Token("RS256", Payload(R"(,"azp":"web","groups":["g"])"), "rsa-1"));
  ASSERT_TRUE(r.allowed) << r.reason;
  ASSERT_TRUE(r.auth.has_value());
  EXPECT_EQ(r.auth->principal, "https://issuer.example.com/user-1");
  EXPECT_THAT(r.auth->audiences, ElementsAre("api"));
  EXPECT_EQ(r.auth->presenter, "web");
  ASSERT_NE(r.auth->claims.Find("groups"), nullptr);
  EXPECT_EQ(r.http_status, 0);
  EXPECT_THAT(r.policies, ElementsAre("foo/jwt"));
}

TEST_F(AuthenticatorTest, KidSelectsTheKeyAndJwkAlgMustEqualTheTokens) {
  auto a = Make({Rule()});
  EXPECT_TRUE(Bearer(*a, ec_->Token("ES256", Payload(), "ec-1")).allowed);
  // No kid: every key is tried.
  EXPECT_TRUE(Bearer(*a, ec_->Token("ES256", Payload())).allowed);
  // A kid no key has.
  AuthnResult r = Bearer(*a, ec_->Token("ES256", Payload(), "ec-9"));
  EXPECT_EQ(r.status, JwtStatus::kJwksKidAlgMismatch);
  EXPECT_EQ(r.body, "Jwks doesn't have key to match kid or alg from Jwt");
  // The RSA JWK says RS256: a PS256 token signed by the same key finds no key.
  r = Bearer(*a, rsa_->Token("PS256", Payload(), "rsa-1"));
  EXPECT_EQ(r.status, JwtStatus::kJwksKidAlgMismatch);
  // The kid names the RSA key but the signature is by the EC key.
  r = Bearer(*a, ec_->Token("RS256", Payload(), "rsa-1"));
  EXPECT_EQ(r.status, JwtStatus::kVerificationFail);
}

TEST_F(AuthenticatorTest, ExpAndNbfWithSkewAnd401Texts) {
  auto a = Make({Rule()});
  const std::string expired = rsa_->Token(
      "RS256",
      absl::StrCat(R"({"iss":")", kIssuer, R"(","sub":"u","aud":"api","exp":)", kNow, "}"));
  EXPECT_TRUE(Bearer(*a, expired, kNow + 60).allowed);
  AuthnResult r = Bearer(*a, expired, kNow + 61);
  EXPECT_FALSE(r.allowed);
  EXPECT_EQ(r.http_status, 401);
  EXPECT_EQ(r.body, "Jwt is expired");
  EXPECT_EQ(r.www_authenticate, "Bearer realm=\"http://httpbin.foo/get\", error=\"invalid_token\"");
  const std::string early = rsa_->Token(
      "RS256",
      absl::StrCat(R"({"iss":")", kIssuer, R"(","sub":"u","aud":"api","nbf":)", kNow + 100, "}"));
  EXPECT_EQ(Bearer(*a, early).body, "Jwt not yet valid");
  EXPECT_TRUE(Bearer(*a, early, kNow + 40).allowed);
}

TEST_F(AuthenticatorTest, WrongAudienceIs403) {
  auto a = Make({Rule()});
  AuthnResult r = Bearer(*a, rsa_->Token("RS256", absl::StrCat(R"({"iss":")", kIssuer,
                                                               R"(","sub":"u","aud":"web"})")));
  EXPECT_EQ(r.http_status, 403);
  EXPECT_EQ(r.body, "Audiences in Jwt are not allowed");
}

TEST_F(AuthenticatorTest, OutputHeadersAreNeverTakenFromTheClient) {
  JwtRule rule = Rule();
  rule.output_claim_to_headers = {{"x-jwt-group", "group"}};
  rule.output_payload_to_header = "x-jwt-payload";
  auto a = Make({rule});
  // No token: the request goes on unauthenticated, without the headers the client forged.
  AuthnResult r = Run(*a, Request({{"x-jwt-group", "admins"}, {"x-jwt-payload", "e30"}}));
  EXPECT_TRUE(r.allowed);
  EXPECT_FALSE(r.auth.has_value());
  const authz::HeaderMap out = Authenticator::ApplyMutations(
      Request({{"x-jwt-group", "admins"}, {"x-jwt-payload", "e30"}}).headers, r.header_mutations);
  EXPECT_EQ(out.Find("x-jwt-group"), nullptr);
  EXPECT_EQ(out.Find("x-jwt-payload"), nullptr);
}

TEST_F(AuthenticatorTest, NoTokenPassesWithoutPrincipal) {
  auto a = Make({Rule()});
  AuthnResult r = Run(*a, Request({{"x-other", "1"}}));
  EXPECT_TRUE(r.allowed);
  EXPECT_FALSE(r.auth.has_value());
  EXPECT_TRUE(r.header_mutations.empty());
  // A header without the Bearer prefix holds no token.
  r = Run(*a, Request({{"authorization", "Basic dXNlcjpwYXNz"}}));
  EXPECT_TRUE(r.allowed);
  EXPECT_FALSE(r.auth.has_value());
}

TEST_F(AuthenticatorTest, MalformedTokensAreRejected) {
  auto a = Make({Rule()});
  EXPECT_EQ(Bearer(*a, "abc.def").body,
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections");
  EXPECT_EQ(Bearer(*a, B64("{x") + ".e30.c2ln").body, "Jwt header is an invalid JSON");
  EXPECT_EQ(Bearer(*a, B64(R"({"alg":"RS256"})") + "." + B64("[") + ".c2ln").body,
            "Jwt payload is an invalid JSON");
  EXPECT_EQ(Bearer(*a, B64(R"({"alg":"none"})") + "." + B64(Payload()) + ".c2ln").body,
            "Jwt header [alg] is not supported");
  // A token without iss is no provider's.
  EXPECT_EQ(Bearer(*a, rsa_->Token("RS256", R"({"sub":"u"})")).body,
            "Jwt issuer is not configured");
}

TEST_F(AuthenticatorTest, EveryTokenPresentMustBeValid) {
  JwtRule rule = Rule();
  rule.from_headers = {{"authorization", "Bearer "}, {"x-second", ""}};
  auto a = Make({rule});
  const std::string good = rsa_->Token("RS256", Payload(), "rsa-1");
  const std::string bad = TestKey::Rsa().Token("RS256", Payload(), "rsa-1");
  EXPECT_TRUE(Run(*a, Request({{"authorization", "Bearer " + good}, {"x-second", good}})).allowed);
  AuthnResult r = Run(*a, Request({{"authorization", "Bearer " + good}, {"x-second", bad}}));
  EXPECT_FALSE(r.allowed);
  EXPECT_EQ(r.body, "Jwt verification fails");
  ASSERT_FALSE(r.checks.empty());
  EXPECT_EQ(r.checks.back().location.name, "x-second");
}

TEST_F(AuthenticatorTest, TwoIssuersEachWithItsOwnTokens) {
  TestKey other = TestKey::Ec(NID_X9_62_prime256v1);
  JwtRule second = Rule(kOtherIssuer);
  second.jwks = JwksOf({other.Jwk()});
  auto a = Make({Rule(), second});
  // Either issuer's token at the shared default location.
  EXPECT_TRUE(Bearer(*a, rsa_->Token("RS256", Payload())).allowed);
  AuthnResult r = Bearer(*a, other.Token("ES256", Payload("", kOtherIssuer)));
  ASSERT_TRUE(r.allowed) << r.reason;
  EXPECT_EQ(r.auth->principal, "https://other.example.com/user-1");
  // The second issuer's token signed by the first issuer's key.
  r = Bearer(*a, rsa_->Token("RS256", Payload("", kOtherIssuer)));
  EXPECT_FALSE(r.allowed);
  EXPECT_EQ(r.body, "Jwt verification fails");
  // An issuer no rule has.
  EXPECT_EQ(Bearer(*a, rsa_->Token("RS256", Payload("", "https://evil"))).body,
            "Jwt issuer is not configured");
}

TEST_F(AuthenticatorTest, FromHeadersAndParamsReplaceTheDefaults) {
  JwtRule rule = Rule();
  rule.from_headers = {{"X-Jwt-Assertion", "Token "}};
  auto a = Make({rule});
  const std::string token = rsa_->Token("RS256", Payload());
  EXPECT_TRUE(Run(*a, Request({{"x-jwt-assertion", "Token " + token}})).auth.has_value());
  // Envoy finds the prefix anywhere and takes the base64url run after it.
  EXPECT_TRUE(
      Run(*a, Request({{"x-jwt-assertion", "v=1 Token " + token + ", more"}})).auth.has_value());
  EXPECT_FALSE(Run(*a, Request({{"authorization", "Bearer " + token}})).auth.has_value());
  EXPECT_FALSE(Run(*a, Request({}, "/get?access_token=" + token)).auth.has_value());

  JwtRule params = Rule();
  params.from_params = {"t"};
  auto b = Make({params});
  EXPECT_TRUE(Run(*b, Request({}, "/get?a=1&t=" + token + "#frag")).auth.has_value());
  EXPECT_FALSE(Run(*b, Request({{"authorization", "Bearer " + token}})).auth.has_value());

  auto c = Make({Rule()});  // defaults
  EXPECT_TRUE(Run(*c, Request({}, "/get?access_token=" + token)).auth.has_value());
}

TEST_F(AuthenticatorTest, Cookies) {
  JwtRule rule = Rule();
  rule.from_cookies = {"session"};
  auto a = Make({rule});
  const std::string token = rsa_->Token("RS256", Payload());
  EXPECT_TRUE(Run(*a, Request({{"cookie", "a=b; session=" + token + "; c=d"}})).auth.has_value());
  EXPECT_TRUE(Run(*a, Request({{"cookie", "session=\"" + token + "\""}})).auth.has_value());
  EXPECT_FALSE(Run(*a, Request({{"cookie", "sessionx=" + token}})).auth.has_value());
  // A forwardOriginalToken=false cookie is left alone (Envoy removes only header tokens).
  AuthnResult r = Run(*a, Request({{"cookie", "session=" + token}}));
  EXPECT_TRUE(r.header_mutations.empty());
}

TEST_F(AuthenticatorTest, SpaceDelimitedClaimsAreSplit) {
  JwtRule rule = Rule();
  rule.space_delimited_claims = {"roles"};
  auto a = Make({rule});
  AuthnResult r = Bearer(
      *a, rsa_->Token("RS256", Payload(R"(,"scope":"read  write","scp":"a b","permission":"p q",)"
                                       R"("roles":"x y","other":"m n","nested":{"scope":"s t"})")));
  ASSERT_TRUE(r.auth.has_value()) << r.reason;
  auto list = [](std::initializer_list<const char*> items) {
    authz::ClaimValue::List out;
    for (const char* s : items) out.push_back(authz::ClaimValue::String(s));
    return authz::ClaimValue::ListOf(out);
  };
  EXPECT_EQ(*r.auth->claims.Find("scope"), list({"read", "write"}));
  EXPECT_EQ(*r.auth->claims.Find("scp"), list({"a", "b"}));
  EXPECT_EQ(*r.auth->claims.Find("permission"), list({"p", "q"}));
  EXPECT_EQ(*r.auth->claims.Find("roles"), list({"x", "y"}));
  EXPECT_EQ(*r.auth->claims.Find("other"), authz::ClaimValue::String("m n"));
  EXPECT_EQ(*r.auth->claims.Find("nested")->Find("scope"), authz::ClaimValue::String("s t"));
}

TEST_F(AuthenticatorTest, HeaderOutputs) {
  JwtRule rule = Rule();
  rule.output_payload_to_header = "X-Jwt-Payload";
  rule.output_claim_to_headers = {{"x-sub", "sub"},
                                  {"x-exp", "exp"},
                                  {"x-admin", "flags.admin"},
                                  {"x-groups", "groups"},
                                  {"x-none", "absent"}};
  auto a = Make({rule});
  const std::string payload = Payload(R"(,"flags":{"admin":true},"groups":["a","b"])");
  const std::string token = rsa_->Token("RS256", payload);
  AuthnResult r = Run(*a, Request({{"authorization", "Bearer " + token},
                                   {"x-sub", "spoofed"},
                                   {"x-none", "spoofed"},
                                   {"x-jwt-payload", "spoofed"}}));
  ASSERT_TRUE(r.allowed) << r.reason;
  authz::HeaderMap out =
      Authenticator::ApplyMutations(Request({{"authorization", "Bearer " + token},
                                             {"x-sub", "spoofed"},
                                             {"x-none", "spoofed"},
                                             {"x-jwt-payload", "spoofed"}})
                                        .headers,
                                    r.header_mutations);
  EXPECT_EQ(out.Find("authorization"), nullptr);  // forwardOriginalToken: false
  ASSERT_NE(out.Find("x-jwt-payload"), nullptr);
  EXPECT_EQ(*out.Find("x-jwt-payload"), B64(payload));
  EXPECT_EQ(*out.Find("x-sub"), "user-1");
  EXPECT_EQ(*out.Find("x-exp"), absl::StrCat(kNow + 3600));  // exactly, not 1.8e+09
  EXPECT_EQ(*out.Find("x-admin"), "true");
  EXPECT_EQ(*out.Find("x-groups"), absl::Base64Escape(R"(["a","b"])"));
  EXPECT_EQ(out.Find("x-none"), nullptr);  // a client's value never passes for a claim

  rule.forward_original_token = true;
  auto b = Make({rule});
  r = Bearer(*b, token);
  out = Authenticator::ApplyMutations(Request({{"authorization", "Bearer " + token}}).headers,
                                      r.header_mutations);
  EXPECT_NE(out.Find("authorization"), nullptr);
}

TEST_F(AuthenticatorTest, CorsPreflightSkips) {
  auto a = Make({Rule()});
  authz::Request r = Request({{"origin", "https://app"},
                              {"access-control-request-method", "POST"},
                              {"authorization", "Bearer garbage"}});
  r.method = "OPTIONS";
  AuthnResult res = Run(*a, r);
  EXPECT_TRUE(res.allowed);
  EXPECT_TRUE(res.cors_preflight);
  // OPTIONS without the CORS headers is an ordinary request.
  r = Request({{"authorization", "Bearer garbage"}});
  r.method = "OPTIONS";
  EXPECT_FALSE(Run(*a, r).allowed);
}

TEST_F(AuthenticatorTest, AttachmentBySelectorAndTargetRefs) {
  RequestAuthentication by_label;
  by_label.name = "by-label";
  by_label.namespace_name = "foo";
  by_label.selector = std::map<std::string, std::string>{{"app", "httpbin"}};
  by_label.jwt_rules = {Rule()};
  RequestAuthentication root = by_label;
  root.name = "root";
  root.namespace_name = "istio-system";
  root.selector.reset();
  RequestAuthentication to_gateway = by_label;
  to_gateway.name = "gw";
  to_gateway.selector.reset();
  to_gateway.target_refs = {{"gateway.networking.k8s.io", "Gateway", "waypoint"}};
  RequestAuthentication to_service = to_gateway;
  to_service.name = "svc";
  to_service.target_refs = {{"", "Service", "httpbin"}};
  auto a = Authenticator::Create({by_label, root, to_gateway, to_service}, {},
                                 &CryptoSignatureVerifier(), nullptr);
  ASSERT_TRUE(a.ok());
  authz::Workload w;
  w.namespace_name = "foo";
  w.labels = {{"app", "httpbin"}};
  EXPECT_THAT((*a)->ApplicablePolicies(w), ElementsAre("foo/by-label", "istio-system/root"));
  w.labels = {{"app", "other"}};
  EXPECT_THAT((*a)->ApplicablePolicies(w), ElementsAre("istio-system/root"));
  w.waypoint = authz::WaypointRef{"waypoint", "foo", {{"httpbin", "foo"}}};
  EXPECT_THAT((*a)->ApplicablePolicies(w), ElementsAre("foo/gw", "foo/svc"));
  w.waypoint = authz::WaypointRef{"other", "foo", {}};
  EXPECT_TRUE((*a)->ApplicablePolicies(w).empty());
  // Nothing applies: no authentication at all, even for a bad token.
  AuthnResult r = (*a)->Authenticate(w, Request({{"authorization", "Bearer x.y.z"}}),
                                     absl::FromUnixSeconds(kNow));
  EXPECT_TRUE(r.allowed);
}

TEST_F(AuthenticatorTest, BadInlineJwksIsAnError) {
  RequestAuthentication ra;
  ra.name = "jwt";
  ra.namespace_name = "foo";
  ra.jwt_rules = {Rule()};
  ra.jwt_rules[0].jwks = "{";
  auto a = Authenticator::Create({ra}, {}, &CryptoSignatureVerifier(), nullptr);
  ASSERT_FALSE(a.ok());
  EXPECT_THAT(a.status().message(), HasSubstr("foo/jwt: jwtRules[0].jwks"));
}

TEST_F(AuthenticatorTest, JwksUriRejectsWhileUnavailable) {
  FakeClock clock;
  ambit::testing::FakeJwksFetcher fetcher;
  JwksCache cache(&fetcher, &clock);
  JwtRule rule = Rule();
  rule.jwks.clear();
  rule.jwks_uri = "https://issuer.example.com/jwks";
  auto a = Make({rule}, &cache);
  const std::string token = rsa_->Token("RS256", Payload());
  cache.Track(rule.jwks_uri, rule.timeout);
  EXPECT_EQ(cache.RefreshDue(), 1);
  AuthnResult r = Bearer(*a, token);
  EXPECT_EQ(r.body, "Jwks remote fetch is failed");
  fetcher.documents[rule.jwks_uri] = JwksOf({rsa_->Jwk()});
  clock.Advance(absl::Seconds(6));
  EXPECT_EQ(cache.RefreshDue(), 0);
  EXPECT_TRUE(Bearer(*a, token).allowed);
  // Without a provider such rules always reject.
  auto b = Make({rule});
  EXPECT_EQ(Bearer(*b, token).body, "Jwks remote fetch is failed");
}

// A verifier that counts its calls, to see what the cache skips.
class CountingVerifier final : public SignatureVerifier {
 public:
  bool Verify(const Jwk& key, Algorithm alg, absl::string_view input,
              absl::string_view signature) const override {
    ++calls;
    return CryptoSignatureVerifier().Verify(key, alg, input, signature);
  }
  mutable int calls = 0;
};

TEST_F(AuthenticatorTest, CacheVerifiesATokenOnceAndStillChecksTheClock) {
  CountingVerifier verifier;
  RequestAuthentication ra;
  ra.name = "jwt";
  ra.namespace_name = "foo";
  ra.jwt_rules = {Rule()};
  auto a = Authenticator::Create({ra}, {}, &verifier, nullptr);
  ASSERT_TRUE(a.ok());
  authz::Workload w;
  w.namespace_name = "foo";
  const std::string token = rsa_->Token(
      "RS256",
      absl::StrCat(R"({"iss":")", kIssuer, R"(","sub":"u","aud":"api","exp":)", kNow + 10, "}"));
  const authz::Request req = Request({{"authorization", "Bearer " + token}});
  VerifiedJwtCache cache;
  // Uncached, the signature is verified on every request (once: the provider's own pass
  // decides, the allow_missing pass is not run).
  for (int i = 0; i < 5; ++i) {
    EXPECT_TRUE((*a)->Authenticate(w, req, absl::FromUnixSeconds(kNow)).allowed);
  }
  EXPECT_EQ(verifier.calls, 5);
  verifier.calls = 0;
  for (int i = 0; i < 5; ++i) {
    EXPECT_TRUE((*a)->Authenticate(w, req, absl::FromUnixSeconds(kNow), &cache).allowed);
  }
  EXPECT_EQ(verifier.calls, 1);
  EXPECT_EQ(cache.size(), 1u);
  // Past exp (and the skew), the cached token is refused as the authenticator refuses it.
  AuthnResult r = (*a)->Authenticate(w, req, absl::FromUnixSeconds(kNow + 71), &cache);
  EXPECT_FALSE(r.allowed);
  EXPECT_EQ(r.body, "Jwt is expired");
  EXPECT_EQ(cache.size(), 0u);
}

TEST_F(AuthenticatorTest, CachedTokenIsCheckedAgainstTheRulesInForce) {
  // Rules reading one jwksUri share its key set object, so a token verified under one rule is a
  // cache hit under the others: their issuer and audiences must still decide.
  FakeClock clock;
  ambit::testing::FakeJwksFetcher fetcher;
  JwksCache keys(&fetcher, &clock);
  JwtRule rule = Rule();
  rule.jwks.clear();
  rule.jwks_uri = "https://issuer.example.com/jwks";
  keys.Track(rule.jwks_uri, rule.timeout);
  fetcher.documents[rule.jwks_uri] = JwksOf({rsa_->Jwk("rsa-1", "RS256")});
  ASSERT_EQ(keys.RefreshDue(), 0);
  VerifiedJwtCache cache;
  authz::Workload w;
  w.namespace_name = "foo";
  const authz::Request req =
      Request({{"authorization", "Bearer " + rsa_->Token("RS256", Payload(), "rsa-1")}});
  ASSERT_TRUE(
      Make({rule}, &keys)->Authenticate(w, req, absl::FromUnixSeconds(kNow), &cache).allowed);
  ASSERT_EQ(cache.size(), 1u);
  const uint64_t hits = cache.hits();
  JwtRule other_aud = rule;
  other_aud.audiences = {"web"};
  AuthnResult r =
      Make({other_aud}, &keys)->Authenticate(w, req, absl::FromUnixSeconds(kNow), &cache);
  EXPECT_EQ(r.http_status, 403);
  EXPECT_EQ(r.body, "Audiences in Jwt are not allowed");
  JwtRule other_issuer = rule;
  other_issuer.issuer = kOtherIssuer;
  r = Make({other_issuer}, &keys)->Authenticate(w, req, absl::FromUnixSeconds(kNow), &cache);
  EXPECT_EQ(r.body, "Jwt issuer is not configured");
  // Those answers came from the cached parse: the cache was used, and still refused.
  EXPECT_GT(cache.hits(), hits);
  // An inline key set that no longer holds the key (rotated out in a new configuration).
  JwtRule rotated = Rule();
  rotated.jwks = JwksOf({TestKey::Rsa().Jwk("rsa-1", "RS256")});
  r = Make({rotated})->Authenticate(w, req, absl::FromUnixSeconds(kNow), &cache);
  EXPECT_FALSE(r.allowed);
  EXPECT_EQ(r.body, "Jwt verification fails");
}

TEST_F(AuthenticatorTest, CachedTokenIsRefusedAfterAJwksUriRotation) {
  FakeClock clock;
  ambit::testing::FakeJwksFetcher fetcher;
  JwksCache keys(&fetcher, &clock);
  JwtRule rule = Rule();
  rule.jwks.clear();
  rule.jwks_uri = "https://issuer.example.com/jwks";
  auto a = Make({rule}, &keys);
  keys.Track(rule.jwks_uri, rule.timeout);
  fetcher.documents[rule.jwks_uri] = JwksOf({rsa_->Jwk("rsa-1", "RS256")});
  ASSERT_EQ(keys.RefreshDue(), 0);
  VerifiedJwtCache cache;
  authz::Workload w;
  w.namespace_name = "foo";
  const authz::Request req =
      Request({{"authorization", "Bearer " + rsa_->Token("RS256", Payload(), "rsa-1")}});
  ASSERT_TRUE(a->Authenticate(w, req, absl::FromUnixSeconds(kNow), &cache).allowed);
  // The issuer rotates: the old key is gone from the set fetched next.
  fetcher.documents[rule.jwks_uri] = JwksOf({TestKey::Rsa().Jwk("rsa-2", "RS256")});
  clock.Advance(absl::Minutes(21));
  ASSERT_EQ(keys.RefreshDue(), 0);
  AuthnResult r = a->Authenticate(w, req, absl::FromUnixSeconds(kNow), &cache);
  EXPECT_FALSE(r.allowed);
  EXPECT_EQ(r.body, "Jwks doesn't have key to match kid or alg from Jwt");
  // And while the key set is unavailable, the cache does not stand in for it.
  keys.Untrack(rule.jwks_uri);
  r = a->Authenticate(w, req, absl::FromUnixSeconds(kNow), &cache);
  EXPECT_EQ(r.body, "Jwks remote fetch is failed");
}

}  // namespace
}  // namespace ambit::authn
