// CRLs of the trust bundle on the data plane (agent/tls/crl.h): parsing and the arrival checks of
// CrlSet::Parse, and BoringSSL's enforcement through a store CrlSet::AddTo filled, with ztunnel's
// policy (an issuer without a CRL passes, a CRL past nextUpdate still revokes).

#include "agent/tls/crl.h"

#include <openssl/x509.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "agent/common/clock.h"
#include "agent/tls/keys.h"
#include "agent/tls/trust_bundle.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_signer.h"

namespace ambit::tls {
namespace {

using ::testing::HasSubstr;
using testing::TestCa;

struct Pki {
  std::unique_ptr<TestCa> ca;
  std::unique_ptr<TrustBundle> bundle;
};

Pki MakePki(const std::string& name) {
  TestCa::Options options;
  options.common_name = name;
  auto ca = TestCa::Create(&RealClock::Get(), options);
  EXPECT_TRUE(ca.ok()) << ca.status();
  auto bundle = TrustBundle::Create({(*ca)->root_pem()});
  EXPECT_TRUE(bundle.ok()) << bundle.status();
  return {*std::move(ca), *std::move(bundle)};
}

bssl::UniquePtr<X509> Leaf(TestCa& ca, const std::string& id) {
  auto key = GenerateP256Key();
  EXPECT_TRUE(key.ok());
  auto csr = BuildCsrPem(key->get(), id);
  EXPECT_TRUE(csr.ok());
  TestCa::LeafOptions options;
  options.backdate = absl::Minutes(5);
  auto pems = ca.Sign(*csr, options);
  EXPECT_TRUE(pems.ok()) << pems.status();
  auto chain = ParsePemChain((*pems)[0]);
  EXPECT_TRUE(chain.ok());
  return std::move((*chain)[0]);
}

// X509_verify_cert of `leaf` against `bundle` plus `crls`, with the TLS contexts' tolerance.
int Verify(const TrustBundle& bundle, const CrlSet* crls, X509* leaf) {
  auto store = bundle.NewStore();
  EXPECT_TRUE(store.ok());
  if (crls != nullptr) {
    EXPECT_TRUE(crls->AddTo(store->get()).ok());
  }
  bssl::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  EXPECT_TRUE(X509_STORE_CTX_init(ctx.get(), store->get(), leaf, nullptr));
  X509_STORE_CTX_set_verify_cb(ctx.get(), [](int ok, X509_STORE_CTX* c) {
    return ok != 0 || CrlTolerated(X509_STORE_CTX_get_error(c)) ? 1 : 0;
  });
  if (X509_verify_cert(ctx.get()) == 1) return X509_V_OK;
  return X509_STORE_CTX_get_error(ctx.get());
}

TEST(CrlSetTest, RevokedLeafIsRefusedOthersPass) {
  Pki pki = MakePki("crl root");
  auto revoked = Leaf(*pki.ca, "spiffe://cluster.local/ns/a/sa/revoked");
  auto good = Leaf(*pki.ca, "spiffe://cluster.local/ns/a/sa/good");
  const absl::Time now = absl::Now();
  auto pem = pki.ca->CrlPem({revoked.get()}, now - absl::Minutes(1), now + absl::Hours(1));
  ASSERT_TRUE(pem.ok()) << pem.status();
  auto set = CrlSet::Parse({*pem}, *pki.bundle);
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ((*set)->size(), 1u);
  EXPECT_EQ((*set)->infos()[0].revoked, 1u);
  EXPECT_TRUE((*set)->infos()[0].signed_by_root);
  EXPECT_THAT((*set)->infos()[0].issuer, HasSubstr("crl root"));

  EXPECT_EQ(Verify(*pki.bundle, set->get(), revoked.get()), X509_V_ERR_CERT_REVOKED);
  EXPECT_EQ(Verify(*pki.bundle, set->get(), good.get()), X509_V_OK);
  EXPECT_EQ(Verify(*pki.bundle, nullptr, revoked.get()), X509_V_OK);  // without the CRL
}

TEST(CrlSetTest, ExpiredCrlStillRevokes) {
  Pki pki = MakePki("crl root");
  auto revoked = Leaf(*pki.ca, "spiffe://cluster.local/ns/a/sa/revoked");
  const absl::Time now = absl::Now();
  auto pem = pki.ca->CrlPem({revoked.get()}, now - absl::Hours(2), now - absl::Hours(1));
  ASSERT_TRUE(pem.ok());
  auto set = CrlSet::Parse({*pem}, *pki.bundle);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(Verify(*pki.bundle, set->get(), revoked.get()), X509_V_ERR_CERT_REVOKED);
}

TEST(CrlSetTest, CrlFromTheFutureStillRevokes) {
  Pki pki = MakePki("crl root");
  auto revoked = Leaf(*pki.ca, "spiffe://cluster.local/ns/a/sa/revoked");
  const absl::Time now = absl::Now();
  auto pem = pki.ca->CrlPem({revoked.get()}, now + absl::Minutes(10), now + absl::Hours(1));
  ASSERT_TRUE(pem.ok());
  auto set = CrlSet::Parse({*pem}, *pki.bundle);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(Verify(*pki.bundle, set->get(), revoked.get()), X509_V_ERR_CERT_REVOKED);
}

TEST(CrlSetTest, IssuerWithoutCrlPasses) {
  Pki a = MakePki("root a");
  Pki b = MakePki("root b");
  auto revoked = Leaf(*a.ca, "spiffe://cluster.local/ns/a/sa/x");
  auto of_b = Leaf(*b.ca, "spiffe://cluster.local/ns/b/sa/y");
  const absl::Time now = absl::Now();
  auto pem = a.ca->CrlPem({revoked.get()}, now - absl::Minutes(1), std::nullopt);
  ASSERT_TRUE(pem.ok());
  auto both = TrustBundle::Create({a.ca->root_pem(), b.ca->root_pem()});
  ASSERT_TRUE(both.ok());
  auto set = CrlSet::Parse({*pem}, **both);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(Verify(**both, set->get(), of_b.get()), X509_V_OK);
  EXPECT_EQ(Verify(**both, set->get(), revoked.get()), X509_V_ERR_CERT_REVOKED);
}

TEST(CrlSetTest, EmptyInputsAreNoRevocation) {
  Pki pki = MakePki("crl root");
  for (const std::vector<std::string>& pems :
       {std::vector<std::string>{}, std::vector<std::string>{""}}) {
    auto set = CrlSet::Parse(pems, *pki.bundle);
    ASSERT_TRUE(set.ok()) << set.status();
    EXPECT_EQ((*set)->size(), 0u);
  }
}

TEST(CrlSetTest, RefusesWhatIsNoGoodCrlNamingIt) {
  Pki pki = MakePki("crl root");
  Pki other = MakePki("other root");
  const absl::Time now = absl::Now();
  auto good = pki.ca->CrlPem({}, now, now + absl::Hours(1));
  ASSERT_TRUE(good.ok());
  // Same issuer name, another key: not the root's signature.
  Pki impostor = MakePki("crl root");
  auto forged = impostor.ca->CrlPem({}, now, now + absl::Hours(1));
  ASSERT_TRUE(forged.ok());
  auto backwards = pki.ca->CrlPem({}, now, now - absl::Hours(1));
  ASSERT_TRUE(backwards.ok());
  std::string corrupt = *good;
  corrupt[corrupt.size() / 2] = corrupt[corrupt.size() / 2] == 'A' ? 'B' : 'A';
  struct Case {
    std::vector<std::string> pems;
    std::string error;
  } cases[] = {
      {{*good, *forged}, "CRL PEM #2, CRL #1 (issuer"},
      {{*forged}, "does not verify with that root's key"},
      {{*backwards}, "nextUpdate is not a time after thisUpdate"},
      {{"-----BEGIN X509 CRL-----\nnot base64!\n-----END X509 CRL-----\n"}, "CRL PEM #1"},
      {{other.ca->root_pem()}, "is a \"CERTIFICATE\", not an \"X509 CRL\""},
      {{*good + corrupt}, "CRL PEM #1"},
  };
  for (const Case& c : cases) {
    auto set = CrlSet::Parse(c.pems, *pki.bundle);
    ASSERT_FALSE(set.ok()) << c.error;
    EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(set.status().message(), HasSubstr(c.error));
  }
  // A CRL of an issuer that is no root here (an intermediate) is kept for chains through it.
  auto foreign = other.ca->CrlPem({}, now, now + absl::Hours(1));
  ASSERT_TRUE(foreign.ok());
  auto set = CrlSet::Parse({*foreign}, *pki.bundle);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_FALSE((*set)->infos()[0].signed_by_root);
}

TEST(CrlSetTest, BoundsTheInput) {
  Pki pki = MakePki("crl root");
  const absl::Time now = absl::Now();
  auto one = pki.ca->CrlPem({}, now, now + absl::Hours(1));
  ASSERT_TRUE(one.ok());
  std::string many;
  for (size_t i = 0; i <= kMaxCrls; ++i) many += *one;
  auto set = CrlSet::Parse({many}, *pki.bundle);
  ASSERT_FALSE(set.ok());
  EXPECT_THAT(set.status().message(), HasSubstr("more than 64 CRLs"));
  auto huge = CrlSet::Parse({std::string(kMaxCrlPemBytes + 1, 'x')}, *pki.bundle);
  ASSERT_FALSE(huge.ok());
  EXPECT_THAT(huge.status().message(), HasSubstr("bytes of PEM"));
}

// The serial a refusal names is spelled as the certificate's own (and as ambitctl certs shows it).
TEST(CrlSetTest, SerialHexIsTheCertificatesSpelling) {
  Pki pki = MakePki("crl root");
  auto leaf = Leaf(*pki.ca, "spiffe://cluster.local/ns/a/sa/x");
  auto info = DescribeCert(leaf.get());
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(SerialHex(leaf.get()), info->serial_hex);
}

}  // namespace
}  // namespace ambit::tls
