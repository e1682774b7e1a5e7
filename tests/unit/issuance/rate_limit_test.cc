#include "agent/issuance/rate_limit.h"

#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::issuance {
namespace {

using ::testing::HasSubstr;

SigningRateOptions Small() {
  SigningRateOptions o;
  o.node_rate = 2;
  o.node_burst = 4;
  o.total_rate = 5;
  o.total_burst = 6;
  return o;
}

// How many Admit calls for `node` succeed out of `attempts`.
int Admitted(SigningRateLimiter& limiter, const std::string& node, int attempts) {
  int ok = 0;
  for (int i = 0; i < attempts; ++i) ok += limiter.Admit(node).ok();
  return ok;
}

TEST(SigningRateLimiterTest, NodeGetsItsBurstThenItsRate) {
  FakeClock clock;
  SigningRateLimiter limiter(&clock, Small());
  EXPECT_EQ(Admitted(limiter, "node1", 10), 4);
  absl::Status refused = limiter.Admit("node1");
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.message(), HasSubstr("node node1"));
  EXPECT_THAT(refused.message(), HasSubstr("retry in 500ms"));

  absl::Duration retry_after;
  EXPECT_FALSE(limiter.Admit("node1", &retry_after).ok());
  EXPECT_EQ(retry_after, absl::Milliseconds(500));  // the same wait as the message's, to act on

  clock.Advance(absl::Milliseconds(499));
  EXPECT_FALSE(limiter.Admit("node1", &retry_after).ok());
  EXPECT_EQ(retry_after, absl::Milliseconds(1));
  clock.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(limiter.Admit("node1").ok());
  EXPECT_FALSE(limiter.Admit("node1").ok());
}

TEST(SigningRateLimiterTest, SustainedRateIsBounded) {
  FakeClock clock;
  SigningRateLimiter limiter(&clock, Small());
  // A node asking every millisecond for ten seconds gets its burst plus rate * 10 s.
  int ok = 0;
  for (int ms = 0; ms < 10000; ++ms) {
    ok += limiter.Admit("node1").ok();
    clock.Advance(absl::Milliseconds(1));
  }
  EXPECT_GE(ok, 4 + 2 * 10 - 1);
  EXPECT_LE(ok, 4 + 2 * 10 + 1);
}

TEST(SigningRateLimiterTest, AllNodesTogetherAreBoundedToo) {
  FakeClock clock;
  SigningRateLimiter limiter(&clock, Small());
  EXPECT_EQ(Admitted(limiter, "node1", 4), 4);
  EXPECT_EQ(Admitted(limiter, "node2", 4), 2);  // the CA's burst of 6 is spent
  absl::Status refused = limiter.Admit("node3");
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.message(), HasSubstr("all nodes"));
  // A refusal by the overall bucket takes nothing from the node's own.
  clock.Advance(absl::Milliseconds(200));  // one overall token back
  EXPECT_TRUE(limiter.Admit("node3").ok());
}

TEST(SigningRateLimiterTest, OneNodeAtItsLimitDoesNotStopAnother) {
  FakeClock clock;
  SigningRateOptions o = Small();
  o.total_burst = 100;
  SigningRateLimiter limiter(&clock, o);
  EXPECT_EQ(Admitted(limiter, "busy", 50), 4);
  EXPECT_EQ(Admitted(limiter, "quiet", 4), 4);
}

TEST(SigningRateLimiterTest, ForgetsIdleNodesWhenFull) {
  FakeClock clock;
  SigningRateOptions o = Small();
  o.total_burst = 1000;
  o.total_rate = 1000;
  o.max_nodes = 2;
  SigningRateLimiter limiter(&clock, o);
  EXPECT_TRUE(limiter.Admit("a").ok());
  EXPECT_TRUE(limiter.Admit("b").ok());
  // Both are below a full bucket: a third node is refused, not given a fresh bucket at the
  // expense of tracking.
  absl::Duration retry_after;
  EXPECT_FALSE(limiter.Admit("c", &retry_after).ok());
  EXPECT_EQ(retry_after, absl::InfiniteDuration());  // no token of its own will come
  clock.Advance(absl::Seconds(1));                   // a and b are full again: forgotten
  EXPECT_TRUE(limiter.Admit("c", &retry_after).ok());
  EXPECT_EQ(retry_after, absl::ZeroDuration());
}

}  // namespace
}  // namespace ambit::issuance
