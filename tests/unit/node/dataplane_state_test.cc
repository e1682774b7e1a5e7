#include "agent/node/dataplane_state.h"

#include "agent/common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::node {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::IsEmpty;

TEST(GenerationTrackerTest, WaitingStartsAtTheFirstUnappliedGenerationAndEndsWhenTheLastApplies) {
  FakeClock clock;
  GenerationTracker g;
  EXPECT_EQ(g.version(), 0u);
  EXPECT_EQ(g.pending_since(), absl::InfiniteFuture());
  const absl::Time t1 = clock.Now();
  EXPECT_EQ(g.Next(0, t1), 1u);
  EXPECT_EQ(g.pending_since(), t1);
  // A newer generation before the data plane applied the first keeps the older start.
  clock.Advance(absl::Seconds(3));
  EXPECT_EQ(g.Next(0, clock.Now()), 2u);
  EXPECT_EQ(g.pending_since(), t1);
  g.OnAcked(1);  // not the current one
  EXPECT_EQ(g.pending_since(), t1);
  g.OnAcked(2);
  EXPECT_EQ(g.pending_since(), absl::InfiniteFuture());
  // The next wait starts anew.
  clock.Advance(absl::Seconds(1));
  EXPECT_EQ(g.Next(2, clock.Now()), 3u);
  EXPECT_EQ(g.pending_since(), clock.Now());
}

TEST(GenerationTrackerTest, DeliveryErrorAsksForAResendUntilAGenerationGoesOut) {
  FakeClock clock;
  GenerationTracker g;
  g.Next(0, clock.Now());
  g.OnSent("control socket closed");
  EXPECT_TRUE(g.needs_resend());
  EXPECT_EQ(g.delivery_error(), "control socket closed");
  g.Next(0, clock.Now());
  g.OnSent("");
  EXPECT_FALSE(g.needs_resend());
}

TEST(GenerationTrackerTest, NewSessionWaitsAgainOnlyOnceAGenerationExists) {
  FakeClock clock;
  GenerationTracker g;
  g.OnSessionStart(clock.Now());
  EXPECT_EQ(g.pending_since(), absl::InfiniteFuture());
  g.Next(0, clock.Now());
  g.OnAcked(1);
  clock.Advance(absl::Minutes(1));
  g.OnSessionStart(clock.Now());  // a restarted data plane has applied nothing
  EXPECT_EQ(g.pending_since(), clock.Now());
  // The re-sent generation keeps that start: the restarted data plane acks nothing yet.
  g.Next(0, clock.Now() + absl::Seconds(1));
  EXPECT_EQ(g.pending_since(), clock.Now());
}

TEST(RestartBackoffTest, DoublesUpToTheCapWhileTheDataPlaneKeepsDying) {
  FakeClock clock;
  RestartBackoff b;
  std::vector<absl::Duration> delays;
  for (int i = 0; i < 9; ++i) {
    b.OnStarted(clock.Now());
    clock.Advance(absl::Seconds(1));
    delays.push_back(b.OnExit(clock.Now()));
  }
  EXPECT_THAT(delays, ElementsAre(absl::Milliseconds(100), absl::Milliseconds(200),
                                  absl::Milliseconds(400), absl::Milliseconds(800),
                                  absl::Milliseconds(1600), absl::Milliseconds(3200),
                                  absl::Milliseconds(6400), absl::Seconds(10), absl::Seconds(10)));
  EXPECT_EQ(b.restarts(), 9);
}

TEST(RestartBackoffTest, LongRunEarnsAQuickRestart) {
  FakeClock clock;
  RestartBackoff b;
  for (int i = 0; i < 4; ++i) b.OnExit(clock.Now());
  b.OnStarted(clock.Now());
  clock.Advance(absl::Seconds(31));
  EXPECT_EQ(b.OnExit(clock.Now()), absl::Milliseconds(100));
}

