#include "agent/waypoint/jwks_refresher.h"

#include <algorithm>

#include "agent/common/log.h"

namespace ambit::waypoint {

JwksRefresher::JwksRefresher(authn::JwksCache* cache, const Clock* clock, absl::Duration max_sleep)
    : cache_(cache), clock_(clock), max_sleep_(max_sleep) {
  thread_ = std::thread([this] { Run(); });
}

JwksRefresher::~JwksRefresher() { Stop(); }

void JwksRefresher::SetRules(const std::vector<authn::RequestAuthentication>& policies) {
  std::map<std::string, absl::Duration> wanted;
  for (const authn::RequestAuthentication& p : policies) {
    for (const authn::JwtRule& r : p.jwt_rules) {
      if (r.jwks_uri.empty() || !r.jwks.empty()) continue;  // inline keys need no fetch
      absl::Duration& t = wanted[r.jwks_uri];
      t = std::max(t, r.timeout);
    }
  }
  absl::MutexLock lock(&mu_);
  for (const auto& [uri, timeout] : tracked_) {
    if (!wanted.contains(uri)) cache_->Untrack(uri);
  }
  for (const auto& [uri, timeout] : wanted) cache_->Track(uri, timeout);
  tracked_ = std::move(wanted);
  wake_ = true;
}

void JwksRefresher::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

int JwksRefresher::rounds() const {
  absl::MutexLock lock(&mu_);
  return rounds_;
}

void JwksRefresher::Run() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      const absl::Duration wait =
          std::clamp(cache_->NextRefresh() - clock_->Now(), absl::ZeroDuration(), max_sleep_);
      mu_.AwaitWithTimeout(
          absl::Condition(
              +[](JwksRefresher* r) ABSL_NO_THREAD_SAFETY_ANALYSIS { return r->stop_ || r->wake_; },
              this),
          wait);
      if (stop_) return;
      wake_ = false;
    }
    // Without the lock: a slow fetch never holds up SetRules.
    const int failures = cache_->RefreshDue();
    if (failures > 0) {
      AMBIT_LOG("waypoint", Debug) << failures << " jwksUri fetch(es) failed; retried later";
    }
    absl::MutexLock lock(&mu_);
    ++rounds_;
  }
}

}  // namespace ambit::waypoint
