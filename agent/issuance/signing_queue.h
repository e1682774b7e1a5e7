#pragma once

// Runs Signer::Sign calls on a few threads, so that a slow or hung CA (each call waits up to its
// deadline) delays the identity it is signing, not every identity queued behind it.
//
// Per identity at most one call runs at a time: a request for an identity whose earlier request
// still waits replaces it (the earlier one is answered ABORTED at once), and one for an identity
// being signed waits for that call to end. Waiting requests start in arrival order.
//
// Thread-safe. Callbacks run on a signing thread (or, for ABORTED, on the submitting thread):
// they should only hand the result to the owner's event loop.

#include <deque>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/issuance/signer.h"

namespace ambit::issuance {

class SigningQueue {
 public:
  using Done = std::function<void(absl::StatusOr<std::vector<std::string>>)>;

  // `signer` must outlive the queue. max_in_flight >= 1 Sign calls run at once.
  SigningQueue(Signer* signer, int max_in_flight);
  // Drops waiting requests unanswered and waits for running calls (each ends by its deadline).
  ~SigningQueue();
  SigningQueue(const SigningQueue&) = delete;
  SigningQueue& operator=(const SigningQueue&) = delete;

  void Submit(const std::string& identity, std::string csr_pem, absl::Duration ttl, Done done);

  // Sign calls running now, and requests waiting; for tests and metrics.
  size_t running() const;
  size_t waiting() const;

 private:
  struct Job {
    std::string csr_pem;
    absl::Duration ttl;
    Done done;
  };
  void Work();
  bool HasRunnable() const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  Signer* const signer_;
  mutable absl::Mutex mu_;
  std::deque<std::string> order_ ABSL_GUARDED_BY(mu_);       // identities waiting, oldest first
  std::map<std::string, Job> waiting_ ABSL_GUARDED_BY(mu_);  // one per identity
  std::set<std::string> running_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace ambit::issuance