// A data plane that exits before it comes up (a bad flag, a crash at start-up) never called
// OnStarted: it must back off, not be restarted every 100 ms.
TEST(RestartBackoffTest, DyingBeforeComingUpBacksOff) {
  FakeClock clock;
  RestartBackoff b;
  std::vector<absl::Duration> delays;
  for (int i = 0; i < 5; ++i) {
    clock.Advance(absl::Seconds(1));
    delays.push_back(b.OnExit(clock.Now()));
  }
  EXPECT_THAT(delays,
              ElementsAre(absl::Milliseconds(100), absl::Milliseconds(200), absl::Milliseconds(400),
                          absl::Milliseconds(800), absl::Milliseconds(1600)));
}

// A long run earns one quick restart; the run's start does not make every later crash quick.
TEST(RestartBackoffTest, AnEarlierLongRunDoesNotResetLaterCrashes) {
  FakeClock clock;
  RestartBackoff b;
  b.OnStarted(clock.Now());
  clock.Advance(absl::Minutes(1));
  EXPECT_EQ(b.OnExit(clock.Now()), absl::Milliseconds(100));
  std::vector<absl::Duration> delays;
  for (int i = 0; i < 3; ++i) {
    clock.Advance(absl::Seconds(1));  // dies again before it comes up
    delays.push_back(b.OnExit(clock.Now()));
  }
  EXPECT_THAT(delays, ElementsAre(absl::Milliseconds(200), absl::Milliseconds(400),
                                  absl::Milliseconds(800)));
}

TEST(RestartBackoffTest, FailedStartsBackOffWithoutCountingRestarts) {
  RestartBackoff b;
  EXPECT_EQ(b.OnStartFailed(), absl::Milliseconds(100));
  EXPECT_EQ(b.OnStartFailed(), absl::Milliseconds(200));
  EXPECT_EQ(b.restarts(), 0);
}

TEST(DecideCsrTest, SignsOnlyIdentitiesOfPodsEnrolledHere) {
  const std::set<std::string> enrolled = {"spiffe://cluster.local/ns/a/sa/web"};
  EXPECT_TRUE(DecideCsr("spiffe://cluster.local/ns/a/sa/web", enrolled).ok());
  absl::Status refused = DecideCsr("spiffe://cluster.local/ns/b/sa/db", enrolled);
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(refused.message(),
            "no enrolled pod on this node has identity spiffe://cluster.local/ns/b/sa/db");
  EXPECT_EQ(DecideCsr("", {}).code(), absl::StatusCode::kPermissionDenied);
}

TEST(ChangedCertificatesTest, ReportsNewIdentitiesStatesAndSerialsOnly) {
  auto cert = [](std::string identity, std::string state, std::string serial) {
    supervisor::CertificateState c;
    c.identity = std::move(identity);
    c.state = std::move(state);
    c.serial_hex = std::move(serial);
    return c;
  };
  supervisor::CertificateState a = cert("id-a", "valid", "01");
  supervisor::CertificateState b = cert("id-b", "pending", "");
  EXPECT_THAT(ChangedCertificates({a, b}, {a, b}), IsEmpty());
  supervisor::CertificateState renewed = a;
  renewed.serial_hex = "02";
  supervisor::CertificateState issued = b;
  issued.state = "valid";
  supervisor::CertificateState c = cert("id-c", "pending", "");
  EXPECT_THAT(ChangedCertificates({a, b}, {renewed, issued, c}),
              ElementsAre(Field(&supervisor::CertificateState::serial_hex, "02"),
                          Field(&supervisor::CertificateState::state, "valid"),
                          Field(&supervisor::CertificateState::identity, "id-c")));
  // A changed not_after alone is no news.
  supervisor::CertificateState later = a;
  later.not_after_unix = 99;
  EXPECT_THAT(ChangedCertificates({a}, {later}), IsEmpty());
}

