#pragma once

// Tokens whose signature has already been verified, so that a client sending the same bearer
// token on every request costs one JSON parse and one signature check, not one per request
// (Envoy's jwt_authn has the same cache, `jwt_cache_config`). RS256 verification is the largest
// cost of a JWT request at the waypoint (Debian's BoringSSL has no RSA assembly).
//
// What an entry proves, and nothing more: these exact token bytes parse to `jwt`, and their
// signature verifies under the key set `keys` (the same object, not an equal one). Everything a
// rule or the clock decides (issuer, audiences, exp, nbf, whether the key set is still the one in
// force) is decided again by the Authenticator on every use, so the cache can only skip work the
// Authenticator would repeat with the same outcome:
//   - a new key set (a configuration with another inline jwks, a jwksUri refresh, a rotation that
//     removed the key) is another object: the entry does not match it and is replaced;
//   - an entry is dropped once its token is past `exp` (with Envoy's clock skew), and the least
//     recently used entry goes when the cache is full;
//   - only verified tokens are kept; a failure is never cached.
// An entry holds its key set alive, so the identity of a key set is never that of a newer one
// allocated at the same address.
//
// Thread-compatible: one cache per worker thread (the hot path takes no locks).

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "agent/authn/jose.h"

namespace ambit::authn {

class VerifiedJwtCache {
 public:
  // Envoy's default jwt_cache_config size is 100; a waypoint serves many clients, and an entry
  // is a few KiB at most (bounded by the request header limits), so a few hundred per worker.
  static constexpr size_t kDefaultCapacity = 512;

  struct Entry {
    std::shared_ptr<const Jwt> jwt;
    std::shared_ptr<const Jwks> keys;  // what the signature verified under
    std::string detail;                // the verification's explanation ("signature verified ...")
  };

  explicit VerifiedJwtCache(size_t capacity = kDefaultCapacity)
      : capacity_(capacity == 0 ? 1 : capacity) {}
  VerifiedJwtCache(const VerifiedJwtCache&) = delete;
  VerifiedJwtCache& operator=(const VerifiedJwtCache&) = delete;

  // The entry of `token` when it verified under exactly `keys` and is not past exp at `now`
  // (unix seconds); it becomes the most recently used. An expired entry is removed. Null: verify.
  const Entry* Find(absl::string_view token, const Jwks* keys, int64_t now);
  // The parsed token alone (whatever key set it verified under), when cached and not past exp:
  // parsing depends on the bytes only.
  std::shared_ptr<const Jwt> FindParsed(absl::string_view token, int64_t now);
  // Records that jwt->token verified under `keys`, replacing any entry of the same token. An
  // already expired token is not kept.
  void Insert(std::shared_ptr<const Jwt> jwt, std::shared_ptr<const Jwks> keys, std::string detail,
              int64_t now);

  size_t size() const { return lru_.size(); }
  size_t capacity() const { return capacity_; }
  uint64_t hits() const { return hits_; }
  uint64_t misses() const { return misses_; }

 private:
  using List = std::list<Entry>;  // most recently used first; nodes never move in memory

  // The map's key is a view of the entry's own token bytes.
  List::iterator Lookup(absl::string_view token, int64_t now);
  static bool Expired(const Jwt& jwt, int64_t now);

  const size_t capacity_;
  List lru_;
  absl::flat_hash_map<absl::string_view, List::iterator> index_;
  uint64_t hits_ = 0;
  uint64_t misses_ = 0;
};

}  // namespace ambit::authn
