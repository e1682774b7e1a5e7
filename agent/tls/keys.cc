#include "agent/tls/keys.h"

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <climits>
#include <cstdint>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/common/formats.h"
#include "agent/common/status.h"

namespace ambit::tls {
namespace {

absl::Status Invalid(absl::string_view message) { return absl::InvalidArgumentError(message); }

absl::Status CheckIdentitySyntax(absl::string_view identity) {
  if (!absl::StartsWith(identity, "spiffe://")) {
    return Invalid(absl::StrCat("identity \"", identity, "\" is not a spiffe:// URI"));
  }
  if (identity.size() > kMaxIdentityLength) {
    return Invalid(absl::StrCat("identity is ", identity.size(), " bytes, longer than the ",
                                kMaxIdentityLength, " a SPIFFE ID may have"));
  }
  for (char c : identity) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) {
      return Invalid(absl::StrCat("identity \"", identity,
                                  "\" contains a space, control or non-ASCII character"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> BioContents(BIO* bio) {
  const uint8_t* data = nullptr;
  size_t len = 0;
  if (!BIO_mem_contents(bio, &data, &len)) {
    return SslError(absl::StatusCode::kInternal, "reading memory BIO");
  }
  return std::string(reinterpret_cast<const char*>(data), len);
}

absl::StatusOr<bssl::UniquePtr<BIO>> ReadOnlyBio(absl::string_view data) {
  if (data.size() > static_cast<size_t>(INT_MAX)) return Invalid("input too large");
  bssl::UniquePtr<BIO> bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
  if (bio == nullptr) return SslError(absl::StatusCode::kResourceExhausted, "BIO_new_mem_buf");
  return bio;
}

absl::StatusOr<RequestedNames> SplitNames(const GENERAL_NAMES* names) {
  RequestedNames out;
  for (size_t i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
    int type = 0;
    const void* value = GENERAL_NAME_get0_value(name, &type);
    if (type != GEN_URI) {
      ++out.other_names;
      continue;
    }
    const auto* uri = static_cast<const ASN1_IA5STRING*>(value);
    out.uris.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                          static_cast<size_t>(ASN1_STRING_length(uri)));
  }
  return out;
}

// `crit` as X509V3_get_d2i reports it: -1 absent, -2 present more than once.
absl::StatusOr<RequestedNames> NamesFromD2i(GENERAL_NAMES* raw, int crit, absl::string_view where) {
  bssl::UniquePtr<GENERAL_NAMES> names(raw);
  if (names == nullptr) {
    ERR_clear_error();
    if (crit == -1) return Invalid(absl::StrCat(where, " has no subjectAltName"));
    if (crit == -2) return Invalid(absl::StrCat(where, " has more than one subjectAltName"));
    return Invalid(absl::StrCat(where, " has an unparsable subjectAltName"));
  }
  return SplitNames(names.get());
}

}  // namespace

absl::Status SslError(absl::StatusCode code, absl::string_view what) {
  std::string message(what);
  const char* sep = ": ";
  while (uint32_t err = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(err, buf, sizeof(buf));
    absl::StrAppend(&message, sep, buf);
    sep = "; ";
  }
  return absl::Status(code, message);
}

absl::StatusOr<bssl::UniquePtr<EVP_PKEY>> GenerateP256Key() {
  bssl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_EC, nullptr));
  if (ctx == nullptr || !EVP_PKEY_keygen_init(ctx.get()) ||
      !EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx.get(), NID_X9_62_prime256v1)) {
    return SslError(absl::StatusCode::kInternal, "setting up P-256 key generation");
  }
  EVP_PKEY* raw = nullptr;
  if (!EVP_PKEY_keygen(ctx.get(), &raw)) {
    return SslError(absl::StatusCode::kInternal, "generating a P-256 key");
  }
  return bssl::UniquePtr<EVP_PKEY>(raw);
}

