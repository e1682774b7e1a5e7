#include "agent/ca/crl_file.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <climits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/ca/openssl_util.h"
#include "agent/common/status.h"

namespace ambit::ca {
namespace {

using internal::BioPtr;
using internal::OpenSslError;
using internal::OpenSslPtr;
using internal::X509Ptr;
using CrlPtr = OpenSslPtr<X509_CRL, X509_CRL_free>;

// At most this many CRLs (the data plane's bound).
constexpr size_t kMaxCrls = 64;

std::string OneLine(const X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_ONELINE) < 0) return "?";
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return len > 0 ? std::string(data, static_cast<size_t>(len)) : std::string();
}

}  // namespace

absl::StatusOr<CrlFileContent> ParseCrlFile(absl::string_view content, absl::string_view source,
                                            const std::vector<std::string>& root_pems) {
  auto invalid = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
  };
  if (content.size() > kMaxCrlFileBytes) {
    return invalid(
        absl::StrCat(content.size(), " bytes, more than the ", kMaxCrlFileBytes, " accepted"));
  }
  std::vector<X509Ptr> roots;
  for (const std::string& pem : root_pems) {
    AMBIT_ASSIGN_OR_RETURN(std::vector<X509Ptr> certs,
                           internal::ParseCertificates(pem, "trust bundle", true));
    for (auto& c : certs) roots.push_back(std::move(c));
  }
  CrlFileContent out;
  BioPtr bio(BIO_new_mem_buf(content.data(), static_cast<int>(content.size())));
  if (bio == nullptr) return OpenSslError(absl::StatusCode::kResourceExhausted, "BIO_new_mem_buf");
  for (size_t n = 1;; ++n) {
    char* name = nullptr;
    char* header = nullptr;
    unsigned char* der = nullptr;
    long len = 0;
    if (PEM_read_bio(bio.get(), &name, &header, &der, &len) != 1) {
      const unsigned long err = ERR_peek_last_error();
      if (ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE) {
        ERR_clear_error();  // the end (or a file without any PEM block: no revocation)
        // Text that is not PEM at all is a mistake, not an empty list.
        if (out.pems.empty() && content.find_first_not_of(" \t\r\n") != absl::string_view::npos) {
          return invalid("holds no PEM block (expected -----BEGIN X509 CRL-----)");
        }
        return out;
      }
      ERR_clear_error();
      return invalid(absl::StrCat("PEM block #", n, " is malformed (bad base64 or armour)"));
    }
    std::string block_name(name);
    OPENSSL_free(name);
    OPENSSL_free(header);
    std::string block(reinterpret_cast<const char*>(der), static_cast<size_t>(len));
    OPENSSL_free(der);
    if (block_name != "X509 CRL") {
      return invalid(
          absl::StrCat("PEM block #", n, " is a \"", block_name, "\", not an \"X509 CRL\""));
    }
    const unsigned char* p = reinterpret_cast<const unsigned char*>(block.data());
    CrlPtr crl(d2i_X509_CRL(nullptr, &p, static_cast<long>(block.size())));
    if (crl == nullptr ||
        p != reinterpret_cast<const unsigned char*>(block.data()) + block.size()) {
      ERR_clear_error();
      return invalid(absl::StrCat("CRL #", n, " is not a DER X.509 CRL"));
    }
    const std::string issuer = OneLine(X509_CRL_get_issuer(crl.get()));
    const ASN1_TIME* this_update = X509_CRL_get0_lastUpdate(crl.get());
    const ASN1_TIME* next_update = X509_CRL_get0_nextUpdate(crl.get());
    if (this_update == nullptr ||
        (next_update != nullptr && ASN1_TIME_compare(this_update, next_update) > 0)) {
      return invalid(absl::StrCat("CRL #", n, " (issuer \"", issuer,
                                  "\"): thisUpdate is missing or after nextUpdate"));
    }
    bool named_root = false;
    bool signed_by_root = false;
    for (const X509Ptr& root : roots) {
      if (X509_NAME_cmp(X509_get_subject_name(root.get()), X509_CRL_get_issuer(crl.get())) != 0) {
        continue;
      }
      named_root = true;
      EVP_PKEY* key = X509_get0_pubkey(root.get());
      if (key != nullptr && X509_CRL_verify(crl.get(), key) == 1) signed_by_root = true;
      ERR_clear_error();
    }
    if (named_root && !signed_by_root) {
      return invalid(absl::StrCat("CRL #", n, " (issuer \"", issuer,
                                  "\"): its signature does not verify with that root's key"));
    }
    const STACK_OF(X509_REVOKED)* revoked = X509_CRL_get_REVOKED(crl.get());
    out.revoked += revoked == nullptr ? 0 : static_cast<size_t>(sk_X509_REVOKED_num(revoked));
    BioPtr pem_out(BIO_new(BIO_s_mem()));
    if (pem_out == nullptr || PEM_write_bio_X509_CRL(pem_out.get(), crl.get()) != 1) {
      return OpenSslError(absl::StatusCode::kInternal, "encoding a CRL");
    }
    char* data = nullptr;
    long pem_len = BIO_get_mem_data(pem_out.get(), &data);
    out.pems.emplace_back(data, static_cast<size_t>(pem_len));
    out.issuers.push_back(issuer);
    if (out.pems.size() > kMaxCrls) return invalid(absl::StrCat("more than ", kMaxCrls, " CRLs"));
  }
}

}  // namespace ambit::ca
