// `ambitd --crl-file` on the control side: ca::ParseCrlFile's checks (OpenSSL 3) and CrlWatch
// following the file as a mounted ConfigMap changes: a good file replaces the CRLs in force, a
// malformed or missing one keeps the last good ones.

#include "agent/node/crl_watch.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "agent/ca/crl_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::node {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;

template <typename T, void (*kFree)(T*)>
struct Deleter {
  void operator()(T* p) const { kFree(p); }
};
using KeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using CertPtr = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using CrlPtr = std::unique_ptr<X509_CRL, Deleter<X509_CRL, X509_CRL_free>>;
using BioPtr = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;
using TimePtr = std::unique_ptr<ASN1_TIME, Deleter<ASN1_TIME, ASN1_TIME_free>>;

std::string BioString(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<size_t>(len));
}

// A self-signed CA root with its key, and CRLs it signs: what an operator's CA hands out.
struct Root {
  KeyPtr key;
  CertPtr cert;

  static Root Make(const std::string& cn) {
    Root r;
    r.key.reset(EVP_EC_gen("P-256"));
    r.cert.reset(X509_new());
    X509* c = r.cert.get();
    X509_set_version(c, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(c), 1);
    X509_NAME* name = X509_get_subject_name(c);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
    X509_set_issuer_name(c, name);
    X509_gmtime_adj(X509_getm_notBefore(c), -3600);
    X509_gmtime_adj(X509_getm_notAfter(c), 86400);
    X509_set_pubkey(c, r.key.get());
    X509_EXTENSION* bc =
        X509V3_EXT_conf_nid(nullptr, nullptr, NID_basic_constraints, "critical,CA:TRUE");
    X509_add_ext(c, bc, -1);
    X509_EXTENSION_free(bc);
    X509_sign(c, r.key.get(), EVP_sha256());
    return r;
  }

  std::string Pem() const {
    BioPtr bio(BIO_new(BIO_s_mem()));
    PEM_write_bio_X509(bio.get(), cert.get());
    return BioString(bio.get());
  }

  // A CRL revoking `serials`, signed by `signer` (null: this root).
  std::string Crl(const std::vector<long>& serials, long next_update_offset = 3600,
                  EVP_PKEY* signer = nullptr) const {
    CrlPtr crl(X509_CRL_new());
    X509_CRL_set_version(crl.get(), 1);
    X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(cert.get()));
    TimePtr now(X509_gmtime_adj(nullptr, 0));
    TimePtr next(X509_gmtime_adj(nullptr, next_update_offset));
    X509_CRL_set1_lastUpdate(crl.get(), now.get());
    X509_CRL_set1_nextUpdate(crl.get(), next.get());
    for (long serial : serials) {
      X509_REVOKED* r = X509_REVOKED_new();
      ASN1_INTEGER* s = ASN1_INTEGER_new();
      ASN1_INTEGER_set(s, serial);
      X509_REVOKED_set_serialNumber(r, s);
      ASN1_INTEGER_free(s);
      X509_REVOKED_set_revocationDate(r, now.get());
      X509_CRL_add0_revoked(crl.get(), r);
    }
    X509_CRL_sort(crl.get());
    X509_CRL_sign(crl.get(), signer != nullptr ? signer : key.get(), EVP_sha256());
    BioPtr bio(BIO_new(BIO_s_mem()));
    PEM_write_bio_X509_CRL(bio.get(), crl.get());
    return BioString(bio.get());
  }
};

TEST(CrlFileTest, ParsesCrlsAndCountsRevocations) {
  Root root = Root::Make("ambit test root");
  Root other = Root::Make("intermediate");
  auto parsed =
      ca::ParseCrlFile(root.Crl({7, 9}) + "\n" + other.Crl({11}), "crl.pem", {root.Pem()});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_THAT(parsed->pems, SizeIs(2));
  EXPECT_EQ(parsed->revoked, 3u);
  EXPECT_THAT(parsed->issuers[0], HasSubstr("ambit test root"));
  EXPECT_THAT(parsed->pems[0], HasSubstr("-----BEGIN X509 CRL-----"));
}