absl::StatusOr<std::string> BuildCsrPem(EVP_PKEY* key, absl::string_view identity) {
  AMBIT_RETURN_IF_ERROR(CheckIdentitySyntax(identity));
  if (key == nullptr) return Invalid("no key to build a CSR with");

  bssl::UniquePtr<X509_REQ> req(X509_REQ_new());
  if (req == nullptr || !X509_REQ_set_version(req.get(), X509_REQ_VERSION_1) ||
      !X509_REQ_set_pubkey(req.get(), key)) {
    return SslError(absl::StatusCode::kInternal, "building CSR");
  }

  // The subject stays empty: the SPIFFE ID is the only identifying field, and RFC 5280 wants the
  // subjectAltName critical when the subject is empty.
  bssl::UniquePtr<ASN1_IA5STRING> uri(ASN1_IA5STRING_new());
  bssl::UniquePtr<GENERAL_NAME> name(GENERAL_NAME_new());
  bssl::UniquePtr<GENERAL_NAMES> names(sk_GENERAL_NAME_new_null());
  if (uri == nullptr || name == nullptr || names == nullptr ||
      !ASN1_STRING_set(uri.get(), identity.data(), static_cast<int>(identity.size()))) {
    return SslError(absl::StatusCode::kInternal, "building subjectAltName");
  }
  GENERAL_NAME_set0_value(name.get(), GEN_URI, uri.release());
  if (!sk_GENERAL_NAME_push(names.get(), name.get())) {
    return SslError(absl::StatusCode::kInternal, "building subjectAltName");
  }
  name.release();  // now owned by `names`

  STACK_OF(X509_EXTENSION)* raw_exts = nullptr;
  const int added =
      X509V3_add1_i2d(&raw_exts, NID_subject_alt_name, names.get(), /*crit=*/1, X509V3_ADD_DEFAULT);
  bssl::UniquePtr<STACK_OF(X509_EXTENSION)> exts(raw_exts);
  if (added != 1 || !X509_REQ_add_extensions(req.get(), exts.get())) {
    return SslError(absl::StatusCode::kInternal, "adding subjectAltName to CSR");
  }
  if (!X509_REQ_sign(req.get(), key, EVP_sha256())) {
    return SslError(absl::StatusCode::kInternal, "signing CSR");
  }

  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || !PEM_write_bio_X509_REQ(bio.get(), req.get())) {
    return SslError(absl::StatusCode::kInternal, "writing CSR as PEM");
  }
  return BioContents(bio.get());
}

absl::StatusOr<bssl::UniquePtr<X509_REQ>> ParseCsrPem(absl::string_view pem) {
  AMBIT_ASSIGN_OR_RETURN(bssl::UniquePtr<BIO> bio, ReadOnlyBio(pem));
  bssl::UniquePtr<X509_REQ> req(PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr));
  if (req == nullptr) {
    return SslError(absl::StatusCode::kInvalidArgument, "parsing PEM certificate request");
  }
  bssl::UniquePtr<EVP_PKEY> pub(X509_REQ_get_pubkey(req.get()));
  if (pub == nullptr) {
    return SslError(absl::StatusCode::kInvalidArgument, "certificate request has no usable key");
  }
  if (X509_REQ_verify(req.get(), pub.get()) != 1) {
    return SslError(absl::StatusCode::kInvalidArgument,
                    "certificate request signature does not verify with its own key");
  }
  return req;
}

absl::StatusOr<RequestedNames> CsrSubjectAltNames(X509_REQ* csr) {
  bssl::UniquePtr<STACK_OF(X509_EXTENSION)> exts(X509_REQ_get_extensions(csr));
  if (exts == nullptr) {
    ERR_clear_error();
    return Invalid("certificate request asks for no extensions, so no subjectAltName");
  }
  int crit = 0;
  auto* names =
      static_cast<GENERAL_NAMES*>(X509V3_get_d2i(exts.get(), NID_subject_alt_name, &crit, nullptr));
  return NamesFromD2i(names, crit, "certificate request");
}

absl::StatusOr<std::vector<bssl::UniquePtr<X509>>> ParsePemChain(absl::string_view pem) {
  if (pem.size() > kMaxChainPemBytes) {
    return Invalid(absl::StrCat("certificate chain is ", pem.size(), " bytes, more than the ",
                                kMaxChainPemBytes, " accepted"));
  }
  AMBIT_ASSIGN_OR_RETURN(bssl::UniquePtr<BIO> bio, ReadOnlyBio(pem));
  std::vector<bssl::UniquePtr<X509>> chain;
  while (true) {
    bssl::UniquePtr<X509> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (cert == nullptr) {
      const uint32_t err = ERR_peek_last_error();
      if (!chain.empty() && ERR_GET_LIB(err) == ERR_LIB_PEM &&
          ERR_GET_REASON(err) == PEM_R_NO_START_LINE) {
        ERR_clear_error();  // clean end of input
        break;
      }
      return SslError(absl::StatusCode::kInvalidArgument,
                      absl::StrCat("parsing PEM certificate #", chain.size() + 1, " of chain"));
    }
    chain.push_back(std::move(cert));
    if (chain.size() > kMaxChainCertificates) {
      return Invalid(
          absl::StrCat("certificate chain has more than ", kMaxChainCertificates, " certificates"));
    }
  }
  return chain;
}

