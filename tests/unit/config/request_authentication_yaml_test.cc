// RequestAuthentication from YAML: parsing every jwtRules field, istiod's validation with file,
// object and field in each error, and the loader's last-good handling.

#include <string>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/authn/model.h"
#include "agent/config/directory_loader.h"
#include "agent/config/kube_yaml.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/common/temp_dir.h"

namespace ambit::config {
namespace {

using ::ambit::authn::RequestAuthentication;
using ::ambit::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

constexpr char kJwks[] = R"({"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"a"}]})";

std::string Ra(const std::string& spec, const std::string& api = "security.istio.io/v1",
               const std::string& name = "jwt") {
  return absl::StrCat("apiVersion: ", api, "\nkind: RequestAuthentication\nmetadata: {name: ", name,
                      ", namespace: foo}\nspec:\n", spec);
}

std::vector<RequestAuthentication> All(const ParsedFile& parsed) {
  std::vector<RequestAuthentication> out;
  for (const ParsedObject& o : parsed.objects) {
    if (const auto* p = std::get_if<RequestAuthentication>(&o.object)) out.push_back(*p);
  }
  return out;
}

std::string Describe(const std::vector<ConfigError>& errors) {
  std::string out;
  for (const ConfigError& e : errors) absl::StrAppend(&out, e.ToString(), "\n");
  return out;
}

// The only error of a file holding one bad object, which is left out.
ConfigError OnlyError(const std::string& yaml) {
  ParsedFile parsed = ParseKubeYaml("ra.yaml", yaml);
  EXPECT_THAT(parsed.objects, IsEmpty()) << Describe(parsed.errors);
  EXPECT_THAT(parsed.rejected_ids, ElementsAre("RequestAuthentication foo/jwt"));
  std::vector<ConfigError> errors;
  for (const ConfigError& e : parsed.errors) {
    if (!e.warning) errors.push_back(e);
  }
  EXPECT_THAT(errors, SizeIs(1)) << Describe(parsed.errors);
  return errors.empty() ? ConfigError{} : errors[0];
}

