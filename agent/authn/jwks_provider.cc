#include "agent/authn/jwks_provider.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace ambit::authn {

void JwksCache::Track(const std::string& uri, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  entries_[uri].timeout = timeout;
}

void JwksCache::Untrack(const std::string& uri) {
  absl::MutexLock lock(&mu_);
  entries_.erase(uri);
}

std::vector<std::string> JwksCache::Tracked() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [uri, e] : entries_) out.push_back(uri);
  return out;
}

int JwksCache::RefreshDue() {
  std::vector<std::pair<std::string, absl::Duration>> due;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    for (const auto& [uri, e] : entries_) {
      if (e.next <= now) due.emplace_back(uri, e.timeout);
    }
  }
  int failures = 0;
  // The fetches run without the lock: a slow server never holds up Get on the workers.
  for (const auto& [uri, timeout] : due) {
    absl::StatusOr<std::string> body = fetcher_->Fetch(uri, timeout);
    absl::StatusOr<Jwks> parsed =
        body.ok() ? ParseJwks(*body) : absl::StatusOr<Jwks>(body.status());
    const absl::Time now = clock_->Now();
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(uri);
    if (it == entries_.end()) continue;  // untracked while the fetch ran
    Entry& e = it->second;
    if (parsed.ok()) {
      e.keys = std::make_shared<const Jwks>(*std::move(parsed));
      e.fetched = now;
      e.next = now + options_.refresh_interval;
      e.problem.clear();
    } else {
      ++failures;
      e.next = now + options_.retry_interval;
      e.problem = body.ok() ? absl::StrCat("the JWKS from ", uri, " ", parsed.status().message())
                            : absl::StrCat("fetching ", uri, " failed: ", body.status().message());
    }
  }
  return failures;
}

absl::Time JwksCache::NextRefresh() const {
  absl::MutexLock lock(&mu_);
  absl::Time next = absl::InfiniteFuture();
  for (const auto& [uri, e] : entries_) next = std::min(next, e.next);
  return next;
}

std::shared_ptr<const Jwks> JwksCache::Get(const std::string& uri) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(uri);
  if (it == entries_.end() || it->second.keys == nullptr) return nullptr;
  if (clock_->Now() - it->second.fetched > options_.max_age) return nullptr;
  return it->second.keys;
}

std::string JwksCache::Problem(const std::string& uri) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(uri);
  if (it == entries_.end()) return absl::StrCat(uri, " is not tracked");
  const Entry& e = it->second;
  if (e.keys != nullptr && clock_->Now() - e.fetched <= options_.max_age) return "";
  if (e.keys != nullptr) return absl::StrCat("the last good key set is too old; ", e.problem);
  return e.problem;
}

}  // namespace ambit::authn
