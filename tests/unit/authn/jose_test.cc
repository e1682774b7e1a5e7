#include "agent/authn/jose.h"

#include <openssl/nid.h>
#include <openssl/rand.h>

#include <string>
#include <vector>

#include "agent/authn/signature.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/authn/test_signer.h"

namespace ambit::authn {
namespace {

using testing::B64;
using ::testing::HasSubstr;
using testing::JwksOf;
using testing::TestKey;

constexpr char kPayload[] = R"({"iss":"https://issuer","sub":"u","exp":1900000000})";

// Parses the token and checks its signature with key through the BoringSSL verifier.
bool Verifies(const TestKey& /*signer*/, const std::string& token, const std::string& jwk_json) {
  Jwt jwt;
  if (ParseJwt(token, &jwt) != JwtStatus::kOk) return false;
  absl::StatusOr<Jwks> jwks = ParseJwks(JwksOf({jwk_json}));
  if (!jwks.ok() || jwks->keys.size() != 1) return false;
  return CryptoSignatureVerifier().Verify(jwks->keys[0], jwt.alg, jwt.signing_input, jwt.signature);
}

struct AlgCase {
  const char* alg;
  TestKey (*make)();
};

TestKey Rsa() { return TestKey::Rsa(); }
TestKey P256() { return TestKey::Ec(NID_X9_62_prime256v1); }
TestKey P384() { return TestKey::Ec(NID_secp384r1); }
TestKey P521() { return TestKey::Ec(NID_secp521r1); }
TestKey Ed() { return TestKey::Ed25519(); }
TestKey Oct() {
  std::string secret(32, '\0');
  RAND_bytes(reinterpret_cast<uint8_t*>(secret.data()), secret.size());
  return TestKey::Hmac(secret);
}

class EveryAlgorithm : public ::testing::TestWithParam<AlgCase> {};

TEST_P(EveryAlgorithm, SignedTokenVerifiesAndTamperedOneDoesNot) {
  const AlgCase& c = GetParam();
  const TestKey key = c.make();
  const TestKey other = c.make();
  const std::string token = key.Token(c.alg, kPayload);
  EXPECT_TRUE(Verifies(key, token, key.Jwk()));
  EXPECT_TRUE(Verifies(key, token, key.Jwk("", c.alg)));
  EXPECT_FALSE(Verifies(key, token, other.Jwk())) << "another key of the same kind";
  // One changed payload bit.
  std::string tampered = key.Token(c.alg, R"({"iss":"https://issuer","sub":"v","exp":1900000000})");
  tampered = token.substr(0, token.find('.') + 1) +
             tampered.substr(tampered.find('.') + 1, tampered.rfind('.') - tampered.find('.') - 1) +
             token.substr(token.rfind('.'));
  EXPECT_FALSE(Verifies(key, tampered, key.Jwk()));
}

INSTANTIATE_TEST_SUITE_P(
    Jws, EveryAlgorithm,
    ::testing::Values(AlgCase{"RS256", Rsa}, AlgCase{"RS384", Rsa}, AlgCase{"RS512", Rsa},
                      AlgCase{"PS256", Rsa}, AlgCase{"PS384", Rsa}, AlgCase{"PS512", Rsa},
                      AlgCase{"ES256", P256}, AlgCase{"ES384", P384}, AlgCase{"ES512", P521},
                      AlgCase{"HS256", Oct}, AlgCase{"HS384", Oct}, AlgCase{"HS512", Oct},
                      AlgCase{"EdDSA", Ed}),
    [](const ::testing::TestParamInfo<AlgCase>& info) { return std::string(info.param.alg); });

// The verifier keeps parsed keys per thread: a key is found again by its exact bytes only, and
// more keys than the cache holds (rotation) still verify right.
TEST(JoseTest, ParsedKeysAreReusedOnlyForTheSameKey) {
  std::vector<TestKey> keys;
  for (int i = 0; i < 70; ++i) keys.push_back(P256());
  for (int round = 0; round < 2; ++round) {
    for (size_t i = 0; i < keys.size(); ++i) {
      const std::string token = keys[i].Token("ES256", kPayload);
      EXPECT_TRUE(Verifies(keys[i], token, keys[i].Jwk())) << i;
      EXPECT_FALSE(Verifies(keys[i], token, keys[(i + 1) % keys.size()].Jwk())) << i;
    }
  }
  const TestKey rsa = Rsa();
  const TestKey other = Rsa();
  const std::string token = rsa.Token("RS256", kPayload);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(Verifies(rsa, token, rsa.Jwk()));
    EXPECT_FALSE(Verifies(rsa, token, other.Jwk()));
  }
}

TEST(JoseTest, EcdsaDerSignatureIsRefused) {
  const TestKey key = P256();
  const std::string raw = key.Token("ES256", kPayload);
  const std::string der = key.Token("ES256", kPayload, "", /*der=*/true);
  EXPECT_TRUE(Verifies(key, raw, key.Jwk()));
  EXPECT_FALSE(Verifies(key, der, key.Jwk()));
}

TEST(JoseTest, EcdsaCurveMustFitAlgorithm) {
  const TestKey p384 = P384();
  // An ES256 token signed with a P-384 key does not verify (the JWK says P-384).
  EXPECT_FALSE(Verifies(p384, p384.Token("ES256", kPayload), p384.Jwk()));
}

TEST(JoseTest, HmacNeverUsesAnRsaKey) {
  const TestKey rsa = Rsa();
  absl::StatusOr<Jwks> jwks = ParseJwks(JwksOf({rsa.Jwk()}));
  ASSERT_TRUE(jwks.ok());
  const Jwk& key = jwks->keys[0];
  // The classic confusion: the public key bytes as an HMAC secret.
  const TestKey forger = TestKey::Hmac(key.n);
  Jwt jwt;
  ASSERT_EQ(ParseJwt(forger.Token("HS256", kPayload), &jwt), JwtStatus::kOk);
  EXPECT_FALSE(CryptoSignatureVerifier().Verify(key, jwt.alg, jwt.signing_input, jwt.signature));
}

TEST(JoseTest, ParseErrorsInEnvoysOrderAndWords) {
  const TestKey key = Oct();
  Jwt jwt;
  EXPECT_EQ(ParseJwt("abc", &jwt), JwtStatus::kBadFormat);
  EXPECT_EQ(ParseJwt("a.b.c.d", &jwt), JwtStatus::kBadFormat);
  EXPECT_EQ(ParseJwt("!!!.e30.c2ln", &jwt), JwtStatus::kHeaderBadBase64);
  EXPECT_EQ(ParseJwt(B64("{not json") + ".e30.c2ln", &jwt), JwtStatus::kHeaderBadJson);
  EXPECT_EQ(ParseJwt(B64("[1]") + ".e30.c2ln", &jwt), JwtStatus::kHeaderBadJson);
  EXPECT_EQ(ParseJwt(B64("{}") + ".e30.c2ln", &jwt), JwtStatus::kHeaderBadAlg);
  EXPECT_EQ(ParseJwt(B64(R"({"alg":"none"})") + ".e30.c2ln", &jwt),
            JwtStatus::kHeaderAlgNotImplemented);
  EXPECT_EQ(ParseJwt(B64(R"({"alg":"RS256","kid":7})") + ".e30.c2ln", &jwt),
            JwtStatus::kHeaderBadKid);
  const std::string h = B64(R"({"alg":"HS256"})");
  EXPECT_EQ(ParseJwt(h + ".!!.c2ln", &jwt), JwtStatus::kPayloadBadBase64);
  EXPECT_EQ(ParseJwt(h + "." + B64("nope") + ".c2ln", &jwt), JwtStatus::kPayloadBadJson);
  EXPECT_EQ(ParseJwt(h + "." + B64(R"({"iss":1})") + ".c2ln", &jwt), JwtStatus::kIssNotString);
  EXPECT_EQ(ParseJwt(h + "." + B64(R"({"sub":[]})") + ".c2ln", &jwt), JwtStatus::kSubNotString);
  EXPECT_EQ(ParseJwt(h + "." + B64(R"({"exp":"soon"})") + ".c2ln", &jwt),
            JwtStatus::kExpNotInteger);
  EXPECT_EQ(ParseJwt(h + "." + B64(R"({"exp":-5})") + ".c2ln", &jwt), JwtStatus::kExpOutOfRange);
  EXPECT_EQ(ParseJwt(h + "." + B64(R"({"nbf":1.5})") + ".c2ln", &jwt), JwtStatus::kNbfOutOfRange);
  EXPECT_EQ(ParseJwt(h + "." + B64(R"({"aud":["a",1]})") + ".c2ln", &jwt),
            JwtStatus::kAudNotString);
  EXPECT_EQ(ParseJwt(h + "." + B64("{}") + ".", &jwt), JwtStatus::kSignatureBadBase64);
  EXPECT_EQ(ParseJwt(h + "." + B64("{}") + ".!!", &jwt), JwtStatus::kSignatureBadBase64);
  // Deep nesting is refused before the JSON parser sees it.
  EXPECT_EQ(ParseJwt(h + "." + B64(std::string(100, '[') + std::string(100, ']')) + ".c2ln", &jwt),
            JwtStatus::kPayloadBadJson);
  EXPECT_EQ(StatusText(JwtStatus::kExpired), "Jwt is expired");
  EXPECT_EQ(StatusText(JwtStatus::kVerificationFail), "Jwt verification fails");
  EXPECT_EQ(StatusText(JwtStatus::kAudienceNotAllowed), "Audiences in Jwt are not allowed");
}

TEST(JoseTest, ExpAndNbfWithSixtySecondsSkew) {
  Jwt jwt;
  jwt.exp = 1000;
  EXPECT_EQ(CheckTime(jwt, 1060), JwtStatus::kOk);
  EXPECT_EQ(CheckTime(jwt, 1061), JwtStatus::kExpired);
  jwt.exp = 0;
  jwt.nbf = 2000;
  EXPECT_EQ(CheckTime(jwt, 1940), JwtStatus::kOk);
  EXPECT_EQ(CheckTime(jwt, 1939), JwtStatus::kNotYetValid);
  jwt.exp = UINT64_MAX;  // no overflow
  EXPECT_EQ(CheckTime(jwt, 5000), JwtStatus::kOk);
}

TEST(JoseTest, AudiencesIgnoreSchemeAndTrailingSlash) {
  Jwt jwt;
  jwt.audiences = {"https://api.example.com/"};
  EXPECT_TRUE(AudienceAllowed(jwt, {}));
  EXPECT_TRUE(AudienceAllowed(jwt, {"api.example.com"}));
  EXPECT_TRUE(AudienceAllowed(jwt, {"x", "http://api.example.com"}));
  EXPECT_FALSE(AudienceAllowed(jwt, {"api.example.org"}));
  jwt.audiences.clear();
  EXPECT_FALSE(AudienceAllowed(jwt, {"api.example.com"}));
}

TEST(JoseTest, JwksSkipsBadKeysAndFailsWithoutAny) {
  const TestKey rsa = Rsa();
  absl::StatusOr<Jwks> jwks = ParseJwks(
      JwksOf({rsa.Jwk("k1", "RS256"), R"({"kty":"EC","crv":"P-256","x":"AA","y":"AA"})",
              R"({"kty":"RSA","n":"AQAB","e":"AQAB","alg":"ES256"})", R"({"kty":"XYZ"})", "7"}));
  ASSERT_TRUE(jwks.ok()) << jwks.status();
  ASSERT_EQ(jwks->keys.size(), 1u);
  EXPECT_EQ(jwks->keys[0].kid, "k1");
  EXPECT_EQ(jwks->skipped.size(), 4u);

  EXPECT_THAT(ParseJwks("{").status().message(), HasSubstr("not valid JSON"));
  EXPECT_THAT(ParseJwks("[]").status().message(), HasSubstr("JSON object"));
  EXPECT_THAT(ParseJwks(R"({"keys":{}})").status().message(), HasSubstr("list"));
  EXPECT_THAT(ParseJwks(R"({"keys":[]})").status().message(), HasSubstr("no usable key"));
  EXPECT_THAT(ParseJwks(R"({"keys":[{"kty":"oct"}]})").status().message(),
              HasSubstr("keys[0] an oct key needs k"));
  // A lone JWK is accepted as a one-key set.
  EXPECT_TRUE(ParseJwks(rsa.Jwk()).ok());
}

TEST(JoseTest, SubjectPublicKeyInfoNeedsAWellFormedKey) {
  Jwk bad;
  bad.kty = "EC";
  bad.crv = "P-256";
  bad.x = std::string(31, '\1');
  bad.y = std::string(32, '\1');
  EXPECT_EQ(SubjectPublicKeyInfo(bad), "");
  EXPECT_EQ(EcdsaRawToDer(std::string(63, 'a'), 32), "");
}

}  // namespace
}  // namespace ambit::authn