absl::StatusOr<std::vector<bssl::UniquePtr<X509>>> ParsePemChain(
    const std::vector<std::string>& pems) {
  std::vector<bssl::UniquePtr<X509>> chain;
  for (const std::string& pem : pems) {
    AMBIT_ASSIGN_OR_RETURN(auto part, ParsePemChain(absl::string_view(pem)));
    for (auto& cert : part) chain.push_back(std::move(cert));
    if (chain.size() > kMaxChainCertificates) {
      return Invalid(
          absl::StrCat("certificate chain has more than ", kMaxChainCertificates, " certificates"));
    }
  }
  if (chain.empty()) return Invalid("certificate chain is empty");
  return chain;
}

std::string CertToPem(X509* cert) {
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || !PEM_write_bio_X509(bio.get(), cert)) return "";
  auto pem = BioContents(bio.get());
  return pem.ok() ? *std::move(pem) : "";
}

absl::StatusOr<RequestedNames> CertSubjectAltNames(X509* cert) {
  int crit = 0;
  auto* names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, &crit, nullptr));
  return NamesFromD2i(names, crit, "certificate");
}

absl::Status CheckLeaf(const std::vector<bssl::UniquePtr<X509>>& chain, EVP_PKEY* key,
                       absl::string_view identity, absl::Time now) {
  if (chain.empty()) return Invalid("certificate chain is empty");
  X509* leaf = chain.front().get();
  if (key == nullptr || X509_check_private_key(leaf, key) != 1) {
    ERR_clear_error();
    return Invalid("leaf certificate's public key does not match the key its CSR was made with");
  }
  AMBIT_ASSIGN_OR_RETURN(RequestedNames names, CertSubjectAltNames(leaf));
  if (names.uris.size() != 1 || names.other_names != 0 || names.uris[0] != identity) {
    std::string got = names.uris.empty() ? "no URI" : absl::StrCat("URI ", names.uris[0]);
    if (names.uris.size() > 1) absl::StrAppend(&got, " and ", names.uris.size() - 1, " more URIs");
    if (names.other_names > 0) absl::StrAppend(&got, " and ", names.other_names, " other names");
    return absl::PermissionDeniedError(
        absl::StrCat("leaf certificate is for ", got, ", expected exactly the URI ", identity));
  }
  if (X509_check_ca(leaf) != 0) {
    return Invalid("leaf certificate is a CA certificate; a workload certificate must not be");
  }
  AMBIT_ASSIGN_OR_RETURN(CertInfo info, DescribeCert(leaf));
  if (now < info.not_before) {
    return absl::FailedPreconditionError(absl::StrCat("leaf certificate is not valid before ",
                                                      FormatTimestamp(info.not_before), " (now ",
                                                      FormatTimestamp(now), "); check clocks"));
  }
  if (now >= info.not_after) {
    return absl::FailedPreconditionError(
        absl::StrCat("leaf certificate expired at ", FormatTimestamp(info.not_after)));
  }
  return absl::OkStatus();
}

absl::StatusOr<absl::Time> Asn1TimeToAbsl(const ASN1_TIME* t) {
  // This BoringSSL predates ASN1_TIME_to_posix; a difference from the epoch is exact.
  bssl::UniquePtr<ASN1_TIME> epoch(ASN1_TIME_set(nullptr, 0));
  int days = 0;
  int seconds = 0;
  if (t == nullptr || epoch == nullptr || !ASN1_TIME_diff(&days, &seconds, epoch.get(), t)) {
    return SslError(absl::StatusCode::kInvalidArgument, "decoding certificate time");
  }
  return absl::UnixEpoch() + absl::Hours(24) * static_cast<int64_t>(days) + absl::Seconds(seconds);
}

namespace {

absl::StatusOr<std::string> NameOneLine(const X509_NAME* name) {
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_ONELINE) < 0) {
    return SslError(absl::StatusCode::kInternal, "printing certificate name");
  }
  return BioContents(bio.get());
}

}  // namespace

absl::StatusOr<CertInfo> DescribeCert(const X509* cert) {
  CertInfo info;
  bssl::UniquePtr<BIGNUM> serial(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  if (serial == nullptr) {
    return SslError(absl::StatusCode::kInvalidArgument, "decoding certificate serial number");
  }
  bssl::UniquePtr<char> hex(BN_bn2hex(serial.get()));
  if (hex == nullptr) return SslError(absl::StatusCode::kInternal, "printing serial number");
  info.serial_hex = FormatSerial(hex.get());
  AMBIT_ASSIGN_OR_RETURN(info.not_before, Asn1TimeToAbsl(X509_get0_notBefore(cert)));
  AMBIT_ASSIGN_OR_RETURN(info.not_after, Asn1TimeToAbsl(X509_get0_notAfter(cert)));
  AMBIT_ASSIGN_OR_RETURN(info.subject, NameOneLine(X509_get_subject_name(cert)));
  AMBIT_ASSIGN_OR_RETURN(info.issuer, NameOneLine(X509_get_issuer_name(cert)));
  return info;
}

}  // namespace ambit::tls
