#include "agent/issuance/pem_info.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/common/formats.h"

namespace ambit::issuance {
namespace {
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct BnFree {
  void operator()(BIGNUM* b) const { BN_free(b); }
};
struct OpenSslFree {
  void operator()(char* p) const { OPENSSL_free(p); }
};
}  // namespace

absl::StatusOr<CertificateInfo> DescribeCertificate(const std::string& pem) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(pem.data(), pem.size()));
  std::unique_ptr<X509, X509Free> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) return absl::InvalidArgumentError("not a PEM certificate");
  CertificateInfo info;
  // OpenSSL's one-line form, as the data plane and the CA print names (agent/common/formats.h).
  std::unique_ptr<BIO, BioFree> name(BIO_new(BIO_s_mem()));
  if (name != nullptr && X509_NAME_print_ex(name.get(), X509_get_subject_name(cert.get()), 0,
                                            XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB) >= 0) {
    char* data = nullptr;
    const long len = BIO_get_mem_data(name.get(), &data);
    if (len > 0) info.subject.assign(data, static_cast<size_t>(len));
  }
  std::unique_ptr<BIGNUM, BnFree> bn(
      ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert.get()), nullptr));
  std::unique_ptr<char, OpenSslFree> hex(bn ? BN_bn2hex(bn.get()) : nullptr);
  if (hex) info.serial_hex = FormatSerial(hex.get());
  struct tm tm {};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(cert.get()), &tm) == 1) {
    info.not_after = absl::FromTM(tm, absl::UTCTimeZone());
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(cert.get(), EVP_sha256(), md, &len) == 1) {
    for (unsigned int i = 0; i < len; ++i) {
      absl::StrAppend(&info.sha256_fingerprint, i ? ":" : "", absl::StrFormat("%02X", md[i]));
    }
  }
  return info;
}

}  // namespace ambit::issuance
