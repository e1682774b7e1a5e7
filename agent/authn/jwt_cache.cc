#include "agent/authn/jwt_cache.h"

#include <limits>
#include <utility>

namespace ambit::authn {

bool VerifiedJwtCache::Expired(const Jwt& jwt, int64_t now) {
  // CheckTime's rule: once it answers kExpired the entry can never serve again.
  if (jwt.exp == 0 || jwt.exp >= std::numeric_limits<uint64_t>::max() - kClockSkewSeconds) {
    return false;
  }
  const uint64_t t = now < 0 ? 0 : static_cast<uint64_t>(now);
  return t > jwt.exp + kClockSkewSeconds;
}

VerifiedJwtCache::List::iterator VerifiedJwtCache::Lookup(absl::string_view token, int64_t now) {
  auto it = index_.find(token);
  if (it == index_.end()) return lru_.end();
  List::iterator entry = it->second;
  if (Expired(*entry->jwt, now)) {
    index_.erase(it);
    lru_.erase(entry);
    return lru_.end();
  }
  lru_.splice(lru_.begin(), lru_, entry);
  return entry;
}

const VerifiedJwtCache::Entry* VerifiedJwtCache::Find(absl::string_view token, const Jwks* keys,
                                                      int64_t now) {
  List::iterator entry = Lookup(token, now);
  if (entry == lru_.end() || entry->keys.get() != keys) {
    ++misses_;
    return nullptr;
  }
  ++hits_;
  return &*entry;
}

std::shared_ptr<const Jwt> VerifiedJwtCache::FindParsed(absl::string_view token, int64_t now) {
  List::iterator entry = Lookup(token, now);
  return entry == lru_.end() ? nullptr : entry->jwt;
}

void VerifiedJwtCache::Insert(std::shared_ptr<const Jwt> jwt, std::shared_ptr<const Jwks> keys,
                              std::string detail, int64_t now) {
  if (jwt == nullptr || keys == nullptr || Expired(*jwt, now)) return;
  if (auto it = index_.find(jwt->token); it != index_.end()) {
    List::iterator old = it->second;
    index_.erase(it);
    lru_.erase(old);
  }
  while (lru_.size() >= capacity_) {
    index_.erase(lru_.back().jwt->token);
    lru_.pop_back();
  }
  lru_.push_front(Entry{std::move(jwt), std::move(keys), std::move(detail)});
  index_.emplace(lru_.front().jwt->token, lru_.begin());
}

}  // namespace ambit::authn
