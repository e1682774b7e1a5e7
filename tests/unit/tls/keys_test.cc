#include "agent/tls/keys.h"

#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/nid.h>
#include <openssl/obj.h>
#include <openssl/x509v3.h>

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/tls/trust_bundle.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_signer.h"

namespace ambit::tls {
namespace {

using ::ambit::tls::testing::TestCa;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kId[] = "spiffe://cluster.local/ns/default/sa/web";

bssl::UniquePtr<EVP_PKEY> NewKey() {
  auto key = GenerateP256Key();
  EXPECT_TRUE(key.ok()) << key.status();
  return key.ok() ? *std::move(key) : nullptr;
}

std::unique_ptr<TestCa> NewCa(const Clock* clock, TestCa::Options options = {}) {
  auto ca = TestCa::Create(clock, std::move(options));
  EXPECT_TRUE(ca.ok()) << ca.status();
  return ca.ok() ? *std::move(ca) : nullptr;
}

std::vector<bssl::UniquePtr<X509>> Chain(const std::vector<std::string>& pems) {
  auto chain = ParsePemChain(pems);
  EXPECT_TRUE(chain.ok()) << chain.status();
  return chain.ok() ? *std::move(chain) : std::vector<bssl::UniquePtr<X509>>();
}

TEST(KeysTest, GeneratesP256) {
  bssl::UniquePtr<EVP_PKEY> key = NewKey();
  ASSERT_NE(key, nullptr);
  ASSERT_EQ(EVP_PKEY_id(key.get()), EVP_PKEY_EC);
  const EC_KEY* ec = EVP_PKEY_get0_EC_KEY(key.get());
  EXPECT_EQ(EC_GROUP_get_curve_name(EC_KEY_get0_group(ec)), NID_X9_62_prime256v1);
  bssl::UniquePtr<EVP_PKEY> other = NewKey();
  EXPECT_NE(EVP_PKEY_cmp(key.get(), other.get()), 1);
}

TEST(KeysTest, CsrCarriesExactlyTheUriSanAndVerifies) {
  bssl::UniquePtr<EVP_PKEY> key = NewKey();
  auto pem = BuildCsrPem(key.get(), kId);
  ASSERT_TRUE(pem.ok()) << pem.status();
  EXPECT_TRUE(absl::StartsWith(*pem, "-----BEGIN CERTIFICATE REQUEST-----")) << *pem;

  auto csr = ParseCsrPem(*pem);  // checks the self-signature
  ASSERT_TRUE(csr.ok()) << csr.status();
  EXPECT_EQ(X509_REQ_verify(csr->get(), key.get()), 1);
  bssl::UniquePtr<EVP_PKEY> pub(X509_REQ_get_pubkey(csr->get()));
  EXPECT_EQ(EVP_PKEY_cmp(pub.get(), key.get()), 1);
  EXPECT_EQ(X509_REQ_get_signature_nid(csr->get()), NID_ecdsa_with_SHA256);
  EXPECT_EQ(X509_NAME_entry_count(X509_REQ_get_subject_name(csr->get())), 0);

  bssl::UniquePtr<STACK_OF(X509_EXTENSION)> exts(X509_REQ_get_extensions(csr->get()));
  ASSERT_NE(exts, nullptr);
  ASSERT_EQ(sk_X509_EXTENSION_num(exts.get()), 1u);
  X509_EXTENSION* ext = sk_X509_EXTENSION_value(exts.get(), 0);
  EXPECT_EQ(OBJ_obj2nid(X509_EXTENSION_get_object(ext)), NID_subject_alt_name);
  EXPECT_EQ(X509_EXTENSION_get_critical(ext), 1);

  auto names = CsrSubjectAltNames(csr->get());
  ASSERT_TRUE(names.ok()) << names.status();
  EXPECT_THAT(names->uris, ElementsAre(kId));
  EXPECT_EQ(names->other_names, 0);
}

TEST(KeysTest, CsrRefusesWhatIsNotASpiffeUri) {
  bssl::UniquePtr<EVP_PKEY> key = NewKey();
  for (const char* bad :
       {"", "https://cluster.local/ns/a/sa/b", "spiffe://td/ns/a b", "spiffe://td/\n"}) {
    auto pem = BuildCsrPem(key.get(), bad);
    EXPECT_EQ(pem.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_FALSE(BuildCsrPem(key.get(), "spiffe://td/" + std::string(3000, 'a')).ok());
}

TEST(KeysTest, ParseCsrRejectsGarbageAndTampering) {
  EXPECT_FALSE(ParseCsrPem("not a csr").ok());
  bssl::UniquePtr<EVP_PKEY> key = NewKey();
  auto pem = BuildCsrPem(key.get(), kId);
  ASSERT_TRUE(pem.ok());
  // Flip a character inside the base64 body, well past the header.
  std::string tampered = *pem;
  const size_t pos = tampered.find('\n') + 40;
  tampered[pos] = tampered[pos] == 'A' ? 'B' : 'A';
  EXPECT_FALSE(ParseCsrPem(tampered).ok());
}

TEST(KeysTest, ParsesChainsAndRejectsGarbage) {
  FakeClock clock;
  auto ca = NewCa(&clock);
  bssl::UniquePtr<EVP_PKEY> key = NewKey();
  auto csr = BuildCsrPem(key.get(), kId);
  auto pems = ca->Sign(*csr);
  ASSERT_TRUE(pems.ok()) << pems.status();

  EXPECT_EQ(Chain(*pems).size(), 2u);
  auto joined = ParsePemChain(absl::string_view((*pems)[0] + (*pems)[1]));
  ASSERT_TRUE(joined.ok()) << joined.status();
  EXPECT_EQ(joined->size(), 2u);

  EXPECT_FALSE(ParsePemChain(absl::string_view("")).ok());
  EXPECT_FALSE(ParsePemChain(std::vector<std::string>{}).ok());
  EXPECT_FALSE(ParsePemChain(absl::string_view("garbage")).ok());
  EXPECT_FALSE(ParsePemChain(absl::string_view(
                                 "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
                   .ok());
  std::string many;
  for (size_t i = 0; i <= kMaxChainCertificates; ++i) many += (*pems)[1];
  EXPECT_THAT(ParsePemChain(absl::string_view(many)).status().message(), HasSubstr("more than"));
}

TEST(KeysTest, CheckLeafAcceptsTheRightCertificate) {
  FakeClock clock;
  auto ca = NewCa(&clock);
  bssl::UniquePtr<EVP_PKEY> key = NewKey();
  auto chain = Chain(*ca->Sign(*BuildCsrPem(key.get(), kId)));
  EXPECT_TRUE(CheckLeaf(chain, key.get(), kId, clock.Now()).ok());
  EXPECT_TRUE(CheckLeaf(chain, key.get(), kId, clock.Now() + absl::Hours(23)).ok());
}

TEST(KeysTest, CheckLeafRejectsOtherKeyIdentityTimeOrCa) {
  FakeClock clock;
  auto ca = NewCa(&clock);
  bssl::UniquePtr<EVP_PKEY> key = NewKey();
  const std::string csr = *BuildCsrPem(key.get(), kId);
  auto chain = Chain(*ca->Sign(csr));
  const absl::Time now = clock.Now();

  bssl::UniquePtr<EVP_PKEY> other = NewKey();
  EXPECT_THAT(CheckLeaf(chain, other.get(), kId, now).message(), HasSubstr("does not match"));
  EXPECT_THAT(CheckLeaf(chain, key.get(), "spiffe://cluster.local/ns/default/sa/db", now).message(),
              HasSubstr("expected exactly the URI"));
  EXPECT_THAT(CheckLeaf(chain, key.get(), kId, now + absl::Hours(24)).message(),
              HasSubstr("expired"));
  EXPECT_THAT(CheckLeaf(chain, key.get(), kId, now - absl::Seconds(1)).message(),
              HasSubstr("not valid before"));
  EXPECT_FALSE(CheckLeaf({}, key.get(), kId, now).ok());

  TestCa::LeafOptions foreign;
  foreign.foreign_key = true;
  EXPECT_FALSE(CheckLeaf(Chain(*ca->Sign(csr, foreign)), key.get(), kId, now).ok());
  TestCa::LeafOptions renamed;
  renamed.uri_override = "spiffe://cluster.local/ns/default/sa/db";
  EXPECT_EQ(CheckLeaf(Chain(*ca->Sign(csr, renamed)), key.get(), kId, now).code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(KeysTest, DescribesCertificates) {
  FakeClock clock(absl::FromUnixSeconds(1800000000));
  TestCa::Options options;
  options.common_name = "describe root";
  options.lifetime = absl::Hours(24 * 365 * 40);  // past 2050: notAfter becomes GeneralizedTime
  auto ca = NewCa(&clock, options);
  bssl::UniquePtr<EVP_PKEY> key = NewKey();
  TestCa::LeafOptions leaf;
  leaf.lifetime = absl::Hours(6);
  auto chain = Chain(*ca->Sign(*BuildCsrPem(key.get(), kId), leaf));
  auto info = DescribeCert(chain[0].get());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->not_before, clock.Now());
  EXPECT_EQ(info->not_after, clock.Now() + absl::Hours(6));
  EXPECT_EQ(info->issuer, "O = cluster.local, CN = describe root");
  EXPECT_EQ(info->subject, "");
  EXPECT_FALSE(info->serial_hex.empty());
  // As openssl prints serials (agent/common/formats.h): uppercase hex, whole bytes.
  EXPECT_EQ(info->serial_hex.find_first_not_of("0123456789ABCDEF"), std::string::npos)
      << info->serial_hex;
  EXPECT_EQ(info->serial_hex.size() % 2, 0u) << info->serial_hex;

  auto root = DescribeCert(ca->root());
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_EQ(root->not_after, clock.Now() - absl::Hours(1) + options.lifetime);
  EXPECT_GT(absl::ToUnixSeconds(root->not_after), 2524608000);  // 2050-01-01
  EXPECT_EQ(root->subject, root->issuer);
}

TEST(TrustBundleTest, HoldsTwoRootsAndVerifiesLeavesOfBoth) {
  FakeClock clock;
  TestCa::Options old_options, new_options;
  old_options.common_name = "old root";
  new_options.common_name = "new root";
  auto old_ca = NewCa(&clock, old_options);
  auto new_ca = NewCa(&clock, new_options);
  auto stranger = NewCa(&clock);
  auto bundle = TrustBundle::Create({old_ca->root_pem(), new_ca->root_pem()});
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  EXPECT_EQ((*bundle)->size(), 2u);
  ASSERT_EQ((*bundle)->infos().size(), 2u);
  EXPECT_EQ((*bundle)->infos()[0].subject, "O = cluster.local, CN = old root");
  EXPECT_EQ((*bundle)->infos()[1].subject, "O = cluster.local, CN = new root");
  auto store = (*bundle)->NewStore();
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_NE(store->get(), nullptr);

  bssl::UniquePtr<EVP_PKEY> key = NewKey();
  const std::string csr = *BuildCsrPem(key.get(), kId);
  EXPECT_TRUE((*bundle)->Verify(Chain(*old_ca->Sign(csr)), clock.Now()).ok());
  EXPECT_TRUE((*bundle)->Verify(Chain(*new_ca->Sign(csr)), clock.Now()).ok());
  absl::Status foreign = (*bundle)->Verify(Chain(*stranger->Sign(csr)), clock.Now());
  EXPECT_EQ(foreign.code(), absl::StatusCode::kPermissionDenied) << foreign;
  absl::Status expired =
      (*bundle)->Verify(Chain(*old_ca->Sign(csr)), clock.Now() + absl::Hours(25));
  EXPECT_THAT(expired.message(), HasSubstr("expired"));
}

TEST(TrustBundleTest, OnePemMayHoldSeveralRootsAndDuplicatesCountOnce) {
  FakeClock clock;
  auto a = NewCa(&clock);
  auto b = NewCa(&clock);
  auto bundle = TrustBundle::Create({a->root_pem() + b->root_pem(), a->root_pem()});
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  EXPECT_EQ((*bundle)->size(), 2u);
}

TEST(TrustBundleTest, RejectsNonCaRootEmptyAndGarbage) {
  FakeClock clock;
  auto good = NewCa(&clock);
  TestCa::Options not_ca;
  not_ca.common_name = "not a ca";
  not_ca.is_ca = false;
  auto leafish = NewCa(&clock, not_ca);
  auto bundle = TrustBundle::Create({good->root_pem(), leafish->root_pem()});
  EXPECT_EQ(bundle.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bundle.status().message(), HasSubstr("PEM #2"));
  EXPECT_THAT(bundle.status().message(), HasSubstr("CN = not a ca"));
  EXPECT_THAT(bundle.status().message(), HasSubstr("not a CA certificate"));

  EXPECT_FALSE(TrustBundle::Create({}).ok());
  EXPECT_THAT(TrustBundle::Create({"junk"}).status().message(), HasSubstr("PEM #1"));
}

}  // namespace
}  // namespace ambit::tls
