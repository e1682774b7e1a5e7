#include "agent/waypoint/authn_filter.h"

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "agent/authn/authenticator.h"
#include "agent/authn/signature.h"
#include "agent/common/clock.h"
#include "gtest/gtest.h"
#include "tests/unit/authn/test_signer.h"

namespace ambit::waypoint {
namespace {

using authn::testing::JwksOf;
using authn::testing::TestKey;

constexpr char kIssuer[] = "https://issuer.test";
const absl::Time kNow = absl::FromUnixSeconds(1800000000);

class AuthnFilterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    authn::RequestAuthentication ra;
    ra.name = "jwt";
    ra.namespace_name = "default";
    authn::JwtRule rule;
    rule.issuer = kIssuer;
    rule.audiences = {"svc"};
    rule.jwks = JwksOf({key_.Jwk("k1", "ES256")});
    rule.output_claim_to_headers = {{"x-sub", "sub"}};
    ra.jwt_rules = {rule};
    auto a = authn::Authenticator::Create({ra}, {}, &authn::CryptoSignatureVerifier(), nullptr);
    ASSERT_TRUE(a.ok()) << a.status();
    filter_ = std::make_unique<AuthnFilter>(std::move(*a), target_, &clock_);
  }

  // A token valid for a minute from kNow.
  std::string Token(absl::string_view aud = "svc") {
    return key_.Token("ES256",
                      absl::StrCat(R"({"iss":")", kIssuer, R"(","sub":"alice","aud":")", aud,
                                   R"(","exp":)", absl::ToUnixSeconds(kNow) + 60, "}"),
                      "k1");
  }

  RequestContext Request(const std::string& token) {
    RequestContext ctx;
    ctx.request.layer = authz::Layer::kL7;
    ctx.request.method = "GET";
    ctx.request.host = "svc.default";
    ctx.request.path = "/x?y=1";
    if (!token.empty()) ctx.request.headers.Add("authorization", "Bearer " + token);
    return ctx;
  }

  TestKey key_ = TestKey::Ec(NID_X9_62_prime256v1);
  FakeClock clock_{kNow};
  authz::Workload target_{"default", {}, std::nullopt};
  std::unique_ptr<AuthnFilter> filter_;
};

TEST_F(AuthnFilterTest, ValidTokenFillsAuthAndTheUpstreamEdits) {
  RequestContext ctx = Request(Token());
  FilterResult r = filter_->OnRequest(ctx);
  ASSERT_TRUE(r.proceed) << r.reply.body;
  ASSERT_TRUE(ctx.request.auth.has_value());
  EXPECT_EQ(ctx.request.auth->principal, "https://issuer.test/alice");
  EXPECT_EQ(ctx.jwt_principal, "https://issuer.test/alice");
  HeaderList upstream = {{"authorization", "Bearer t"}, {"x-sub", "forged"}, {"accept", "*/*"}};
  ApplyHeaderEdits(ctx.upstream_header_edits, upstream);
  EXPECT_EQ(upstream, (HeaderList{{"accept", "*/*"}, {"x-sub", "alice"}}));
  EXPECT_TRUE(ctx.details.empty());
}

TEST_F(AuthnFilterTest, ExpiryFollowsTheInjectedClock) {
  // The same token, a minute (plus Envoy's 60 s skew) later by the proxy's clock.
  const std::string token = Token();
  clock_.Advance(absl::Minutes(3));
  RequestContext ctx = Request(token);
  FilterResult r = filter_->OnRequest(ctx);
  ASSERT_FALSE(r.proceed);
  EXPECT_EQ(r.reply.status, 401);
  EXPECT_EQ(r.reply.body, "Jwt is expired");
  EXPECT_EQ(ctx.details, "jwt_authn_access_denied{Jwt_is_expired}");
  EXPECT_EQ(r.reply.headers,
            (HeaderList{{"www-authenticate",
                         "Bearer realm=\"http://svc.default/x\", error=\"invalid_token\""}}));
  EXPECT_FALSE(ctx.request.auth.has_value());
  EXPECT_TRUE(ctx.upstream_header_edits.empty());
}

TEST_F(AuthnFilterTest, AudienceIs403AndMissingTokenPasses) {
  RequestContext ctx = Request(Token("other"));
  FilterResult r = filter_->OnRequest(ctx);
  ASSERT_FALSE(r.proceed);
  EXPECT_EQ(r.reply.status, 403);
  EXPECT_EQ(r.reply.body, "Audiences in Jwt are not allowed");

  RequestContext none = Request("");
  EXPECT_TRUE(filter_->OnRequest(none).proceed);
  EXPECT_FALSE(none.request.auth.has_value());
  EXPECT_TRUE(none.jwt_principal.empty());
}

}  // namespace
}  // namespace ambit::waypoint
