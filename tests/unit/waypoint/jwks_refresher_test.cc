#include "agent/waypoint/jwks_refresher.h"

#include <map>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "agent/authn/jwks_provider.h"
#include "agent/common/clock.h"
#include "gtest/gtest.h"

namespace ambit::waypoint {
namespace {

constexpr char kJwks[] = R"({"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"a"}]})";
constexpr char kUriA[] = "https://a.example/jwks";
constexpr char kUriB[] = "https://b.example/jwks";

// Answers every URI with kJwks and counts the fetches; called from the refresher's thread.
class CountingFetcher final : public authn::JwksFetcher {
 public:
  absl::StatusOr<std::string> Fetch(const std::string& uri, absl::Duration timeout) override {
    absl::MutexLock lock(&mu_);
    ++fetches_[uri];
    timeouts_[uri] = timeout;
    return std::string(kJwks);
  }
  int fetches(const std::string& uri) {
    absl::MutexLock lock(&mu_);
    return fetches_[uri];
  }
  absl::Duration timeout(const std::string& uri) {
    absl::MutexLock lock(&mu_);
    return timeouts_[uri];
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, int> fetches_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, absl::Duration> timeouts_ ABSL_GUARDED_BY(mu_);
};

template <typename F>
bool WaitFor(F predicate, absl::Duration limit = absl::Seconds(5)) {
  const absl::Time deadline = absl::Now() + limit;
  while (absl::Now() < deadline) {
    if (predicate()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return predicate();
}

authn::RequestAuthentication Policy(std::vector<authn::JwtRule> rules) {
  authn::RequestAuthentication p;
  p.name = "jwt";
  p.namespace_name = "default";
  p.jwt_rules = std::move(rules);
  return p;
}

authn::JwtRule Remote(std::string uri, absl::Duration timeout = authn::kDefaultJwksFetchTimeout) {
  authn::JwtRule r;
  r.issuer = "iss-" + uri;
  r.jwks_uri = std::move(uri);
  r.timeout = timeout;
  return r;
}

TEST(JwksRefresherTest, FetchesNewUrisAtOnceAndDropsRemovedOnes) {
  CountingFetcher fetcher;
  // A refresh interval far beyond the test: every fetch seen is the one the rules triggered.
  authn::JwksCache cache(&fetcher, &RealClock::Get(), {.refresh_interval = absl::Hours(1)});
  JwksRefresher refresher(&cache, &RealClock::Get());

  authn::JwtRule inline_rule;
  inline_rule.issuer = "inline";
  inline_rule.jwks = kJwks;
  refresher.SetRules({Policy({Remote(kUriA, absl::Seconds(2)), inline_rule}),
                      Policy({Remote(kUriA, absl::Seconds(7))})});
  ASSERT_TRUE(WaitFor([&] { return cache.Get(kUriA) != nullptr; }));
  EXPECT_EQ(fetcher.fetches(kUriA), 1);
  EXPECT_EQ(fetcher.timeout(kUriA), absl::Seconds(7));  // the longest of the rules naming it
  EXPECT_EQ(cache.Tracked(), std::vector<std::string>{kUriA});

  // B arrives with a configuration change: fetched without waiting for A's next refresh.
  refresher.SetRules({Policy({Remote(kUriA), Remote(kUriB)})});
  ASSERT_TRUE(WaitFor([&] { return cache.Get(kUriB) != nullptr; }));
  EXPECT_EQ(fetcher.fetches(kUriA), 1);

  // A is gone from the rules: no longer tracked or served.
  refresher.SetRules({Policy({Remote(kUriB)})});
  EXPECT_EQ(cache.Tracked(), std::vector<std::string>{kUriB});
  EXPECT_EQ(cache.Get(kUriA), nullptr);
  refresher.Stop();
  refresher.Stop();  // idempotent
}

TEST(JwksRefresherTest, RefreshesWhenDue) {
  CountingFetcher fetcher;
  authn::JwksCache cache(&fetcher, &RealClock::Get(), {.refresh_interval = absl::Milliseconds(50)});
  JwksRefresher refresher(&cache, &RealClock::Get());
  refresher.SetRules({Policy({Remote(kUriA)})});
  // Several refreshes, each woken by NextRefresh rather than by the 30 s safety wait.
  EXPECT_TRUE(WaitFor([&] { return fetcher.fetches(kUriA) >= 4; }, absl::Seconds(3)));
  const int rounds = refresher.rounds();
  EXPECT_GE(rounds, 4);
  refresher.Stop();
  const int fetched = fetcher.fetches(kUriA);
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(fetcher.fetches(kUriA), fetched);  // stopped means stopped
}

TEST(JwksRefresherTest, StopsPromptlyWhenIdle) {
  CountingFetcher fetcher;
  authn::JwksCache cache(&fetcher, &RealClock::Get());
  const absl::Time start = absl::Now();
  { JwksRefresher refresher(&cache, &RealClock::Get(), absl::Hours(1)); }
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
}

}  // namespace
}  // namespace ambit::waypoint