TEST(CrlFileTest, EmptyFileIsNoRevocation) {
  Root root = Root::Make("r");
  for (const char* content : {"", "\n  \n"}) {
    auto parsed = ca::ParseCrlFile(content, "crl.pem", {root.Pem()});
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_TRUE(parsed->pems.empty());
  }
}

TEST(CrlFileTest, RefusesBadContentNamingFileAndCrl) {
  Root root = Root::Make("ambit test root");
  Root impostor = Root::Make("ambit test root");  // same name, other key
  const std::string good = root.Crl({1});
  struct Case {
    std::string content;
    std::string error;
  } cases[] = {
      {"this is not a CRL", "crl.pem: holds no PEM block"},
      {good + impostor.Crl({2}), "crl.pem: CRL #2 (issuer"},
      {impostor.Crl({2}), "does not verify with that root's key"},
      {root.Pem(), "PEM block #1 is a \"CERTIFICATE\", not an \"X509 CRL\""},
      {"-----BEGIN X509 CRL-----\n!!!\n-----END X509 CRL-----\n", "PEM block #1 is malformed"},
      {root.Crl({1}, -7200), "thisUpdate is missing or after nextUpdate"},
      {std::string(ca::kMaxCrlFileBytes + 1, ' '), "bytes, more than the"},
  };
  for (const Case& c : cases) {
    auto parsed = ca::ParseCrlFile(c.content, "crl.pem", {root.Pem()});
    ASSERT_FALSE(parsed.ok()) << c.error;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(parsed.status().message(), HasSubstr(c.error));
  }
}

class CrlWatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/ambit-crl-watch-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/crl.pem";
  }
  void TearDown() override {
    std::remove(path_.c_str());
    rmdir(dir_.c_str());
  }
  void Write(const std::string& content) {
    // As a ConfigMap update: a new file renamed over the old one.
    const std::string tmp = path_ + ".new";
    std::ofstream(tmp, std::ios::binary) << content;
    ASSERT_EQ(std::rename(tmp.c_str(), path_.c_str()), 0);
  }

  std::string dir_;
  std::string path_;
};

TEST_F(CrlWatchTest, FollowsTheFileAndKeepsTheLastGoodOne) {
  Root root = Root::Make("ambit test root");
  const std::vector<std::string> roots = {root.Pem()};
  CrlWatch watch(path_);
  // Not there yet (mounted later): nothing in force, reported.
  EXPECT_FALSE(watch.Poll(roots));
  EXPECT_TRUE(watch.pems().empty());
  EXPECT_EQ(watch.problem().code(), absl::StatusCode::kNotFound);

  Write(root.Crl({5}));
  EXPECT_TRUE(watch.Poll(roots));
  ASSERT_THAT(watch.pems(), SizeIs(1));
  EXPECT_TRUE(watch.problem().ok());
  const std::vector<std::string> first = watch.pems();
  EXPECT_FALSE(watch.Poll(roots));  // unchanged

  Write("garbage");
  EXPECT_FALSE(watch.Poll(roots));
  EXPECT_EQ(watch.pems(), first);  // the last good one stays
  EXPECT_THAT(watch.problem().message(), HasSubstr(path_));

  Write(root.Crl({5, 6}));
  EXPECT_TRUE(watch.Poll(roots));
  EXPECT_NE(watch.pems(), first);
  EXPECT_TRUE(watch.problem().ok());

  std::remove(path_.c_str());
  EXPECT_FALSE(watch.Poll(roots));
  EXPECT_THAT(watch.pems(), SizeIs(1));  // kept while the file is away

  Write("");
  EXPECT_TRUE(watch.Poll(roots));  // an empty file: no revocation any more
  EXPECT_TRUE(watch.pems().empty());
}

}  // namespace
}  // namespace ambit::node
