// PEM and CSRs at the CA (control plane, OpenSSL 3): what the Istio CA API and the data plane's
// CSRs hand to it, and what operators hand it as files.
// Input: [mode (byte % 3)] then
//   0: a CSR PEM: RequestedUris (what CaServer checks against the caller's node), RequestedIdentity
//      with the URI asked for as the ImpersonatedIdentity too, and CertificateAuthority::Sign for
//      the URI it asks for;
//   1: a PEM bundle: SplitPemCertificates, DescribeCertificate (ambitctl certs), ParseCertificates,
//      ValidateRoots (an external CA's roots file or ConfigMap);
//   2: an Istio cacerts directory: three sized parts (ca-cert.pem, ca-key.pem, root-cert.pem) and
//      the rest (cert-chain.pem), loaded by CertificateAuthority::Create.
// Properties: no crash or leak; a signed chain is leaf first, for exactly the URI asked, and each
// element describes as a certificate.

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/time/time.h"
#include "agent/ca/certificate_authority.h"
#include "agent/ca/openssl_util.h"
#include "agent/common/log.h"
#include "agent/issuance/ca_roots.h"
#include "agent/issuance/ca_server.h"
#include "agent/issuance/impersonation.h"
#include "agent/issuance/pem_info.h"
#include "agent/issuance/signer.h"
#include "tests/fuzz/ca_fixture.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

void SignCsr(absl::string_view csr) {
  const std::string pem(csr);
  auto uris = ambit::issuance::RequestedUris(pem);
  std::string identity = "spiffe://cluster.local/ns/fuzz/sa/app";
  if (uris.ok() && !uris->empty()) identity = uris->front();
  if (uris.ok()) {
    auto requested = ambit::issuance::RequestedIdentity(identity, *uris);
    FUZZ_REQUIRE(!requested.ok() || *requested == identity);
  }
  auto chain = ambit::fuzz::SharedCa()->Sign(pem, identity, absl::Hours(1));
  if (!chain.ok()) {
    FUZZ_REQUIRE(!chain.status().message().empty());
    return;
  }
  FUZZ_REQUIRE(uris.ok() && uris->size() == 1 && uris->front() == identity);
  FUZZ_REQUIRE(chain->size() >= 2);
  for (const auto& cert : *chain) FUZZ_REQUIRE(ambit::issuance::DescribeCertificate(cert).ok());
}

void DescribeBundle(absl::string_view bundle) {
  const std::string pem(bundle);
  for (const auto& cert : ambit::issuance::SplitPemCertificates(pem)) {
    (void)ambit::issuance::DescribeCertificate(cert);
  }
  (void)ambit::issuance::DescribeCertificate(pem);
  (void)ambit::ca::internal::ParseCertificates(pem, "fuzz.pem");
  (void)ambit::ca::internal::ParsePrivateKey(pem, "fuzz-key.pem");
  auto roots = ambit::issuance::ValidateRoots(pem, "fuzz.pem");
  FUZZ_REQUIRE(!roots.ok() || !ambit::issuance::SplitPemCertificates(*roots).empty());
}

void LoadCacerts(ambit::fuzz::Input& in) {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/ambit-fuzz-cacerts.XXXXXX";
    FUZZ_REQUIRE(mkdtemp(tmpl) != nullptr);
    std::string d = tmpl;
    static std::string to_remove = d;
    atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(to_remove, ec);
    });
    return d;
  }();
  auto write = [](const std::string& path, absl::string_view content) {
    std::ofstream(path, std::ios::binary | std::ios::trunc)
        .write(content.data(), static_cast<std::streamsize>(content.size()));
  };
  write(dir + "/ca-cert.pem", in.TakeSized());
  write(dir + "/ca-key.pem", in.TakeSized());
  write(dir + "/root-cert.pem", in.TakeSized());
  write(dir + "/cert-chain.pem", in.Rest());
  ambit::ca::CaOptions options;
  options.state_dir = ambit::fuzz::CaStateDir();
  options.cacerts_dir = dir;
  auto authority = ambit::ca::CertificateAuthority::Create(options);
  if (!authority.ok()) {
    FUZZ_REQUIRE(!authority.status().message().empty());
    return;
  }
  FUZZ_REQUIRE(!(*authority)->TrustBundle().empty());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Rejections are logged as warnings: millions of them would drown the fuzzer's own output.
  ambit::log::SetLevel("", ambit::log::Level::kError);
  (void)ambit::fuzz::SharedCa();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ambit::fuzz::Input in(data, size);
  switch (in.Byte() % 3) {
    case 0:
      SignCsr(in.Rest());
      break;
    case 1:
      DescribeBundle(in.Rest());
      break;
    default:
      LoadCacerts(in);
      break;
  }
  return 0;
}
