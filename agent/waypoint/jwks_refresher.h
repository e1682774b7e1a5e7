#pragma once

// Keeps the jwksUri key sets of the RequestAuthentication rules fresh: one background thread that
// fetches whatever the JwksCache says is due (JwksCache::RefreshDue) and sleeps until the next
// refresh (NextRefresh), or until the rules change. Workers never wait on it: they read the
// cache's current set (JwksCache::Get, which never blocks on the network) and a URI without one
// rejects its tokens ("Jwks remote fetch is failed"), as Istio does.
//
// Fetches are blocking (the fetcher's own deadline, each rule's `timeout`), so Stop can take up
// to one fetch timeout.
//
// Thread-safety: SetRules and Stop may be called from any thread.

#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/authn/jwks_provider.h"
#include "agent/authn/model.h"
#include "agent/common/clock.h"

namespace ambit::waypoint {

class JwksRefresher {
 public:
  // cache and clock must outlive the refresher. max_sleep bounds one wait, so a clock that jumps
  // (or a cache whose due time moved without SetRules) is noticed within it.
  JwksRefresher(authn::JwksCache* cache, const Clock* clock,
                absl::Duration max_sleep = absl::Seconds(30));
  ~JwksRefresher();
  JwksRefresher(const JwksRefresher&) = delete;
  JwksRefresher& operator=(const JwksRefresher&) = delete;

  // The configuration changed: tracks every jwksUri of these policies (with the longest timeout
  // of the rules naming it), stops tracking those no longer named, and wakes the thread so new
  // URIs are fetched now.
  void SetRules(const std::vector<authn::RequestAuthentication>& policies) ABSL_LOCKS_EXCLUDED(mu_);

  // Ends the thread and joins it; idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

  // Rounds of RefreshDue run so far (tests and explanations).
  int rounds() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Run();

  authn::JwksCache* const cache_;
  const Clock* const clock_;
  const absl::Duration max_sleep_;
  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  int rounds_ ABSL_GUARDED_BY(mu_) = 0;
  // The URIs this refresher asked the cache to track, so SetRules untracks only its own.
  std::map<std::string, absl::Duration> tracked_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace ambit::waypoint
