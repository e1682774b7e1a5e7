#pragma once

// Internal to agent/ca (and its tests): owners for OpenSSL 3 objects and the PEM, file and error
// helpers the CA shares. OpenSSL 3 only; this directory must never see BoringSSL headers.

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/types.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace ambit::ca::internal {

template <auto kFree>
struct OpenSslDeleter {
  template <typename T>
  void operator()(T* p) const {
    kFree(p);
  }
};
template <typename T, auto kFree>
using OpenSslPtr = std::unique_ptr<T, OpenSslDeleter<kFree>>;

using BioPtr = OpenSslPtr<BIO, BIO_free_all>;
using BignumPtr = OpenSslPtr<BIGNUM, BN_free>;
using EvpPkeyPtr = OpenSslPtr<EVP_PKEY, EVP_PKEY_free>;
using X509Ptr = OpenSslPtr<X509, X509_free>;
using X509NamePtr = OpenSslPtr<X509_NAME, X509_NAME_free>;
using X509ReqPtr = OpenSslPtr<X509_REQ, X509_REQ_free>;
using X509StorePtr = OpenSslPtr<X509_STORE, X509_STORE_free>;
using X509StoreCtxPtr = OpenSslPtr<X509_STORE_CTX, X509_STORE_CTX_free>;
using X509ExtensionPtr = OpenSslPtr<X509_EXTENSION, X509_EXTENSION_free>;
using Asn1IntegerPtr = OpenSslPtr<ASN1_INTEGER, ASN1_INTEGER_free>;
using Asn1BitStringPtr = OpenSslPtr<ASN1_BIT_STRING, ASN1_BIT_STRING_free>;
using Asn1OctetStringPtr = OpenSslPtr<ASN1_OCTET_STRING, ASN1_OCTET_STRING_free>;
using Asn1Ia5StringPtr = OpenSslPtr<ASN1_IA5STRING, ASN1_IA5STRING_free>;
using BasicConstraintsPtr = OpenSslPtr<BASIC_CONSTRAINTS, BASIC_CONSTRAINTS_free>;
using AuthorityKeyIdPtr = OpenSslPtr<AUTHORITY_KEYID, AUTHORITY_KEYID_free>;
using GeneralNamePtr = OpenSslPtr<GENERAL_NAME, GENERAL_NAME_free>;
using GeneralNamesPtr = OpenSslPtr<GENERAL_NAMES, GENERAL_NAMES_free>;
using ExtendedKeyUsagePtr = OpenSslPtr<EXTENDED_KEY_USAGE, EXTENDED_KEY_USAGE_free>;

// Stacks own their elements; these free both.
struct X509StackDeleter {
  void operator()(STACK_OF(X509) * s) const { sk_X509_pop_free(s, X509_free); }
};
using X509StackPtr = std::unique_ptr<STACK_OF(X509), X509StackDeleter>;
struct X509ExtensionStackDeleter {
  void operator()(STACK_OF(X509_EXTENSION) * s) const {
    sk_X509_EXTENSION_pop_free(s, X509_EXTENSION_free);
  }
};
using X509ExtensionStackPtr = std::unique_ptr<STACK_OF(X509_EXTENSION), X509ExtensionStackDeleter>;

// `what` followed by the reasons OpenSSL queued on this thread (the queue is emptied).
absl::Status OpenSslError(absl::StatusCode code, absl::string_view what);

// Every certificate in `pem`, in order. `source` names the input in errors. An input without any
// certificate is an error unless allow_empty.
absl::StatusOr<std::vector<X509Ptr>> ParseCertificates(absl::string_view pem,
                                                       absl::string_view source,
                                                       bool allow_empty = false);
// An unencrypted private key in PEM (PKCS#8 or the traditional EC/RSA forms). Never prompts.
absl::StatusOr<EvpPkeyPtr> ParsePrivateKey(absl::string_view pem, absl::string_view source);

// One PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----).
absl::StatusOr<X509ReqPtr> ParseCsr(absl::string_view pem);

std::string CertificateToPem(const X509* cert);
std::string CsrToPem(const X509_REQ* csr);
// PKCS#8, unencrypted. The caller owns (and should wipe) the result.
absl::StatusOr<std::string> PrivateKeyToPem(const EVP_PKEY* key);

// A fresh ECDSA P-256 key.
absl::StatusOr<EvpPkeyPtr> GenerateP256Key();

// The notBefore / notAfter of a certificate.
absl::StatusOr<absl::Time> Asn1TimeToTime(const ASN1_TIME* time);

// A file's contents, refusing files larger than max_bytes. NotFound names the path.
absl::StatusOr<std::string> ReadFile(const std::string& path, size_t max_bytes);
// Writes a temporary file beside `path` with `mode`, fsyncs it, renames it over `path` and fsyncs
// the directory, so a crash leaves either the old file or the new one, never a partial one.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view data, mode_t mode);

}  // namespace ambit::ca::internal
