#include "agent/tls/crl.h"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <climits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/common/formats.h"
#include "agent/common/status.h"
#include "agent/tls/keys.h"
#include "agent/tls/trust_bundle.h"

namespace ambit::tls {
namespace {

absl::Status Invalid(absl::string_view message) { return absl::InvalidArgumentError(message); }

absl::StatusOr<std::string> OneLine(const X509_NAME* name) {
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_ONELINE) < 0) {
    return SslError(absl::StatusCode::kInternal, "printing a CRL issuer");
  }
  const uint8_t* data = nullptr;
  size_t len = 0;
  if (!BIO_mem_contents(bio.get(), &data, &len)) {
    return SslError(absl::StatusCode::kInternal, "reading memory BIO");
  }
  return std::string(reinterpret_cast<const char*>(data), len);
}

// Every "X509 CRL" block of `pem`, in order. Other PEM blocks are refused: a certificate in the
// CRL file is a mistake worth naming (ztunnel skips them silently; we would rather say so).
absl::StatusOr<std::vector<bssl::UniquePtr<X509_CRL>>> ReadCrls(absl::string_view pem) {
  std::vector<bssl::UniquePtr<X509_CRL>> out;
  if (pem.size() > static_cast<size_t>(INT_MAX)) return Invalid("CRL PEM too large");
  bssl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (bio == nullptr) return SslError(absl::StatusCode::kResourceExhausted, "BIO_new_mem_buf");
  while (true) {
    char* name = nullptr;
    char* header = nullptr;
    uint8_t* der = nullptr;
    long len = 0;
    if (!PEM_read_bio(bio.get(), &name, &header, &der, &len)) {
      const uint32_t err = ERR_peek_last_error();
      if (ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE) {
        ERR_clear_error();  // clean end of input
        return out;
      }
      return SslError(absl::StatusCode::kInvalidArgument,
                      absl::StrCat("reading PEM block #", out.size() + 1));
    }
    bssl::UniquePtr<char> name_owner(name);
    bssl::UniquePtr<char> header_owner(header);
    bssl::UniquePtr<uint8_t> der_owner(der);
    if (absl::string_view(name) != "X509 CRL") {
      return Invalid(
          absl::StrCat("PEM block #", out.size() + 1, " is a \"", name, "\", not an \"X509 CRL\""));
    }
    const uint8_t* p = der;
    bssl::UniquePtr<X509_CRL> crl(d2i_X509_CRL(nullptr, &p, len));
    if (crl == nullptr || p != der + len) {
      return SslError(absl::StatusCode::kInvalidArgument,
                      absl::StrCat("CRL #", out.size() + 1, " is not a DER X.509 CRL"));
    }
    out.push_back(std::move(crl));
    if (out.size() > kMaxCrls) return Invalid(absl::StrCat("more than ", kMaxCrls, " CRLs"));
  }
}

}  // namespace

absl::StatusOr<std::shared_ptr<const CrlSet>> CrlSet::Parse(const std::vector<std::string>& pems,
                                                            const TrustBundle& bundle) {
  std::shared_ptr<CrlSet> set(new CrlSet());
  size_t bytes = 0;
  for (size_t i = 0; i < pems.size(); ++i) {
    bytes += pems[i].size();
    if (bytes > kMaxCrlPemBytes) {
      return Invalid(absl::StrCat("CRLs exceed ", kMaxCrlPemBytes, " bytes of PEM"));
    }
    auto where = [&](size_t j) { return absl::StrCat("CRL PEM #", i + 1, ", CRL #", j + 1); };
    absl::StatusOr<std::vector<bssl::UniquePtr<X509_CRL>>> crls = ReadCrls(pems[i]);
    if (!crls.ok()) {
      return Invalid(absl::StrCat("CRL PEM #", i + 1, ": ", crls.status().message()));
    }
    for (size_t j = 0; j < crls->size(); ++j) {
      X509_CRL* crl = (*crls)[j].get();
      CrlInfo info;
      AMBIT_ASSIGN_OR_RETURN(info.issuer, OneLine(X509_CRL_get_issuer(crl)));
      absl::StatusOr<absl::Time> this_update = Asn1TimeToAbsl(X509_CRL_get0_lastUpdate(crl));
      if (!this_update.ok()) {
        return Invalid(absl::StrCat(where(j), " (issuer \"", info.issuer,
                                    "\"): thisUpdate: ", this_update.status().message()));
      }
      info.this_update = *this_update;
      if (const ASN1_TIME* next = X509_CRL_get0_nextUpdate(crl); next != nullptr) {
        absl::StatusOr<absl::Time> next_update = Asn1TimeToAbsl(next);
        if (!next_update.ok() || *next_update < info.this_update) {
          return Invalid(absl::StrCat(where(j), " (issuer \"", info.issuer,
                                      "\"): nextUpdate is not a time after thisUpdate"));
        }
        info.next_update = *next_update;
      }
      const STACK_OF(X509_REVOKED)* revoked = X509_CRL_get_REVOKED(crl);
      info.revoked = revoked == nullptr ? 0 : sk_X509_REVOKED_num(revoked);
      for (const auto& root : bundle.roots()) {
        if (X509_NAME_cmp(X509_get_subject_name(root.get()), X509_CRL_get_issuer(crl)) != 0) {
          continue;
        }
        bssl::UniquePtr<EVP_PKEY> key(X509_get_pubkey(root.get()));
        if (key == nullptr || X509_CRL_verify(crl, key.get()) != 1) {
          ERR_clear_error();
          continue;  // another root of the same name (a rotation) may have signed it
        }
        info.signed_by_root = true;
        break;
      }
      bool named_root = false;
      for (const auto& root : bundle.roots()) {
        named_root = named_root || X509_NAME_cmp(X509_get_subject_name(root.get()),
                                                 X509_CRL_get_issuer(crl)) == 0;
      }
      if (named_root && !info.signed_by_root) {
        return Invalid(absl::StrCat(where(j), " (issuer \"", info.issuer,
                                    "\"): its signature does not verify with that root's key"));
      }
      set->infos_.push_back(std::move(info));
      set->crls_.push_back(std::move((*crls)[j]));
      if (set->crls_.size() > kMaxCrls)
        return Invalid(absl::StrCat("more than ", kMaxCrls, " CRLs"));
    }
  }
  return std::shared_ptr<const CrlSet>(std::move(set));
}

absl::Status CrlSet::AddTo(X509_STORE* store) const {
  if (crls_.empty()) return absl::OkStatus();
  for (const auto& crl : crls_) {
    if (!X509_STORE_add_crl(store, crl.get())) {
      return SslError(absl::StatusCode::kInternal, "adding a CRL to the trust store");
    }
  }
  if (!X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL)) {
    return SslError(absl::StatusCode::kInternal, "turning on CRL checks");
  }
  return absl::OkStatus();
}

bool CrlTolerated(int error) {
  return error == X509_V_ERR_UNABLE_TO_GET_CRL || error == X509_V_ERR_CRL_HAS_EXPIRED ||
         error == X509_V_ERR_CRL_NOT_YET_VALID;
}

std::string SerialHex(const X509* cert) {
  bssl::UniquePtr<BIGNUM> serial(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  if (serial == nullptr) return "(unreadable)";
  bssl::UniquePtr<char> hex(BN_bn2hex(serial.get()));
  return hex == nullptr ? "(unreadable)" : FormatSerial(hex.get());
}

}  // namespace ambit::tls
