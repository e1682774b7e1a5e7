#pragma once

// Bounds how fast a CA signs: a token bucket per node and one for all nodes together, so that
// no node (a bug, a renewal storm, a compromised token) can keep the CA busy for the others.
//
// Thread-safe: CA request threads and the control thread call Admit concurrently.

#include <cstddef>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"

namespace ambit::issuance {

struct SigningRateOptions {
  // Each node may get `node_burst` certificates at once, then `node_rate` per second. A node
  // starting with many identities needs the burst; steady renewal (two per identity and
  // certificate lifetime) needs far less than the rate.
  double node_rate = 5;
  double node_burst = 100;
  // All nodes together.
  double total_rate = 50;
  double total_burst = 500;
  // Nodes tracked at once; past this, idle (full) buckets are forgotten first. A forgotten node
  // starts again with a full bucket, which is what an idle node has anyway.
  size_t max_nodes = 10000;
};

class SigningRateLimiter {
 public:
  // `clock` must outlive the limiter.
  explicit SigningRateLimiter(const Clock* clock, SigningRateOptions options = {});

  // OK and one token taken from both buckets, or RESOURCE_EXHAUSTED (nothing taken) naming the
  // bucket that is empty and when to try again, which also goes to *retry_after when given
  // (InfiniteDuration when no token will come: a zero rate, or every node slot busy). Callers
  // treat that as retryable.
  absl::Status Admit(const std::string& node, absl::Duration* retry_after = nullptr);

 private:
  struct Bucket {
    double tokens = 0;
    absl::Time updated;
  };
  void Refill(Bucket& bucket, double rate, double burst, absl::Time now);
  void ForgetIdleNodes(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Clock* const clock_;
  const SigningRateOptions options_;
  absl::Mutex mu_;
  Bucket total_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Bucket> nodes_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ambit::issuance
