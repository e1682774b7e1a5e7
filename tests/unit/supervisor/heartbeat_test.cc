// The agent's heartbeat bookkeeping (agent/supervisor/heartbeat.h), on a clock moved by hand.

#include "agent/supervisor/heartbeat.h"

#include <gtest/gtest.h>

namespace ambit::supervisor {
namespace {

using Change = HeartbeatMonitor::Change;

TEST(HeartbeatMonitorTest, AnAnswerWithinTheDeadlineIsNeverLate) {
  FakeClock clock;
  HeartbeatMonitor hb(clock, absl::Seconds(3));
  hb.Reset(true);
  for (int i = 0; i < 10; ++i) {
    auto seq = hb.NextPing();
    ASSERT_TRUE(seq.has_value());
    EXPECT_EQ(*seq, static_cast<uint64_t>(i + 1));
    clock.Advance(absl::Milliseconds(2900));
    EXPECT_FALSE(hb.Late());
    EXPECT_EQ(hb.TakeChange(), Change::kNone);
    EXPECT_TRUE(hb.OnPong(*seq));
    EXPECT_EQ(hb.waiting_since(), absl::InfiniteFuture());
  }
}

TEST(HeartbeatMonitorTest, OneOutstandingPingTurnsLateAfterTheDeadlineAndRecovers) {
  FakeClock clock;
  HeartbeatMonitor hb(clock, absl::Seconds(3));
  hb.Reset(true);
  auto seq = hb.NextPing();
  ASSERT_TRUE(seq.has_value());
  const absl::Time sent = clock.Now();
  // Ticks while the data plane is silent send nothing more: one ping is outstanding.
  for (int i = 0; i < 8; ++i) {
    clock.Advance(absl::Seconds(1));
    EXPECT_FALSE(hb.NextPing().has_value());
    EXPECT_EQ(hb.waiting_since(), sent);
    if (i < 3) {  // 1s, 2s, 3s: not past the deadline yet
      EXPECT_FALSE(hb.Late()) << i;
      EXPECT_EQ(hb.TakeChange(), Change::kNone);
    } else {
      EXPECT_TRUE(hb.Late()) << i;
      // Reported once, not at every tick.
      EXPECT_EQ(hb.TakeChange(), i == 3 ? Change::kLate : Change::kNone);
    }
  }
  EXPECT_FALSE(hb.OnPong(*seq + 1));  // not the outstanding one
  EXPECT_TRUE(hb.Late());
  EXPECT_TRUE(hb.OnPong(*seq));
  EXPECT_FALSE(hb.Late());
  EXPECT_EQ(hb.TakeChange(), Change::kAnsweredAgain);
  EXPECT_EQ(hb.last_silence(), absl::Seconds(8));
  EXPECT_EQ(hb.TakeChange(), Change::kNone);
  EXPECT_EQ(hb.NextPing(), *seq + 1);
}

TEST(HeartbeatMonitorTest, ExactlyTheDeadlineIsNotLate) {
  FakeClock clock;
  HeartbeatMonitor hb(clock, absl::Seconds(3));
  hb.Reset(true);
  ASSERT_TRUE(hb.NextPing().has_value());
  clock.Advance(absl::Seconds(3));
  EXPECT_FALSE(hb.Late());
  clock.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(hb.Late());
}

TEST(HeartbeatMonitorTest, ADataPlaneWithoutHeartbeatsIsNeverPingedNorLate) {
  FakeClock clock;
  HeartbeatMonitor hb(clock, absl::Seconds(3));
  hb.Reset(false);
  EXPECT_FALSE(hb.NextPing().has_value());
  clock.Advance(absl::Hours(1));
  EXPECT_FALSE(hb.Late());
  EXPECT_EQ(hb.TakeChange(), Change::kNone);
}

TEST(HeartbeatMonitorTest, ANewSessionForgetsTheOutstandingPing) {
  FakeClock clock;
  HeartbeatMonitor hb(clock, absl::Seconds(3));
  hb.Reset(true);
  auto old_seq = hb.NextPing();
  clock.Advance(absl::Seconds(10));
  EXPECT_EQ(hb.TakeChange(), Change::kLate);
  hb.Reset(true);
  EXPECT_FALSE(hb.Late());
  // The previous session's answer, delivered late, does not count for the new one's ping.
  auto seq = hb.NextPing();
  ASSERT_TRUE(seq.has_value());
  EXPECT_NE(*seq, *old_seq);
  EXPECT_FALSE(hb.OnPong(*old_seq));
  clock.Advance(absl::Seconds(4));
  EXPECT_TRUE(hb.Late());
  EXPECT_EQ(hb.TakeChange(), Change::kLate);
}

PongReport Pong(uint64_t seq, uint32_t workers, std::vector<PodListenerReport> pods) {
  PongReport p;
  p.seq = seq;
  p.workers = workers;
  p.pods = std::move(pods);
  return p;
}

TEST(ListenerProblemsTest, EveryListenerListeningAndWatchedIsFine) {
  auto pong = Pong(5, 2, {{"default/a", 6, 2, false}, {"default/b", 4, 2, false}});
  EXPECT_TRUE(ListenerProblems({{"default/a", 6, 1}, {"default/b", 4, 5}}, pong).empty());
}

TEST(ListenerProblemsTest, NamesEachPodAndWhatIsWrong) {
  auto pong = Pong(5, 2,
                   {{"default/dead", 4, 2, false},       // two listeners no longer listening
                    {"default/unwatched", 6, 1, false},  // one worker does not accept
                    {"default/new", 6, 0, true}});       // waits for its certificate: fine
  auto problems = ListenerProblems({{"default/dead", 6, 1},
                                    {"default/unwatched", 6, 1},
                                    {"default/new", 6, 4},
                                    {"default/lost", 6, 2},    // unknown to the data plane
                                    {"default/later", 6, 6}},  // sent after ping 5: not judged
                                   pong);
  ASSERT_EQ(problems.size(), 3u);
  EXPECT_EQ(problems[0],
            "pod default/dead: only 4 of its 6 listeners are listening in the data "
            "plane");
  EXPECT_EQ(problems[1],
            "pod default/unwatched: only 1 of 2 data-plane workers accept its "
            "connections");
  EXPECT_EQ(problems[2], "pod default/lost: the data plane does not hold its listeners");
}

}  // namespace
}  // namespace ambit::supervisor
