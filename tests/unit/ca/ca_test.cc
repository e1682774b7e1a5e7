#include <openssl/bn.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/ca/certificate_authority.h"
#include "agent/ca/openssl_util.h"
#include "agent/common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/common/temp_dir.h"

namespace ambit::ca {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::SizeIs;

constexpr char kWeb[] = "spiffe://cluster.local/ns/default/sa/web";

using ::ambit::testing::TempDir;

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

struct PipeCloser {
  void operator()(FILE* f) const { pclose(f); }
};

CommandResult RunCommand(const std::string& command) {
  CommandResult result;
  std::unique_ptr<FILE, PipeCloser> pipe(popen((command + " 2>&1").c_str(), "r"));
  if (pipe == nullptr) {
    ADD_FAILURE() << "popen " << command;
    return result;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe.get())) > 0) result.output.append(buf, n);
  int status = pclose(pipe.release());
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::string Quoted(const std::string& s) { return "'" + s + "'"; }

internal::X509Ptr ParseCert(const std::string& pem) {
  auto certs = internal::ParseCertificates(pem, "test certificate");
  EXPECT_TRUE(certs.ok()) << certs.status();
  if (!certs.ok() || certs->size() != 1) {
    ADD_FAILURE() << "expected one certificate";
    return nullptr;
  }
  return std::move((*certs)[0]);
}

// DER of a PEM certificate, so encodings compare independent of PEM line wrapping.
std::string Der(const std::string& pem) {
  internal::X509Ptr cert = ParseCert(pem);
  if (cert == nullptr) return "";
  unsigned char* der = nullptr;
  int len = i2d_X509(cert.get(), &der);
  std::string out(reinterpret_cast<char*>(der), len > 0 ? static_cast<size_t>(len) : 0);
  OPENSSL_free(der);
  return out;
}

absl::Time NotBefore(const X509* cert) {
  return *internal::Asn1TimeToTime(X509_get0_notBefore(cert));
}
absl::Time NotAfter(const X509* cert) {
  return *internal::Asn1TimeToTime(X509_get0_notAfter(cert));
}

internal::BignumPtr Serial(const X509* cert) {
  return internal::BignumPtr(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
}

// Now, whole seconds (certificates carry no fractions), so the openssl CLI, which checks against
// the real time, agrees with the injected clock.
absl::Time WholeSecondsNow() { return absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now())); }

class CaTest : public ::testing::Test {
 protected:
  CaOptions Options() const {
    CaOptions options;
    options.state_dir = dir_.PathOf("state");
    options.clock = &clock_;
    return options;
  }
  std::unique_ptr<CertificateAuthority> NewCa() {
    auto ca = CertificateAuthority::Create(Options());
    EXPECT_TRUE(ca.ok()) << ca.status();
    return ca.ok() ? std::move(*ca) : nullptr;
  }
  std::vector<std::string> SignFor(const CertificateAuthority& ca, const std::string& identity,
                                   absl::Duration ttl = absl::ZeroDuration()) {
    auto csr = MakeCsrForTest({identity});
    EXPECT_TRUE(csr.ok()) << csr.status();
    if (!csr.ok()) return {};
    auto chain = ca.Sign(csr->first, identity, ttl);
    EXPECT_TRUE(chain.ok()) << chain.status();
    return chain.ok() ? *chain : std::vector<std::string>{};
  }

  TempDir dir_;
  FakeClock clock_{WholeSecondsNow()};
};

// The default state directory, /var/lib/ambit/<instance>, has a parent a fresh machine lacks.
TEST_F(CaTest, CreatesTheStateDirectorysMissingParents) {
  CaOptions options = Options();
  options.state_dir = dir_.PathOf("var/lib/ambit/quickstart");
  auto ca = CertificateAuthority::Create(options);
  ASSERT_TRUE(ca.ok()) << ca.status();
  EXPECT_TRUE(std::filesystem::exists(dir_.PathOf("var/lib/ambit/quickstart/ca/root-key.pem")));
}