TEST(RequestAuthenticationYamlTest, EveryField) {
  ParsedFile parsed =
      ParseKubeYaml("ra.yaml", Ra(absl::StrCat(R"(  selector: {matchLabels: {app: web}}
  jwtRules:
  - issuer: https://issuer.example.com
    audiences: [api, web]
    jwks: ')",
                                               kJwks, R"('
    fromHeaders: [{name: x-jwt, prefix: "Token "}, {name: authorization}]
    fromParams: [t]
    fromCookies: [session]
    outputPayloadToHeader: x-payload
    forwardOriginalToken: true
    outputClaimToHeaders: [{header: x-sub, claim: sub}]
    timeout: 2.5s
    spaceDelimitedClaims: [roles]
  - issuer: other
    jwksUri: https://other.example.com/jwks
)")));
  ASSERT_THAT(parsed.errors, IsEmpty()) << Describe(parsed.errors);
  std::vector<RequestAuthentication> all = All(parsed);
  ASSERT_THAT(all, SizeIs(1));
  const RequestAuthentication& ra = all[0];
  EXPECT_EQ(ra.Key(), "foo/jwt");
  EXPECT_EQ(ra.source_file, "ra.yaml");
  ASSERT_TRUE(ra.selector.has_value());
  EXPECT_EQ(ra.selector->at("app"), "web");
  ASSERT_THAT(ra.jwt_rules, SizeIs(2));
  const authn::JwtRule& r = ra.jwt_rules[0];
  EXPECT_EQ(r.issuer, "https://issuer.example.com");
  EXPECT_THAT(r.audiences, ElementsAre("api", "web"));
  EXPECT_EQ(r.jwks, kJwks);
  EXPECT_THAT(r.from_headers, ElementsAre(authn::HeaderLocation{"x-jwt", "Token "},
                                          authn::HeaderLocation{"authorization", ""}));
  EXPECT_THAT(r.from_params, ElementsAre("t"));
  EXPECT_THAT(r.from_cookies, ElementsAre("session"));
  EXPECT_EQ(r.output_payload_to_header, "x-payload");
  EXPECT_TRUE(r.forward_original_token);
  EXPECT_THAT(r.output_claim_to_headers, ElementsAre(authn::ClaimToHeader{"x-sub", "sub"}));
  EXPECT_EQ(r.timeout, absl::Milliseconds(2500));
  EXPECT_THAT(r.space_delimited_claims, ElementsAre("roles"));
  EXPECT_EQ(ra.jwt_rules[1].jwks_uri, "https://other.example.com/jwks");
  EXPECT_EQ(ra.jwt_rules[1].timeout, absl::Seconds(5));
}

// The control channel carries whole nanoseconds below 2^32 s; a timeout loads as such, so every
// rule that loads can travel to the waypoint (a fraction of a nanosecond is dropped).
TEST(RequestAuthenticationYamlTest, TimeoutLoadsInWholeNanoseconds) {
  ParsedFile parsed = ParseKubeYaml(
      "ra.yaml", Ra("  jwtRules: [{issuer: a, timeout: 1.0000000005s}, {issuer: b, timeout: "
                    "4294967295.5s}]\n"));
  ASSERT_THAT(parsed.errors, IsEmpty()) << Describe(parsed.errors);
  ASSERT_THAT(All(parsed), SizeIs(1));
  const RequestAuthentication ra = All(parsed)[0];
  EXPECT_EQ(ra.jwt_rules[0].timeout, absl::Seconds(1));
  const absl::Duration longest = ra.jwt_rules[1].timeout;
  EXPECT_LT(longest, authn::kJwksFetchTimeoutLimit);
  EXPECT_GT(longest, authn::kJwksFetchTimeoutLimit - absl::Seconds(1));
  EXPECT_EQ(absl::Trunc(longest, absl::Nanoseconds(1)), longest);
}

TEST(RequestAuthenticationYamlTest, V1beta1AndTargetRefs) {
  ParsedFile parsed = ParseKubeYaml(
      "ra.yaml", Ra("  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: wp}, "
                    "{kind: Service, name: httpbin}]\n  jwtRules: [{issuer: a, jwksUri: "
                    "'http://a/jwks'}]\n",
                    "security.istio.io/v1beta1"));
  ASSERT_THAT(parsed.errors, IsEmpty()) << Describe(parsed.errors);
  ASSERT_THAT(All(parsed), SizeIs(1));
  EXPECT_THAT(All(parsed)[0].target_refs, SizeIs(2));
}

TEST(RequestAuthenticationYamlTest, ValidationErrorsNameFileObjectAndField) {
  struct Case {
    std::string spec;
    std::string field;
    std::string message;
  };
  const Case cases[] = {
      {"  jwtRules: [{jwksUri: 'https://a/jwks'}]\n", "spec.jwtRules[0].issuer", "is required"},
      {"  jwtRules: [{issuer: ''}]\n", "spec.jwtRules[0].issuer", "must not be empty"},
      {"  jwtRules: [{issuer: 'https://a b'}]\n", "spec.jwtRules[0].issuer", "whitespace"},
      {"  jwtRules: [{issuer: a, jwks: '{not json'}]\n", "spec.jwtRules[0].jwks", "not valid JSON"},
      {"  jwtRules: [{issuer: a, jwks: '{\"keys\":[{\"kty\":\"oct\"}]}'}]\n",
       "spec.jwtRules[0].jwks", "no usable key"},
      {absl::StrCat("  jwtRules: [{issuer: a, jwksUri: 'https://a/jwks', jwks: '", kJwks, "'}]\n"),
       "spec.jwtRules[0]", "not both"},
      {"  jwtRules: [{issuer: a, jwksUri: 'ftp://a/jwks'}]\n", "spec.jwtRules[0].jwksUri",
       "not an http:// or https:// URL"},
      {"  jwtRules: [{issuer: a, isuer: b}]\n", "spec.jwtRules[0].isuer", "unknown field"},
      {"  jwtRule: []\n", "spec.jwtRule", "unknown field"},
      {"  jwtRules: [{issuer: a, audiences: ['']}]\n", "spec.jwtRules[0].audiences[0]",
       "must not be empty"},
      {"  jwtRules: [{issuer: a, fromHeaders: [{prefix: x}]}]\n",
       "spec.jwtRules[0].fromHeaders[0].name", "is required"},
      {"  jwtRules: [{issuer: a, fromHeaders: [{name: 'bad header'}]}]\n",
       "spec.jwtRules[0].fromHeaders[0].name", "not a valid HTTP header name"},
      {"  jwtRules: [{issuer: a, fromParams: ['']}]\n", "spec.jwtRules[0].fromParams[0]",
       "must not be empty"},
      {"  jwtRules: [{issuer: a, outputClaimToHeaders: [{header: x}]}]\n",
       "spec.jwtRules[0].outputClaimToHeaders[0]", "must both be non-empty"},
      {"  jwtRules: [{issuer: a, timeout: 0s}]\n", "spec.jwtRules[0].timeout", "longer than 0s"},
      // Below a nanosecond: nothing the control channel could carry.
      {"  jwtRules: [{issuer: a, timeout: 0.0000000001s}]\n", "spec.jwtRules[0].timeout",
       "longer than 0s"},
      {"  jwtRules: [{issuer: a, timeout: 4294967296s}]\n", "spec.jwtRules[0].timeout",
       "must be shorter than 4294967296s"},
      {"  jwtRules: [{issuer: a, forwardOriginalToken: maybe}]\n",
       "spec.jwtRules[0].forwardOriginalToken", "true or false"},
      {"  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Service, name: s}]\n", "spec",
       "only one of selector"},
      {"  targetRefs: [{kind: Pod, name: p}]\n", "spec.targetRefs[0]", "unsupported target"},
      {"  targetRefs: [{kind: Service}]\n", "spec.targetRefs[0].name", "is required"},
      {"  targetRef: {group: gateway.networking.k8s.io, kind: GatewayClass, name: other}\n",
       "spec.targetRef.name", "only GatewayClass 'istio-waypoint'"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.spec);
    ConfigError e = OnlyError(Ra(c.spec));
    EXPECT_EQ(e.file, "ra.yaml");
    EXPECT_EQ(e.object, "RequestAuthentication foo/jwt");
    EXPECT_EQ(e.field, c.field);
    EXPECT_THAT(e.message, HasSubstr(c.message));
    EXPECT_GT(e.line, 0);
  }
}

TEST(RequestAuthenticationYamlTest, BadObjectKeepsItsLastGoodVersion) {
  TempDir dir;
  const std::string good = Ra(absl::StrCat("  jwtRules: [{issuer: a, jwks: '", kJwks, "'}]\n"));
  dir.Write("ra.yaml", good);
  DirectoryLoader loader(dir.path());
  LoadResult first = loader.Load();
  ASSERT_FALSE(first.HasErrors());
  ASSERT_EQ(first.security.request_authentications.count("foo/jwt"), 1u);
  EXPECT_THAT(first.security.RequestAuthenticationList(), SizeIs(1));

  dir.Write("ra.yaml", Ra("  jwtRules: [{issuer: a, jwks: '{'}]\n"));
  LoadResult second = loader.Load();
  EXPECT_TRUE(second.HasErrors());
  ASSERT_EQ(second.security.request_authentications.count("foo/jwt"), 1u);
  EXPECT_EQ(second.security.request_authentications.at("foo/jwt"),
            first.security.request_authentications.at("foo/jwt"));
  EXPECT_THAT(Describe(second.errors), HasSubstr("is invalid; its last good version"));
}

}  // namespace
}  // namespace ambit::config
