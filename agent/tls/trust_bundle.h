#pragma once

// The set of root certificates peers' chains must lead to. Several roots at once, so a root can
// be rotated without an outage: add the new one, move workloads over, remove the old one.
// Immutable once created; safe to share between threads.

#include <openssl/base.h>
#include <openssl/x509.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/tls/keys.h"

namespace ambit::tls {

class TrustBundle {
 public:
  // Each string holds one or more PEM certificates. Every certificate must be a CA
  // (basicConstraints CA:TRUE); duplicates are kept once. An empty bundle is an error.
  static absl::StatusOr<std::unique_ptr<TrustBundle>> Create(const std::vector<std::string>& pems);

  TrustBundle(const TrustBundle&) = delete;
  TrustBundle& operator=(const TrustBundle&) = delete;

  size_t size() const { return roots_.size(); }
  const std::vector<bssl::UniquePtr<X509>>& roots() const { return roots_; }
  // Serial, validity, subject and issuer of each root, for the admin API.
  const std::vector<CertInfo>& infos() const { return infos_; }

  // A new store holding every root, for a TLS context to verify peers with.
  absl::StatusOr<bssl::UniquePtr<X509_STORE>> NewStore() const;

  // Verifies `chain` (leaf first, then any intermediates) against the roots at `now`.
  absl::Status Verify(const std::vector<bssl::UniquePtr<X509>>& chain, absl::Time now) const;

 private:
  TrustBundle(std::vector<bssl::UniquePtr<X509>> roots, std::vector<CertInfo> infos)
      : roots_(std::move(roots)), infos_(std::move(infos)) {}

  std::vector<bssl::UniquePtr<X509>> roots_;
  std::vector<CertInfo> infos_;
};

}  // namespace ambit::tls
