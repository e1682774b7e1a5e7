#pragma once

// Workload certificates of the data plane: one key and X.509 SVID per identity with local pods,
// requested when the first such pod arrives, renewed before expiry with a new key, retried with
// back-off, dropped when the last pod leaves, and never served once expired.
//
// Thread-safety: CertManager is single-threaded; the data plane's main thread drives it (AddRef,
// Release, OnSigned, Tick) and posts the CertifiedKey snapshots it gets from Get() to workers.
// A CertifiedKey is immutable and may be shared by any number of threads.

#include <openssl/base.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"

namespace ambit::tls {

enum class CertState {
  kPending,   // first request in flight, no certificate yet
  kValid,     // certificate served, renewal not due yet
  kRenewing,  // certificate still served; a renewal is in flight or waiting to be retried
  kExpired,   // the last certificate expired before a new one arrived; retrying
  kFailed,    // never got a certificate; retrying with back-off (see last_error)
};
const char* CertStateName(CertState state);

// A key and the chain certifying it. Immutable once built; shared by TLS contexts.
struct CertifiedKey {
  std::string identity;
  bssl::UniquePtr<EVP_PKEY> key;
  std::vector<bssl::UniquePtr<X509>> chain;  // leaf first
  absl::Time not_before;
  absl::Time not_after;
  std::string serial_hex;
  std::string issuer;
};

// For the admin API. Certificate fields are empty (and times absl::UnixEpoch()) until the first
// certificate arrives; after that they describe the last one received, even once expired.
struct CertStatus {
  std::string identity;
  CertState state = CertState::kPending;
  std::string serial_hex;
  std::string issuer;
  absl::Time not_before;
  absl::Time not_after;
  std::string last_error;  // why the last request failed; cleared on success
  int refs = 0;            // local pods with this identity
  // The chain served on 15008 (leaf first, as the signer returned it), PEM. Public: what any peer
  // is shown in the handshake; `ambitctl certs --pem` prints it.
  std::string chain_pem;
};

// Sends a CSR to whoever signs (ambitd over IPC in production). The answer arrives later through
// CertManager::OnSigned with the same request id; it may also arrive synchronously, from inside
// RequestSigning.
class CsrSigner {
 public:
  virtual ~CsrSigner() = default;
  virtual void RequestSigning(uint64_t request_id, const std::string& identity,
                              const std::string& csr_pem) = 0;
};

struct CertManagerOptions {
  // Renew when this fraction of the usable lifetime has passed...
  double renew_at = 0.5;
  // ...plus a random fraction of it in [-jitter/2, +jitter/2], so that pods enrolled together do
  // not renew together. Back-off delays get the same relative jitter.
  //
  // The usable lifetime runs from when the certificate arrived (or its notBefore, if later) to
  // its notAfter. Signers backdate notBefore for peers with slow clocks; counting from notBefore
  // would spend part of the schedule in the past and, for short lifetimes, renew at once.
  double jitter = 0.1;
  // Never renew sooner than this after a certificate arrived, whatever lifetime it carries: a
  // signer that issues nearly expired certificates then costs one request per identity per
  // interval instead of a request per event loop turn.
  absl::Duration min_renew_delay = absl::Seconds(5);
  absl::Duration initial_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Minutes(5);
  // An answer that has not arrived after this long counts as a failure (ambitd may have
  // restarted and lost the request); a late answer is then ignored.
  absl::Duration request_timeout = absl::Minutes(1);
  uint64_t seed = 0;  // for the jitter; 0: random
};

class CertManager {
 public:
  // `signer` and `clock` must outlive the manager.
  CertManager(CsrSigner* signer, const Clock* clock, CertManagerOptions options = {});
  CertManager(const CertManager&) = delete;
  CertManager& operator=(const CertManager&) = delete;

  // A local pod with `identity` arrived. The first one creates a key and sends its CSR.
  void AddRef(const std::string& identity);
  // A local pod with `identity` left. The last one drops key, certificate and any request.
  void Release(const std::string& identity);

  // The signer's answer to `request_id`. A chain is accepted if its leaf matches the key of this
  // request, its subjectAltName is exactly the identity, and it is valid now; anything else
  // counts as a failure (back-off, then a new key and CSR). Answers for dropped identities or
  // superseded requests are ignored.
  void OnSigned(uint64_t request_id, absl::StatusOr<std::vector<std::string>> chain_pem);

  // Does whatever is due: marks expired certificates, starts renewals (each with a new key),
  // retries after back-off, times out unanswered requests.
  void Tick();
  // When Tick() next has work; absl::InfiniteFuture() if none.
  absl::Time NextDeadline() const;

  // The certificate to present for `identity`, or null. Never an expired or not-yet-valid one:
  // this checks the clock, not just the state.
  std::shared_ptr<const CertifiedKey> Get(const std::string& identity) const;

  // Every identity with local pods, ordered by identity.
  std::vector<CertStatus> Statuses() const;

 private:
  struct Entry {
    int refs = 0;
    CertState state = CertState::kPending;
    std::shared_ptr<const CertifiedKey> current;  // last certificate received, maybe expired
    std::string last_error;
    // The request in flight (request_id != 0) and the key its CSR was made with.
    uint64_t request_id = 0;
    bssl::UniquePtr<EVP_PKEY> request_key;
    absl::Time request_deadline = absl::InfiniteFuture();
    absl::Time renew_time = absl::InfiniteFuture();  // kValid: when to start renewing
    absl::Time retry_time = absl::InfiniteFuture();  // after a failure, no request in flight
    absl::Duration backoff;                          // delay before the next retry
  };

  void StartRequest(const std::string& identity);
  void Fail(Entry& entry, const std::string& error, absl::Time now);
  void CancelRequest(Entry& entry);
  bool HasUsableCert(const Entry& entry, absl::Time now) const;
  double JitterFraction();  // uniform in [-jitter/2, +jitter/2]
  absl::Duration Jittered(absl::Duration d);

  CsrSigner* const signer_;
  const Clock* const clock_;
  const CertManagerOptions options_;
  std::mt19937_64 rng_;
  uint64_t next_request_id_ = 1;
  std::map<std::string, Entry> entries_;
  std::map<uint64_t, std::string> requests_;  // request id in flight -> identity
};

}  // namespace ambit::tls
