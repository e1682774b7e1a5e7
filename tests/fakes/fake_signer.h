#pragma once

// A BoringSSL test CA and a CsrSigner on top of it, so certificate tests need no ambitd and no
// network. Not thread-safe.

#include <openssl/base.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/tls/cert_manager.h"

namespace ambit::tls::testing {

// A root CA with a generated P-256 key. Leaves start at the clock's current time.
class TestCa {
 public:
  struct Options {
    std::string common_name = "ambit test root";
    std::string organization = "cluster.local";
    bool is_ca = true;  // false: a self-signed certificate without basicConstraints CA:TRUE
    absl::Duration lifetime = absl::Hours(24 * 3650);
  };
  struct LeafOptions {
    absl::Duration lifetime = absl::Hours(24);
    // Put this URI in the leaf instead of the one the CSR asks for.
    std::optional<std::string> uri_override;
    // Certify a freshly generated key instead of the CSR's.
    bool foreign_key = false;
    // Start the leaf this long before the clock's time.
    absl::Duration backdate = absl::ZeroDuration();
  };

  static absl::StatusOr<std::unique_ptr<TestCa>> Create(const Clock* clock, Options options);
  static absl::StatusOr<std::unique_ptr<TestCa>> Create(const Clock* clock) {
    return Create(clock, Options());
  }

  // Checks the CSR's signature and that it asks for exactly one URI, then returns
  // {leaf PEM, root PEM}.
  absl::StatusOr<std::vector<std::string>> Sign(const std::string& csr_pem,
                                                const LeafOptions& options);
  absl::StatusOr<std::vector<std::string>> Sign(const std::string& csr_pem) {
    return Sign(csr_pem, LeafOptions());
  }

  X509* root() const { return root_.get(); }
  const std::string& root_pem() const { return root_pem_; }

  // A PEM CRL of this root revoking `revoked` (their serials), thisUpdate `this_update`,
  // nextUpdate `next_update` (none when nullopt), signed with `signer` (null: the root's key).
  absl::StatusOr<std::string> CrlPem(const std::vector<const X509*>& revoked,
                                     absl::Time this_update, std::optional<absl::Time> next_update,
                                     EVP_PKEY* signer = nullptr) const;

 private:
  TestCa(const Clock* clock, bssl::UniquePtr<EVP_PKEY> key, bssl::UniquePtr<X509> root,
         std::string root_pem)
      : clock_(clock),
        key_(std::move(key)),
        root_(std::move(root)),
        root_pem_(std::move(root_pem)) {}

  const Clock* clock_;
  bssl::UniquePtr<EVP_PKEY> key_;
  bssl::UniquePtr<X509> root_;
  std::string root_pem_;
};

// Records every CSR. In kSign mode it answers at once (re-entering the manager), in kFail mode it
// refuses at once, and in kQueue mode it keeps requests for the test to answer later.
class FakeCsrSigner final : public CsrSigner {
 public:
  enum class Mode { kQueue, kSign, kFail };
  struct Request {
    uint64_t id = 0;
    std::string identity;
    std::string csr_pem;
    absl::Time at;  // the clock's time when it was sent
  };

  FakeCsrSigner(TestCa* ca, const Clock* clock) : ca_(ca), clock_(clock) {}
  // The manager answers go to; set it before the first request.
  void Attach(CertManager* manager) { manager_ = manager; }

  void set_mode(Mode mode) { mode_ = mode; }
  void set_leaf_options(const TestCa::LeafOptions& options) { leaf_options_ = options; }
  void set_failure(absl::Status status) { failure_ = std::move(status); }

  void RequestSigning(uint64_t request_id, const std::string& identity,
                      const std::string& csr_pem) override;

  // Every request ever sent, oldest first.
  const std::vector<Request>& history() const { return history_; }
  // Requests waiting for an answer (kQueue), oldest first.
  size_t queued() const { return queue_.size(); }
  const Request& front() const { return queue_.front(); }

  // Answers the oldest queued request by signing its CSR (with the current leaf options unless
  // given), or by refusing it. Return what the CA did; the manager's reaction is its own.
  absl::Status SignNext();
  absl::Status SignNext(const TestCa::LeafOptions& options);
  void FailNext(absl::Status status);
  // Removes the oldest queued request without answering it.
  Request TakeNext();

 private:
  absl::Status Answer(const Request& request, const TestCa::LeafOptions& options);

  TestCa* ca_;
  const Clock* clock_;
  CertManager* manager_ = nullptr;
  Mode mode_ = Mode::kQueue;
  TestCa::LeafOptions leaf_options_;
  absl::Status failure_ = absl::UnavailableError("fake CA is down");
  std::vector<Request> history_;
  std::deque<Request> queue_;
};

}  // namespace ambit::tls::testing
