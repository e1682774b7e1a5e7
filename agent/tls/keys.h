#pragma once

// Key pairs, CSRs and certificate chains for workload identities (X.509 SVIDs), on BoringSSL.
// Private keys are generated here and never serialized: only CSRs leave this process, and only
// certificate chains come back. Stateless functions; safe to call from any thread.

#include <openssl/base.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace ambit::tls {

// Longest SPIFFE ID accepted (the SPIFFE specification's limit for URIs).
inline constexpr size_t kMaxIdentityLength = 2048;
// Limits on a chain handed to ParsePemChain: it comes from another process.
inline constexpr size_t kMaxChainPemBytes = 1 << 20;
inline constexpr size_t kMaxChainCertificates = 16;

// A fresh ECDSA P-256 key.
absl::StatusOr<bssl::UniquePtr<EVP_PKEY>> GenerateP256Key();

// A PEM "CERTIFICATE REQUEST" for `identity` (a spiffe:// URI), signed with SHA-256 by `key`:
// an empty subject and one extension, a critical subjectAltName holding exactly that URI.
absl::StatusOr<std::string> BuildCsrPem(EVP_PKEY* key, absl::string_view identity);

// Parses a PEM CSR and checks its self-signature.
absl::StatusOr<bssl::UniquePtr<X509_REQ>> ParseCsrPem(absl::string_view pem);

// The URI entries of the subjectAltName a CSR requests, and the number of entries of any other
// type (DNS, IP, email, ...) next to them.
struct RequestedNames {
  std::vector<std::string> uris;
  int other_names = 0;
};
absl::StatusOr<RequestedNames> CsrSubjectAltNames(X509_REQ* csr);

// One or more PEM certificates, in order. Fails on no certificate, on anything unparsable, and
// beyond kMaxChainPemBytes / kMaxChainCertificates.
absl::StatusOr<std::vector<bssl::UniquePtr<X509>>> ParsePemChain(absl::string_view pem);
// The same over several PEM strings (each with one or more certificates), concatenated.
absl::StatusOr<std::vector<bssl::UniquePtr<X509>>> ParsePemChain(
    const std::vector<std::string>& pems);

std::string CertToPem(X509* cert);

// The URI entries of a certificate's subjectAltName and the count of entries of other types.
absl::StatusOr<RequestedNames> CertSubjectAltNames(X509* cert);

// Checks that `chain` is usable as the SVID for `identity` with `key` at `now`: the leaf matches
// the private key, its subjectAltName is exactly the URI `identity`, it is not a CA, and
// notBefore <= now < notAfter. Does not verify the chain against a trust bundle.
absl::Status CheckLeaf(const std::vector<bssl::UniquePtr<X509>>& chain, EVP_PKEY* key,
                       absl::string_view identity, absl::Time now);

struct CertInfo {
  std::string serial_hex;  // lowercase hex, no leading zeros, as BN_bn2hex writes it
  absl::Time not_before;
  absl::Time not_after;
  std::string subject;  // one line, e.g. "O = cluster.local, CN = root"
  std::string issuer;
};
absl::StatusOr<CertInfo> DescribeCert(const X509* cert);

// ASN1_TIME (UTCTime or GeneralizedTime) to absl::Time, to the second.
absl::StatusOr<absl::Time> Asn1TimeToAbsl(const ASN1_TIME* t);

// The BoringSSL error queue, drained, as "what: reason; reason". For this module and its fakes.
absl::Status SslError(absl::StatusCode code, absl::string_view what);

}  // namespace ambit::tls