TEST_F(CaTest, GeneratesRootOnceAndReloadsIt) {
  auto first = NewCa();
  ASSERT_NE(first, nullptr);
  ASSERT_THAT(first->TrustBundle(), SizeIs(1));
  struct stat st;
  ASSERT_EQ(stat(dir_.PathOf("state/ca").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  ASSERT_EQ(stat(dir_.PathOf("state/ca/root-key.pem").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(dir_.Read("state/ca/root-cert.pem"), first->TrustBundle()[0]);

  clock_.Advance(absl::Hours(1));
  auto second = NewCa();
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second->TrustBundle(), first->TrustBundle());
  EXPECT_EQ(second->IssuerName(), first->IssuerName());
  // No temporary files are left behind.
  EXPECT_THAT(std::distance(std::filesystem::directory_iterator(dir_.PathOf("state/ca")),
                            std::filesystem::directory_iterator()),
              2);
}

TEST_F(CaTest, RootIsATenYearP256CaNamedForTheTrustDomain) {
  auto ca = NewCa();
  ASSERT_NE(ca, nullptr);
  EXPECT_EQ(ca->IssuerName(), "O = ambit, CN = ambit root CA cluster.local");
  internal::X509Ptr root = ParseCert(ca->TrustBundle()[0]);
  ASSERT_NE(root, nullptr);
  EXPECT_EQ(NotBefore(root.get()), clock_.Now() - absl::Minutes(1));
  EXPECT_GE(NotAfter(root.get()) - clock_.Now(), absl::Hours(24 * 3652));
  EVP_PKEY* key = X509_get0_pubkey(root.get());
  ASSERT_NE(key, nullptr);
  EXPECT_TRUE(EVP_PKEY_is_a(key, "EC"));
  EXPECT_EQ(EVP_PKEY_get_bits(key), 256);
  EXPECT_EQ(Serial(root.get()) != nullptr ? BN_num_bits(Serial(root.get()).get()) : 0, 128);

  dir_.Write("root.pem", ca->TrustBundle()[0]);
  CommandResult text =
      RunCommand("openssl x509 -noout -text -in " + Quoted(dir_.PathOf("root.pem")));
  ASSERT_EQ(text.exit_code, 0) << text.output;
  EXPECT_THAT(text.output, HasSubstr("CA:TRUE"));
  EXPECT_THAT(text.output, HasSubstr("Certificate Sign, CRL Sign"));
  EXPECT_THAT(text.output, HasSubstr("ecdsa-with-SHA256"));
}

TEST_F(CaTest, IssuedLeafVerifiesWithOpenSslAndHasTheSvidProfile) {
  auto ca = NewCa();
  ASSERT_NE(ca, nullptr);
  std::vector<std::string> chain = SignFor(*ca, kWeb);
  ASSERT_THAT(chain, SizeIs(2));  // leaf, root
  EXPECT_EQ(chain[1], ca->TrustBundle()[0]);
  dir_.Write("root.pem", ca->TrustBundle()[0]);
  dir_.Write("leaf.pem", chain[0]);

  for (const char* purpose : {"sslclient", "sslserver"}) {
    CommandResult verify = RunCommand(absl::StrCat("openssl verify -purpose ", purpose, " -CAfile ",
                                                   Quoted(dir_.PathOf("root.pem")), " ",
                                                   Quoted(dir_.PathOf("leaf.pem"))));
    EXPECT_EQ(verify.exit_code, 0) << verify.output;
    EXPECT_THAT(verify.output, HasSubstr("leaf.pem: OK"));
  }

  CommandResult text =
      RunCommand("openssl x509 -noout -text -in " + Quoted(dir_.PathOf("leaf.pem")));
  ASSERT_EQ(text.exit_code, 0) << text.output;
  EXPECT_THAT(text.output, HasSubstr("URI:spiffe://cluster.local/ns/default/sa/web"));
  EXPECT_THAT(text.output, HasSubstr("X509v3 Subject Alternative Name: critical"));
  EXPECT_THAT(text.output,
              HasSubstr("X509v3 Basic Constraints: critical\n                CA:FALSE"));
  EXPECT_THAT(text.output,
              HasSubstr("X509v3 Key Usage: critical\n                Digital Signature, "
                        "Key Encipherment"));
  EXPECT_THAT(text.output,
              HasSubstr("TLS Web Server Authentication, TLS Web Client Authentication"));
  EXPECT_THAT(text.output, HasSubstr("X509v3 Subject Key Identifier"));
  EXPECT_THAT(text.output, HasSubstr("X509v3 Authority Key Identifier"));
  EXPECT_THAT(text.output, HasSubstr("Issuer: O = ambit, CN = ambit root CA cluster.local"));
  EXPECT_THAT(text.output, Not(HasSubstr("DNS:")));

  internal::X509Ptr leaf = ParseCert(chain[0]);
  ASSERT_NE(leaf, nullptr);
  EXPECT_EQ(X509_NAME_entry_count(X509_get_subject_name(leaf.get())), 0);
  EXPECT_EQ(X509_get_version(leaf.get()), X509_VERSION_3);
}

TEST_F(CaTest, SerialsAreRandomAnd128Bits) {
  auto ca = NewCa();
  ASSERT_NE(ca, nullptr);
  internal::X509Ptr a = ParseCert(SignFor(*ca, kWeb).at(0));
  internal::X509Ptr b = ParseCert(SignFor(*ca, kWeb).at(0));
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  internal::BignumPtr serial_a = Serial(a.get());
  internal::BignumPtr serial_b = Serial(b.get());
  EXPECT_EQ(BN_num_bits(serial_a.get()), 128);
  EXPECT_EQ(BN_num_bits(serial_b.get()), 128);
  EXPECT_FALSE(BN_is_negative(serial_a.get()));
  EXPECT_NE(BN_cmp(serial_a.get(), serial_b.get()), 0);
}

TEST_F(CaTest, ValidityFollowsTheInjectedClock) {
  auto ca = NewCa();
  ASSERT_NE(ca, nullptr);
  clock_.Advance(absl::Minutes(10));
  internal::X509Ptr leaf = ParseCert(SignFor(*ca, kWeb, absl::Hours(6)).at(0));
  ASSERT_NE(leaf, nullptr);
  EXPECT_EQ(NotBefore(leaf.get()), clock_.Now() - absl::Minutes(1));
  EXPECT_EQ(NotAfter(leaf.get()), clock_.Now() + absl::Hours(6));

  // Zero asks for the default lifetime.
  internal::X509Ptr by_default = ParseCert(SignFor(*ca, kWeb).at(0));
  ASSERT_NE(by_default, nullptr);
  EXPECT_EQ(NotAfter(by_default.get()), clock_.Now() + absl::Hours(24));
}

TEST_F(CaTest, LifetimeIsCappedAtTheMaximum) {
  CaOptions options = Options();
  options.default_leaf_ttl = absl::Hours(1);
  options.max_leaf_ttl = absl::Hours(48);
  auto ca = CertificateAuthority::Create(options);
  ASSERT_TRUE(ca.ok()) << ca.status();
  internal::X509Ptr leaf = ParseCert(SignFor(**ca, kWeb, absl::Hours(24 * 30)).at(0));
  ASSERT_NE(leaf, nullptr);
  EXPECT_EQ(NotAfter(leaf.get()), clock_.Now() + absl::Hours(48));
  internal::X509Ptr by_default = ParseCert(SignFor(**ca, kWeb).at(0));
  ASSERT_NE(by_default, nullptr);
  EXPECT_EQ(NotAfter(by_default.get()), clock_.Now() + absl::Hours(1));
}

TEST_F(CaTest, RejectsBadLifetimesAndIdentities) {
  auto ca = NewCa();
  ASSERT_NE(ca, nullptr);
  auto csr = MakeCsrForTest({kWeb});
  ASSERT_TRUE(csr.ok()) << csr.status();
  auto negative = ca->Sign(csr->first, kWeb, absl::Hours(-1));
  EXPECT_EQ(negative.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(negative.status().message(), HasSubstr("negative"));

  const std::string other_domain = "spiffe://example.org/ns/default/sa/web";
  auto foreign_csr = MakeCsrForTest({other_domain});
  ASSERT_TRUE(foreign_csr.ok());
  auto foreign = ca->Sign(foreign_csr->first, other_domain, absl::ZeroDuration());
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(foreign.status().message(), HasSubstr("trust domain cluster.local"));

  CaOptions bad = Options();
  bad.max_leaf_ttl = absl::Hours(1);  // below the 24h default
  EXPECT_EQ(CertificateAuthority::Create(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = Options();
  bad.trust_domain = "Cluster Local";
  EXPECT_EQ(CertificateAuthority::Create(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CaTest, TrustDomainChangeSignsTheNewDomainOnly) {
  auto ca = NewCa();
  ASSERT_NE(ca, nullptr);
  const std::string renamed = "spiffe://example.org/ns/default/sa/web";
  ASSERT_TRUE(ca->SetTrustDomain("example.org").ok());
  EXPECT_EQ(ca->trust_domain(), "example.org");
  EXPECT_THAT(SignFor(*ca, renamed), SizeIs(2));
  auto csr = MakeCsrForTest({kWeb});
  ASSERT_TRUE(csr.ok());
  auto old = ca->Sign(csr->first, kWeb, absl::ZeroDuration());
  EXPECT_EQ(old.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(old.status().message(), HasSubstr("trust domain example.org"));
  // Not a trust domain: refused, the current one stays.
  EXPECT_EQ(ca->SetTrustDomain("Not A Domain").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ca->trust_domain(), "example.org");
}

// A copy of `csr_pem` with one byte of the signed part changed; the signature no longer matches.
std::string Tamper(const std::string& csr_pem) {
  internal::X509ReqPtr csr = *internal::ParseCsr(csr_pem);
  unsigned char* der = nullptr;
  int len = i2d_X509_REQ(csr.get(), &der);
  std::string bytes(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  size_t at = bytes.find("sa/web");
  EXPECT_NE(at, std::string::npos);
  bytes[at + 5] = 'c';  // sa/wec
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  internal::X509ReqPtr tampered(d2i_X509_REQ(nullptr, &p, static_cast<long>(bytes.size())));
  EXPECT_NE(tampered, nullptr);
  return internal::CsrToPem(tampered.get());
}

TEST_F(CaTest, RejectsBadCsrs) {
  auto ca = NewCa();
  ASSERT_NE(ca, nullptr);
  auto good = MakeCsrForTest({kWeb});
  ASSERT_TRUE(good.ok()) << good.status();
  ASSERT_TRUE(ca->Sign(good->first, kWeb, absl::ZeroDuration()).ok());
  auto csr_with = [](std::vector<std::string> uris, std::vector<std::string> dns = {}) {
    auto csr = MakeCsrForTest(uris, dns);
    EXPECT_TRUE(csr.ok()) << csr.status();
    return csr.ok() ? csr->first : std::string();
  };

  struct Case {
    const char* name;
    std::string csr;
    const char* error;
  };
  const Case cases[] = {
      {"garbage", "this is not a CSR", "not a valid PEM certificate request"},
      {"truncated", good->first.substr(0, good->first.size() / 2),
       "not a valid PEM certificate request"},
      {"oversize", good->first + std::string(64 * 1024, '\n'), "at most 65536"},
      {"tampered", Tamper(good->first), "signature does not verify"},
      {"two URIs", csr_with({kWeb, "spiffe://cluster.local/ns/default/sa/db"}), "has 2 URIs"},
      {"DNS SAN", csr_with({kWeb}, {"web.default.svc"}), "DNS name \"web.default.svc\""},
      {"only DNS", csr_with({}, {"web.default.svc"}), "DNS name"},
      {"other URI", csr_with({"spiffe://cluster.local/ns/default/sa/admin"}),
       "asks for URI \"spiffe://cluster.local/ns/default/sa/admin\""},
      {"no SAN", csr_with({}), "no subjectAltName"},
      {"key PEM", good->second, "not a valid PEM certificate request"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    auto result = ca->Sign(c.csr, kWeb, absl::ZeroDuration());
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(result.status().message(), HasSubstr(c.error));
    // Never echo key material.
    EXPECT_THAT(result.status().message(), Not(HasSubstr("PRIVATE KEY")));
  }
}

TEST_F(CaTest, ChecksTheCsrKeyType) {
  auto ca = NewCa();
  ASSERT_NE(ca, nullptr);
  struct Case {
    const char* newkey;
    bool accepted;
  };
  for (const Case& c : {Case{"ec -pkeyopt ec_paramgen_curve:P-384", true}, Case{"rsa:2048", true},
                        Case{"rsa:1024", false}, Case{"ec -pkeyopt ec_paramgen_curve:P-521", false},
                        Case{"ed25519", false}}) {
    SCOPED_TRACE(c.newkey);
    CommandResult made = RunCommand(absl::StrCat(
        "openssl req -new -newkey ", c.newkey, " -nodes -keyout /dev/null -subj /O=test ",
        "-addext subjectAltName=URI:", kWeb, " -out ", Quoted(dir_.PathOf("key.csr"))));
    ASSERT_EQ(made.exit_code, 0) << made.output;
    auto result = ca->Sign(dir_.Read("key.csr"), kWeb, absl::ZeroDuration());
    EXPECT_EQ(result.ok(), c.accepted) << result.status();
    if (!c.accepted) {
      EXPECT_THAT(result.status().message(), HasSubstr("CSR"));
    }
  }
}

TEST_F(CaTest, ServingCertificateVerifiesForServerUse) {
  auto ca = NewCa();
  ASSERT_NE(ca, nullptr);
  auto serving =
      ca->IssueServingCertificate({"ambitd.ambit-system.svc", "127.0.0.1"}, absl::Hours(2));
  ASSERT_TRUE(serving.ok()) << serving.status();
  internal::X509Ptr cert = ParseCert(serving->first);  // no intermediates: the leaf alone
  ASSERT_NE(cert, nullptr);
  auto key = internal::ParsePrivateKey(serving->second, "serving key");
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(X509_check_private_key(cert.get(), key->get()), 1);
  EXPECT_EQ(NotAfter(cert.get()), clock_.Now() + absl::Hours(2));

  dir_.Write("root.pem", ca->TrustBundle()[0]);
  dir_.Write("serving.pem", serving->first);
  CommandResult verify = RunCommand(absl::StrCat(
      "openssl verify -purpose sslserver -verify_hostname ambitd.ambit-system.svc ", "-CAfile ",
      Quoted(dir_.PathOf("root.pem")), " ", Quoted(dir_.PathOf("serving.pem"))));
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  CommandResult text =
      RunCommand("openssl x509 -noout -text -in " + Quoted(dir_.PathOf("serving.pem")));
  EXPECT_THAT(text.output, HasSubstr("DNS:ambitd.ambit-system.svc, IP Address:127.0.0.1"));

  EXPECT_FALSE(ca->IssueServingCertificate({}, absl::ZeroDuration()).ok());
  EXPECT_FALSE(ca->IssueServingCertificate({"bad name"}, absl::ZeroDuration()).ok());
}

TEST_F(CaTest, HalfWrittenStateIsReportedNotOverwritten) {
  ASSERT_NE(NewCa(), nullptr);
  ASSERT_EQ(unlink(dir_.PathOf("state/ca/root-cert.pem").c_str()), 0);
  auto ca = CertificateAuthority::Create(Options());
  ASSERT_FALSE(ca.ok());
  EXPECT_EQ(ca.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(ca.status().message(), HasSubstr("root-cert.pem is missing"));
}

TEST_F(CaTest, SignsConcurrently) {
  auto ca = NewCa();
  ASSERT_NE(ca, nullptr);
  std::vector<std::string> csrs;
  for (int i = 0; i < 4; ++i) csrs.push_back(MakeCsrForTest({kWeb})->first);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        if (!ca->Sign(csrs[t], kWeb, absl::ZeroDuration()).ok()) ++failures;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

// Operator-provided CA material in Istio's cacerts layout, made with the openssl CLI.
class CacertsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_.Write("openssl.cnf", R"([req]
distinguished_name = dn
[dn]
[v3_root]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[v3_intermediate]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[v3_leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
)");
    ASSERT_EQ(mkdir(dir_.PathOf("cacerts").c_str(), 0700), 0);
  }

  // <name>-cert.pem and <name>-key.pem, a self-signed root.
  void MakeRoot(const std::string& name) {
    CommandResult r = RunCommand(absl::StrCat(
        "openssl req -x509 -config ", Quoted(dir_.PathOf("openssl.cnf")),
        " -extensions v3_root -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650",
        " -subj '/O=test/CN=", name, "' -keyout ", Quoted(dir_.PathOf(name + "-key.pem")), " -out ",
        Quoted(dir_.PathOf(name + "-cert.pem"))));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  // <name>-cert.pem and <name>-key.pem, signed by <issuer>.
  void MakeIssued(const std::string& issuer, const std::string& name,
                  const std::string& extensions = "v3_intermediate") {
    CommandResult req = RunCommand(
        absl::StrCat("openssl req -new -config ", Quoted(dir_.PathOf("openssl.cnf")),
                     " -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/O=test/CN=", name,
                     "' -keyout ", Quoted(dir_.PathOf(name + "-key.pem")), " -out ",
                     Quoted(dir_.PathOf(name + ".csr"))));
    ASSERT_EQ(req.exit_code, 0) << req.output;
    CommandResult sign = RunCommand(absl::StrCat(
        "openssl x509 -req -in ", Quoted(dir_.PathOf(name + ".csr")), " -CA ",
        Quoted(dir_.PathOf(issuer + "-cert.pem")), " -CAkey ",
        Quoted(dir_.PathOf(issuer + "-key.pem")), " -set_serial ", ++serial_, " -days 365",
        " -extfile ", Quoted(dir_.PathOf("openssl.cnf")), " -extensions ", extensions, " -out ",
        Quoted(dir_.PathOf(name + "-cert.pem"))));
    ASSERT_EQ(sign.exit_code, 0) << sign.output;
  }
  // Fills cacerts/ the way Istio documents it: cert-chain.pem is ca-cert followed by the root.
  void Install(const std::string& ca, const std::string& key_of, const std::string& roots) {
    dir_.Write("cacerts/ca-cert.pem", dir_.Read(ca + "-cert.pem"));
    dir_.Write("cacerts/ca-key.pem", dir_.Read(key_of + "-key.pem"));
    dir_.Write("cacerts/root-cert.pem", roots);
    dir_.Write("cacerts/cert-chain.pem", dir_.Read(ca + "-cert.pem") + dir_.Read("root-cert.pem"));
  }
  CaOptions Options() const {
    CaOptions options;
    options.state_dir = dir_.PathOf("state");
    options.cacerts_dir = dir_.PathOf("cacerts");
    return options;
  }

  TempDir dir_;
  int serial_ = 1000;
};

TEST_F(CacertsTest, SignsWithTheIntermediateAndChainsLeafToRoot) {
  MakeRoot("root");
  MakeIssued("root", "intermediate");
  Install("intermediate", "intermediate", dir_.Read("root-cert.pem"));
  auto ca = CertificateAuthority::Create(Options());
  ASSERT_TRUE(ca.ok()) << ca.status();
  EXPECT_EQ((*ca)->IssuerName(), "O = test, CN = intermediate");
  ASSERT_THAT((*ca)->TrustBundle(), SizeIs(1));
  EXPECT_EQ(Der((*ca)->TrustBundle()[0]), Der(dir_.Read("root-cert.pem")));
  // The generated-root path is not taken.
  EXPECT_FALSE(std::filesystem::exists(dir_.PathOf("state/ca/root-key.pem")));

  auto csr = MakeCsrForTest({kWeb});
  ASSERT_TRUE(csr.ok());
  auto chain = (*ca)->Sign(csr->first, kWeb, absl::ZeroDuration());
  ASSERT_TRUE(chain.ok()) << chain.status();
  ASSERT_THAT(*chain, SizeIs(3));
  EXPECT_EQ(Der((*chain)[1]), Der(dir_.Read("intermediate-cert.pem")));
  EXPECT_EQ(Der((*chain)[2]), Der(dir_.Read("root-cert.pem")));
  internal::X509Ptr leaf = ParseCert((*chain)[0]);
  internal::X509Ptr intermediate = ParseCert((*chain)[1]);
  ASSERT_NE(leaf, nullptr);
  ASSERT_NE(intermediate, nullptr);
  EXPECT_EQ(X509_check_issued(intermediate.get(), leaf.get()), X509_V_OK);

  dir_.Write("leaf.pem", (*chain)[0]);
  CommandResult verify = RunCommand(absl::StrCat(
      "openssl verify -CAfile ", Quoted(dir_.PathOf("root-cert.pem")), " -untrusted ",
      Quoted(dir_.PathOf("intermediate-cert.pem")), " ", Quoted(dir_.PathOf("leaf.pem"))));
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  EXPECT_THAT(verify.output, HasSubstr("leaf.pem: OK"));
  // Without the intermediate the leaf does not verify: it really is signed by it.
  CommandResult alone =
      RunCommand(absl::StrCat("openssl verify -CAfile ", Quoted(dir_.PathOf("root-cert.pem")), " ",
                              Quoted(dir_.PathOf("leaf.pem"))));
  EXPECT_NE(alone.exit_code, 0) << alone.output;

  // The serving chain carries the intermediate but not the root.
  auto serving = (*ca)->IssueServingCertificate({"localhost"}, absl::ZeroDuration());
  ASSERT_TRUE(serving.ok()) << serving.status();
  auto serving_certs = internal::ParseCertificates(serving->first, "serving chain");
  ASSERT_TRUE(serving_certs.ok());
  EXPECT_THAT(*serving_certs, SizeIs(2));
}

TEST_F(CacertsTest, MismatchedKeyIsRejectedNamingTheFile) {
  MakeRoot("root");
  MakeIssued("root", "intermediate");
  MakeIssued("root", "other");
  Install("intermediate", "other", dir_.Read("root-cert.pem"));
  auto ca = CertificateAuthority::Create(Options());
  ASSERT_FALSE(ca.ok());
  EXPECT_EQ(ca.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(ca.status().message(), HasSubstr("ca-key.pem"));
  EXPECT_THAT(ca.status().message(), HasSubstr("does not match"));
}

TEST_F(CacertsTest, TrustBundleWithTwoRootsReturnsBoth) {
  MakeRoot("root");
  MakeRoot("next-root");
  MakeIssued("root", "intermediate");
  Install("intermediate", "intermediate",
          dir_.Read("root-cert.pem") + dir_.Read("next-root-cert.pem"));
  auto ca = CertificateAuthority::Create(Options());
  ASSERT_TRUE(ca.ok()) << ca.status();
  std::vector<std::string> bundle = (*ca)->TrustBundle();
  ASSERT_THAT(bundle, SizeIs(2));
  EXPECT_EQ(Der(bundle[0]), Der(dir_.Read("root-cert.pem")));
  EXPECT_EQ(Der(bundle[1]), Der(dir_.Read("next-root-cert.pem")));
}

TEST_F(CacertsTest, IntermediateOfAnotherRootIsRejected) {
  MakeRoot("root");
  MakeRoot("stranger");
  MakeIssued("root", "intermediate");
  Install("intermediate", "intermediate", dir_.Read("stranger-cert.pem"));
  dir_.Write("cacerts/cert-chain.pem", dir_.Read("intermediate-cert.pem"));
  auto ca = CertificateAuthority::Create(Options());
  ASSERT_FALSE(ca.ok());
  EXPECT_THAT(ca.status().message(), HasSubstr("does not chain to a root in"));
  EXPECT_THAT(ca.status().message(), HasSubstr("root-cert.pem"));
}

TEST_F(CacertsTest, NonCaCertificateIsRejected) {
  MakeRoot("root");
  MakeIssued("root", "leaf", "v3_leaf");
  Install("leaf", "leaf", dir_.Read("root-cert.pem"));
  auto ca = CertificateAuthority::Create(Options());
  ASSERT_FALSE(ca.ok());
  EXPECT_THAT(ca.status().message(), HasSubstr("ca-cert.pem: the certificate is not a CA"));
}

TEST_F(CacertsTest, IncompleteLayoutIsRejectedNamingTheMissingFiles) {
  MakeRoot("root");
  MakeIssued("root", "intermediate");
  Install("intermediate", "intermediate", dir_.Read("root-cert.pem"));
  ASSERT_EQ(unlink(dir_.PathOf("cacerts/ca-key.pem").c_str()), 0);
  auto ca = CertificateAuthority::Create(Options());
  ASSERT_FALSE(ca.ok());
  EXPECT_THAT(ca.status().message(), HasSubstr("but not ca-key.pem"));
}

TEST_F(CacertsTest, EmptyCacertsDirectoryFallsBackToAGeneratedRoot) {
  auto ca = CertificateAuthority::Create(Options());
  ASSERT_TRUE(ca.ok()) << ca.status();
  EXPECT_THAT((*ca)->IssuerName(), HasSubstr("ambit root CA"));
  EXPECT_TRUE(std::filesystem::exists(dir_.PathOf("state/ca/root-key.pem")));
}

}  // namespace
}  // namespace ambit::ca