TEST(GenerationTrackerTest, TrackFollowsAVersionNumberedForAnotherProcess) {
  FakeClock clock;
  GenerationTracker g;
  const absl::Time t1 = clock.Now();
  // The waypoint process joins at generation 7, built for both processes.
  EXPECT_EQ(g.Track(7, 0, t1), 7u);
  EXPECT_EQ(g.version(), 7u);
  EXPECT_EQ(g.pending_since(), t1);
  g.OnAcked(6);  // an older one: still waiting
  EXPECT_EQ(g.pending_since(), t1);
  g.OnAcked(7);
  EXPECT_EQ(g.pending_since(), absl::InfiniteFuture());
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ(g.Track(9, 7, clock.Now()), 9u);
  EXPECT_EQ(g.pending_since(), clock.Now());
}

TEST(PodPlacementTest, WaypointPodsGoToTheWaypointProcessOthersToTheTunnel) {
  const std::set<std::string> waypoint_pods = {"ns/wp"};
  EXPECT_EQ(ProcessFor("ns/wp", waypoint_pods), DataPlaneKind::kWaypoint);
  EXPECT_EQ(ProcessFor("ns/app", waypoint_pods), DataPlaneKind::kTunnel);
  EXPECT_EQ(ProcessFor("other/wp", waypoint_pods), DataPlaneKind::kTunnel);
  EXPECT_STREQ(DataPlaneName(DataPlaneKind::kWaypoint), "waypoint data plane");
  EXPECT_STREQ(DataPlaneName(DataPlaneKind::kTunnel), "data plane");
}

TEST(PodPlacementTest, WaypointNeededOnlyWhileAWaypointPodIsEnrolledHere) {
  EXPECT_FALSE(WaypointNeeded({"ns/app"}, {"ns/wp"}));
  EXPECT_FALSE(WaypointNeeded({}, {"ns/wp"}));
  EXPECT_TRUE(WaypointNeeded({"ns/app", "ns/wp"}, {"ns/wp"}));
  EXPECT_FALSE(WaypointNeeded({"ns/app", "ns/wp"}, {}));
}

TEST(PodPlacementTest, PodsThatChangedRoleMoveFromTheOldProcessToTheNew) {
  const std::map<std::string, DataPlaneKind> served = {
      {"ns/app", DataPlaneKind::kTunnel},   // stays
      {"ns/wp", DataPlaneKind::kWaypoint},  // stays
      {"ns/now-wp", DataPlaneKind::kTunnel},
      {"ns/was-wp", DataPlaneKind::kWaypoint},
  };
  const std::map<DataPlaneKind, bool> up = {{DataPlaneKind::kTunnel, true},
                                            {DataPlaneKind::kWaypoint, true}};
  EXPECT_THAT(PlanMoves(served, {"ns/wp", "ns/now-wp"}, up),
              ElementsAre(PodMove{"ns/now-wp", DataPlaneKind::kTunnel, DataPlaneKind::kWaypoint},
                          PodMove{"ns/was-wp", DataPlaneKind::kWaypoint, DataPlaneKind::kTunnel}));
}

TEST(PodPlacementTest, APodNoProcessHoldsWaitsForItsProcessSession) {
  const std::map<std::string, DataPlaneKind> served = {{"ns/app", DataPlaneKind::kNone},
                                                       {"ns/wp", DataPlaneKind::kNone}};
  // Both processes down: their sessions send the pods, nothing to do now.
  EXPECT_THAT(PlanMoves(served, {"ns/wp"},
                        {{DataPlaneKind::kTunnel, false}, {DataPlaneKind::kWaypoint, false}}),
              IsEmpty());
  // The waypoint process can be reached (or started): its pod goes there now.
  EXPECT_THAT(PlanMoves(served, {"ns/wp"},
                        {{DataPlaneKind::kTunnel, false}, {DataPlaneKind::kWaypoint, true}}),
              ElementsAre(PodMove{"ns/wp", DataPlaneKind::kNone, DataPlaneKind::kWaypoint}));
  // A held pod moves even while its new process is down: the old one must let go, and the new
  // one's session sends it.
  EXPECT_THAT(PlanMoves({{"ns/wp", DataPlaneKind::kTunnel}}, {"ns/wp"},
                        {{DataPlaneKind::kTunnel, true}, {DataPlaneKind::kWaypoint, false}}),
              ElementsAre(PodMove{"ns/wp", DataPlaneKind::kTunnel, DataPlaneKind::kWaypoint}));
}

