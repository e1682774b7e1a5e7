#pragma once

// JWKS fetched from a rule's jwksUri. The HTTPS fetch belongs to the waypoint process (BoringSSL);
// this library holds the cache and asks a JwksFetcher, so a unit test drives it with a fake and
// an injected clock.
//
// Semantics (Istio's, which fetches jwksUri in istiod and inlines the result): while a URI has no
// usable key set (never fetched, fetch failed, or the last good set is older than max_age), every
// token of the issuers that use it is rejected ("Jwks remote fetch is failed"); a failed refresh
// keeps the last good set until it reaches max_age. Thread-safe: Get is called by workers,
// RefreshDue by one background thread.

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/authn/jose.h"
#include "agent/common/clock.h"

namespace ambit::authn {

// Where an Authenticator finds the key set of a jwksUri.
class JwksProvider {
 public:
  virtual ~JwksProvider() = default;
  // The current key set, or null while unavailable. Thread-safe; never blocks on the network.
  virtual std::shared_ptr<const Jwks> Get(const std::string& uri) const = 0;
};

// Fetches a JWKS document. Blocking, bounded by timeout.
class JwksFetcher {
 public:
  virtual ~JwksFetcher() = default;
  virtual absl::StatusOr<std::string> Fetch(const std::string& uri, absl::Duration timeout) = 0;
};

struct JwksCacheOptions {
  absl::Duration refresh_interval = absl::Minutes(20);  // istiod's default JWKS refresh
  absl::Duration retry_interval = absl::Seconds(5);     // after a failed fetch
  absl::Duration max_age = absl::Hours(1);              // a last good set is used this long
};

class JwksCache final : public JwksProvider {
 public:
  JwksCache(JwksFetcher* fetcher, const Clock* clock, JwksCacheOptions options = {})
      : fetcher_(fetcher), clock_(clock), options_(options) {}

  // Starts tracking uri (idempotent); it is fetched by the next RefreshDue.
  void Track(const std::string& uri, absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_);
  // Stops tracking uri and drops its key set (a rule that no longer names it must not keep a
  // fetch going); Get answers null for it from now on. Unknown URIs are ignored.
  void Untrack(const std::string& uri) ABSL_LOCKS_EXCLUDED(mu_);
  // The tracked URIs, sorted.
  std::vector<std::string> Tracked() const ABSL_LOCKS_EXCLUDED(mu_);
  // Fetches every tracked URI whose refresh is due. Returns how many fetches failed.
  int RefreshDue() ABSL_LOCKS_EXCLUDED(mu_);
  // The earliest time a refresh is due (InfiniteFuture when nothing is tracked).
  absl::Time NextRefresh() const ABSL_LOCKS_EXCLUDED(mu_);

  std::shared_ptr<const Jwks> Get(const std::string& uri) const override ABSL_LOCKS_EXCLUDED(mu_);
  // Why uri has no key set, for explanations; empty when it has one.
  std::string Problem(const std::string& uri) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Entry {
    absl::Duration timeout;
    std::shared_ptr<const Jwks> keys;
    absl::Time fetched = absl::InfinitePast();  // of keys
    absl::Time next = absl::InfinitePast();
    std::string problem = "not fetched yet";
  };

  JwksFetcher* fetcher_;
  const Clock* clock_;
  const JwksCacheOptions options_;
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ambit::authn
