#include <string>
#include <vector>

#include "agent/authn/jwks_provider.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_jwks_fetcher.h"

namespace ambit::authn {
namespace {

constexpr char kUri[] = "https://issuer.example.com/jwks";
constexpr char kJwks[] = R"({"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"a"}]})";

TEST(JwksCacheTest, FetchesRefreshesAndExpiresTheLastGoodSet) {
  FakeClock clock;
  ambit::testing::FakeJwksFetcher fetcher;
  JwksCache cache(&fetcher, &clock,
                  {.refresh_interval = absl::Minutes(20),
                   .retry_interval = absl::Seconds(5),
                   .max_age = absl::Hours(1)});
  cache.Track(kUri, absl::Seconds(3));
  EXPECT_EQ(cache.Get(kUri), nullptr);
  EXPECT_EQ(cache.Problem(kUri), "not fetched yet");

  fetcher.documents[kUri] = kJwks;
  EXPECT_EQ(cache.RefreshDue(), 0);
  EXPECT_EQ(fetcher.last_timeout, absl::Seconds(3));
  ASSERT_NE(cache.Get(kUri), nullptr);
  EXPECT_EQ(cache.Get(kUri)->keys[0].kid, "a");
  EXPECT_EQ(cache.NextRefresh(), clock.Now() + absl::Minutes(20));

  // Not due: no fetch.
  EXPECT_EQ(cache.RefreshDue(), 0);
  EXPECT_EQ(fetcher.fetches, 1);

  // The server goes away: the last good set serves until max_age, retried every 5 s.
  fetcher.documents.clear();
  clock.Advance(absl::Minutes(20));
  EXPECT_EQ(cache.RefreshDue(), 1);
  EXPECT_NE(cache.Get(kUri), nullptr);
  EXPECT_EQ(cache.NextRefresh(), clock.Now() + absl::Seconds(5));
  clock.Advance(absl::Minutes(41));
  EXPECT_EQ(cache.Get(kUri), nullptr);
  EXPECT_NE(cache.Problem(kUri).find("too old"), std::string::npos);

  // A bad document is a failure too, and names the problem.
  fetcher.documents[kUri] = "<html>";
  EXPECT_EQ(cache.RefreshDue(), 1);
  EXPECT_NE(cache.Problem(kUri).find("not valid JSON"), std::string::npos);
  EXPECT_EQ(cache.Get(kUri), nullptr);

  // Back: served again.
  fetcher.documents[kUri] = kJwks;
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(cache.RefreshDue(), 0);
  EXPECT_NE(cache.Get(kUri), nullptr);
}

TEST(JwksCacheTest, UntrackedUriHasNoKeys) {
  FakeClock clock;
  ambit::testing::FakeJwksFetcher fetcher;
  JwksCache cache(&fetcher, &clock);
  EXPECT_EQ(cache.Get("https://x/jwks"), nullptr);
  EXPECT_EQ(cache.NextRefresh(), absl::InfiniteFuture());
}

TEST(JwksCacheTest, UntrackDropsTheSetAndStopsRefreshing) {
  FakeClock clock;
  ambit::testing::FakeJwksFetcher fetcher;
  JwksCache cache(&fetcher, &clock);
  fetcher.documents[kUri] = kJwks;
  cache.Track(kUri, absl::Seconds(1));
  cache.Track("https://other.example/jwks", absl::Seconds(1));
  EXPECT_EQ(cache.RefreshDue(), 1);  // the other one has no document
  ASSERT_NE(cache.Get(kUri), nullptr);
  cache.Untrack(kUri);
  cache.Untrack("https://never.example/jwks");  // unknown: ignored
  EXPECT_EQ(cache.Get(kUri), nullptr);
  EXPECT_EQ(cache.Tracked(), std::vector<std::string>{"https://other.example/jwks"});
  clock.Advance(absl::Hours(1));
  const int fetches = fetcher.fetches;
  cache.RefreshDue();
  EXPECT_EQ(fetcher.fetches, fetches + 1);  // only the one still tracked
}

// Untracks the URI it is asked for while "fetching" it, as a configuration change racing a
// refresh would.
class UntrackingFetcher final : public JwksFetcher {
 public:
  absl::StatusOr<std::string> Fetch(const std::string& uri, absl::Duration) override {
    cache->Untrack(uri);
    return std::string(kJwks);
  }
  JwksCache* cache = nullptr;
};

TEST(JwksCacheTest, UriUntrackedDuringItsFetchStaysUntracked) {
  FakeClock clock;
  UntrackingFetcher fetcher;
  JwksCache cache(&fetcher, &clock);
  fetcher.cache = &cache;
  cache.Track(kUri, absl::Seconds(1));
  EXPECT_EQ(cache.RefreshDue(), 0);
  EXPECT_TRUE(cache.Tracked().empty());
  EXPECT_EQ(cache.Get(kUri), nullptr);
  EXPECT_EQ(cache.NextRefresh(), absl::InfiniteFuture());
}

}  // namespace
}  // namespace ambit::authn