TEST(PodPlacementTest, ASessionGetsOnlyItsOwnPods) {
  const std::vector<std::string> enrolled = {"ns/a", "ns/wp", "ns/b"};
  EXPECT_THAT(SessionPods(DataPlaneKind::kTunnel, enrolled, {"ns/wp"}),
              ElementsAre("ns/a", "ns/b"));
  EXPECT_THAT(SessionPods(DataPlaneKind::kWaypoint, enrolled, {"ns/wp"}), ElementsAre("ns/wp"));
  EXPECT_THAT(SessionPods(DataPlaneKind::kWaypoint, enrolled, {}), IsEmpty());
}

}  // namespace
}  // namespace ambit::node

namespace ambit::node {
namespace {

supervisor::PongReport Pong(uint64_t seq, std::vector<supervisor::PodListenerReport> pods) {
  supervisor::PongReport pong;
  pong.seq = seq;
  pong.workers = 2;
  pong.pods = std::move(pods);
  return pong;
}

supervisor::CertificateState Cert(std::string identity, std::string state, int64_t not_after) {
  supervisor::CertificateState c;
  c.identity = std::move(identity);
  c.state = std::move(state);
  c.not_after_unix = not_after;
  return c;
}

constexpr char kWeb[] = "spiffe://cluster.local/ns/default/sa/web";

TEST(StandbyProblemsTest, ServesOnceListenersCertificatesAndGenerationAreAllThere) {
  const std::vector<supervisor::ExpectedListeners> pods = {{"default/web", 6, 3}};
  const std::vector<std::string> ids = {kWeb};
  const auto serving = Pong(3, {{"default/web", 6, 2, false}});
  const std::vector<supervisor::CertificateState> valid = {Cert(kWeb, "valid", 2000)};
  EXPECT_THAT(StandbyProblems(pods, ids, serving, valid, 7, 7, 1000), ::testing::IsEmpty());

  // Each missing piece alone keeps the primary serving.
  EXPECT_THAT(StandbyProblems(pods, ids, Pong(2, {}), valid, 7, 7, 1000),
              ::testing::ElementsAre(::testing::HasSubstr("not yet in a heartbeat answer")));
  EXPECT_FALSE(
      StandbyProblems(pods, ids, Pong(3, {{"default/web", 6, 1, false}}), valid, 7, 7, 1000)
          .empty());
  EXPECT_THAT(StandbyProblems(pods, ids, Pong(3, {{"default/web", 6, 2, true}}), valid, 7, 7, 1000),
              ::testing::Contains(::testing::HasSubstr("waiting for its certificate")));
  // A pod served after its 10 s wait without a certificate does not count as serving.
  EXPECT_THAT(StandbyProblems(pods, ids, serving, {}, 7, 7, 1000),
              ::testing::ElementsAre(::testing::HasSubstr("no valid certificate")));
  EXPECT_FALSE(StandbyProblems(pods, ids, serving, {Cert(kWeb, "pending", 0)}, 7, 7, 1000).empty());
  EXPECT_FALSE(StandbyProblems(pods, ids, serving, {Cert(kWeb, "valid", 999)}, 7, 7, 1000).empty());
  EXPECT_THAT(StandbyProblems(pods, ids, serving, valid, 7, 6, 1000),
              ::testing::ElementsAre(::testing::HasSubstr("generation 7 not applied")));
  // No generation built yet: nothing to wait for there.
  EXPECT_THAT(StandbyProblems(pods, ids, serving, valid, 0, 0, 1000), ::testing::IsEmpty());
}

}  // namespace
}  // namespace ambit::node
