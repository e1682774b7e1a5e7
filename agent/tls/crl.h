#pragma once

// Certificate revocation lists for the trust bundle (`ambitd --crl-file`), as ztunnel applies its
// CRL_PATH: every certificate of a peer's chain is checked against the CRLs of its issuer; a
// certificate whose issuer published no CRL passes (ztunnel: UnknownStatusPolicy::Allow), and a
// CRL past its nextUpdate still counts (ExpirationPolicy::Ignore: a stale list revokes at least
// what it names), as does one whose thisUpdate is ahead of our clock (skew). The check itself is
// BoringSSL's (X509_STORE with CRL_CHECK | CRL_CHECK_ALL: issuer match, signature, serial look-up),
// so nothing here re-implements X.509; the TLS contexts tolerate only the two outcomes above
// (`CrlTolerated`). Immutable once parsed; thread-safe.

#include <openssl/base.h>
#include <openssl/x509.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace ambit::tls {

class TrustBundle;

// Bounds on untrusted input: a CRL file is operator-provided but reaches the data plane.
inline constexpr size_t kMaxCrlPemBytes = 8 << 20;
inline constexpr size_t kMaxCrls = 64;

struct CrlInfo {
  std::string issuer;  // one line, as CertInfo::issuer
  absl::Time this_update;
  std::optional<absl::Time> next_update;
  size_t revoked = 0;           // entries
  bool signed_by_root = false;  // issued by a root of the bundle (signature checked on arrival)
};

class CrlSet {
 public:
  // Parses `pems` (each one or more PEM "X509 CRL" blocks; a string with none adds nothing, as
  // ztunnel treats an empty file) and checks each CRL: well-formed, thisUpdate not after
  // nextUpdate, and, when its issuer is a root of `bundle`, signed by that root (a CRL of an
  // intermediate is checked against it when a chain through it is verified). Errors name the
  // PEM string and the CRL by position.
  static absl::StatusOr<std::shared_ptr<const CrlSet>> Parse(const std::vector<std::string>& pems,
                                                             const TrustBundle& bundle);

  CrlSet(const CrlSet&) = delete;
  CrlSet& operator=(const CrlSet&) = delete;

  size_t size() const { return crls_.size(); }
  const std::vector<CrlInfo>& infos() const { return infos_; }
  // Adds every CRL to `store` and turns revocation checking on for the whole chain; a store left
  // without CRLs (an empty set) is not changed, so no check runs.
  absl::Status AddTo(X509_STORE* store) const;

 private:
  CrlSet() = default;
  std::vector<bssl::UniquePtr<X509_CRL>> crls_;
  std::vector<CrlInfo> infos_;
};

// For a verify callback: whether `error` from X509_verify_cert is one of the CRL outcomes ztunnel
// lets pass (no CRL for that issuer; the CRL's nextUpdate passed or its thisUpdate is still
// ahead, which webpki does not check either: the CRL still applies, BoringSSL goes on to the
// serial look-up).
bool CrlTolerated(int error);

// "serial 0a1b..." of a certificate, lower-case hex as CertInfo::serial_hex; for refusals.
std::string SerialHex(const X509* cert);

}  // namespace ambit::tls
