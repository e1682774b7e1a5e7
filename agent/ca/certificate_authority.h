#pragma once

// The built-in certificate authority of ambitd (docs/ARCHITECTURE.md#identity): issues X.509 SVIDs
// for SPIFFE identities from CSRs. Its signing material is either a root it generated itself (kept
// under the state directory) or an operator's intermediate in Istio's `cacerts` layout.
//
// Control plane only: implemented with OpenSSL 3, never BoringSSL
// (docs/ARCHITECTURE.md#process-split).

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"

namespace ambit::ca {

struct CaOptions {
  // A generated root lives in <state_dir>/ca/ (root-cert.pem, root-key.pem).
  std::string state_dir;
  // Optional: a directory in Istio's cacerts plug-in layout (ca-cert.pem, ca-key.pem,
  // root-cert.pem, cert-chain.pem). When it holds any of those files it must hold all four, and
  // they take precedence over the state directory.
  std::string cacerts_dir;
  // The trust domain identities are signed in at first; SetTrustDomain changes it.
  std::string trust_domain = "cluster.local";
  absl::Duration default_leaf_ttl = absl::Hours(24);
  absl::Duration max_leaf_ttl = absl::Hours(24 * 7);
  const Clock* clock = nullptr;  // null: real time. Must outlive the CertificateAuthority.
};

struct SigningMaterial;  // Defined in certificate_authority.cc.

// Thread-safe: the signing material is immutable after Create; concurrent calls to Sign, the other
// methods and SetTrustDomain are fine.
class CertificateAuthority {
 public:
  // Loads the operator's cacerts (verifying that ca-key matches ca-cert, ca-cert is a CA and it
  // chains to root-cert), else the root previously generated in <state_dir>/ca/, else generates
  // a root (ECDSA P-256, 10 years) and stores it there (directory 0700, key 0600, written
  // atomically). Errors name the file and what is wrong with it.
  static absl::StatusOr<std::unique_ptr<CertificateAuthority>> Create(const CaOptions& options);

  ~CertificateAuthority();
  CertificateAuthority(const CertificateAuthority&) = delete;
  CertificateAuthority& operator=(const CertificateAuthority&) = delete;

  // Validates a PEM CSR (at most 64 KiB; self-signature valid; key EC P-256/P-384 or RSA
  // 2048..8192 bits; subjectAltName exactly one URI, equal to `identity`, and nothing else) and
  // issues a leaf SVID for `identity`, which must be a spiffe:// ID in this CA's trust domain.
  // ttl zero: the default lifetime; longer than the maximum: capped (and never past the signing
  // certificate's own expiry). Returns the chain, one PEM certificate per element: the leaf, the
  // intermediates, then the root. InvalidArgument for a bad CSR or identity.
  absl::StatusOr<std::vector<std::string>> Sign(absl::string_view csr_pem,
                                                absl::string_view identity,
                                                absl::Duration ttl) const;

  // The roots to trust, one PEM certificate per element. With cacerts: every certificate in
  // root-cert.pem (a bundle holds several roots during a rotation).
  std::vector<std::string> TrustBundle() const;

  // A certificate for the CA's own gRPC endpoint: a fresh P-256 key and a leaf whose SANs are
  // `dns_names` (an entry that is an IPv4/IPv6 literal becomes an IP SAN). Returns {the leaf
  // followed by any intermediates (not the root), the PKCS#8 private key}, both PEM.
  absl::StatusOr<std::pair<std::string, std::string>> IssueServingCertificate(
      const std::vector<std::string>& dns_names, absl::Duration ttl) const;

  // Identities are signed in `trust_domain` from now on (mesh.yaml's trustDomain changed). The
  // signing material stays: a root serves any trust domain, as Istio's does across a migration.
  // InvalidArgument if the name is not a trust domain; the previous one then stays.
  absl::Status SetTrustDomain(absl::string_view trust_domain);
  std::string trust_domain() const;

  // The signing certificate's subject on one line, e.g. "O = ambit, CN = ambit root CA ...".
  std::string IssuerName() const;

 private:
  explicit CertificateAuthority(std::unique_ptr<const SigningMaterial> material);

  std::unique_ptr<const SigningMaterial> material_;
  mutable absl::Mutex mu_;
  std::string trust_domain_ ABSL_GUARDED_BY(mu_);
};

// For tests and the e2e client side: a fresh P-256 key and a CSR (empty subject) whose
// subjectAltName holds `uris` and `dns` (no extension when both are empty). Returns
// {CSR PEM, PKCS#8 key PEM}. The data plane makes its own CSRs with BoringSSL.
absl::StatusOr<std::pair<std::string, std::string>> MakeCsrForTest(
    const std::vector<std::string>& uris, const std::vector<std::string>& dns = {});

}  // namespace ambit::ca
