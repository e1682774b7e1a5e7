#include "agent/issuance/rate_limit.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace ambit::issuance {
namespace {

// When one more token will be there.
absl::Duration UntilNextToken(double tokens, double rate) {
  if (rate <= 0) return absl::InfiniteDuration();
  // Less a microsecond before rounding up: the refill's floating-point error (0.998 tokens read
  // as 0.99799...) would otherwise add a whole millisecond.
  return absl::Milliseconds(std::ceil((1 - tokens) / rate * 1000 - 1e-3));
}

}  // namespace

SigningRateLimiter::SigningRateLimiter(const Clock* clock, SigningRateOptions options)
    : clock_(clock), options_(options) {
  total_.tokens = options_.total_burst;
  total_.updated = clock_->Now();
}

void SigningRateLimiter::Refill(Bucket& bucket, double rate, double burst, absl::Time now) {
  if (now > bucket.updated) {
    bucket.tokens =
        std::min(burst, bucket.tokens + absl::ToDoubleSeconds(now - bucket.updated) * rate);
  }
  bucket.updated = now;
}

void SigningRateLimiter::ForgetIdleNodes(absl::Time now) {
  for (auto it = nodes_.begin(); it != nodes_.end();) {
    Refill(it->second, options_.node_rate, options_.node_burst, now);
    if (it->second.tokens >= options_.node_burst) {
      it = nodes_.erase(it);
    } else {
      ++it;
    }
  }
}

absl::Status SigningRateLimiter::Admit(const std::string& node, absl::Duration* retry_after) {
  const absl::Time now = clock_->Now();
  absl::Duration unused;
  if (retry_after == nullptr) retry_after = &unused;
  *retry_after = absl::ZeroDuration();
  absl::MutexLock lock(&mu_);
  auto it = nodes_.find(node);
  if (it == nodes_.end()) {
    if (nodes_.size() >= options_.max_nodes) ForgetIdleNodes(now);
    if (nodes_.size() >= options_.max_nodes) {
      *retry_after = absl::InfiniteDuration();
      return absl::ResourceExhaustedError(
          absl::StrCat("certificate signing rate limit: ", nodes_.size(),
                       " nodes are signing at their limit; retry later"));
    }
    it = nodes_.emplace(node, Bucket{options_.node_burst, now}).first;
  }
  Bucket& mine = it->second;
  Refill(mine, options_.node_rate, options_.node_burst, now);
  Refill(total_, options_.total_rate, options_.total_burst, now);
  if (mine.tokens < 1) {
    *retry_after = UntilNextToken(mine.tokens, options_.node_rate);
    return absl::ResourceExhaustedError(
        absl::StrCat("certificate signing rate limit for node ", node, " (", options_.node_rate,
                     " per second, bursts of ", options_.node_burst, ") reached; retry in ",
                     absl::FormatDuration(*retry_after)));
  }
  if (total_.tokens < 1) {
    *retry_after = UntilNextToken(total_.tokens, options_.total_rate);
    return absl::ResourceExhaustedError(
        absl::StrCat("certificate signing rate limit of the CA (", options_.total_rate,
                     " per second for all nodes, bursts of ", options_.total_burst,
                     ") reached; retry in ", absl::FormatDuration(*retry_after)));
  }
  mine.tokens -= 1;
  total_.tokens -= 1;
  return absl::OkStatus();
}

}  // namespace ambit::issuance
