#include "agent/node/enrollment.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "agent/common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::node {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using Decision = EnrollmentReconciler::Decision;

constexpr char kNode[] = "node-a";

state::Pod MakePod(const std::string& name, const std::string& ip, std::string node = kNode) {
  state::Pod pod;
  pod.name = name;
  pod.namespace_name = "default";
  pod.node_name = std::move(node);
  pod.netns_path = "/var/run/netns/" + name;
  pod.ips.push_back(*IpAddress::Parse(ip));
  return pod;
}

state::ClusterState MakeState(std::vector<state::Pod> pods) {
  state::ClusterState s;
  s.mesh.trust_domain = "cluster.local";
  for (auto& p : pods) s.pods[p.Key()] = std::move(p);
  return s;
}

std::vector<std::string> Keys(const std::vector<const state::Pod*>& pods) {
  std::vector<std::string> out;
  for (const auto* p : pods) out.push_back(p->Key());
  return out;
}

// Carries out a pass the way Agent does when every kernel step succeeds: pod i of the plan gets
// netns cookie cookies[i]. Returns the decisions.
std::vector<Decision> EnrollAll(EnrollmentReconciler& r, const state::ClusterState& s,
                                const std::vector<uint64_t>& cookies, absl::Time now) {
  auto plan = r.Begin(s);
  for (const auto& uid : plan.remove) r.OnRemoved(uid, r.connected(), now);
  std::vector<Decision> out;
  for (size_t i = 0; i < plan.enroll.size(); ++i) {
    const state::Pod& pod = *plan.enroll[i];
    Decision d = r.Decide(pod.Key(), cookies.at(i), now);
    if (d.kind == Decision::kWait) {
      r.OnEnrollFailed(pod.Key(), d.error, now);
    } else {
      r.OnEnrolled(pod.Key(),
                   {pod.netns_path, cookies.at(i), d.slot,
                    r.connected() ? state::SpiffeId(s.mesh, pod) : d.spiffe_id, pod.ips});
    }
    out.push_back(std::move(d));
  }
  r.EndPass(now);
  return out;
}

class EnrollmentTest : public ::testing::Test {
 protected:
  FakeClock clock_;
  EnrollmentReconciler r_{EnrollmentReconciler::Options{kNode}};
};

TEST_F(EnrollmentTest, EnrollsOnlyPodsOfThisNodeThatNameANetns) {
  auto outside = MakePod("outside", "198.18.0.3");
  outside.netns_path.clear();
  auto s =
      MakeState({MakePod("web", "198.18.0.1"), MakePod("peer", "198.18.0.2", "node-b"), outside});
  auto plan = r_.Begin(s);
  EXPECT_THAT(Keys(plan.enroll), ElementsAre("default/web"));
  EXPECT_THAT(plan.remove, IsEmpty());
}

TEST_F(EnrollmentTest, FailedEnrollmentRetriesAfterTheIntervalAndKeepsItsFirstFailureTime) {
  auto s = MakeState({MakePod("web", "198.18.0.1")});
  const absl::Time first = clock_.Now();
  auto plan = r_.Begin(s);
  ASSERT_EQ(plan.enroll.size(), 1u);
  r_.OnEnrollFailed("default/web", "netns not found", first);
  auto finish = r_.EndPass(first);
  ASSERT_TRUE(finish.retry_at.has_value());
  EXPECT_EQ(*finish.retry_at, first + absl::Seconds(2));
  EXPECT_TRUE(r_.has_failures());

  // The retry: tried again, fails again; readiness still reports the first failure's time.
  clock_.Advance(absl::Seconds(2));
  plan = r_.Begin(s);
  EXPECT_THAT(Keys(plan.enroll), ElementsAre("default/web"));
  r_.OnEnrollFailed("default/web", "netns not found", clock_.Now());
  finish = r_.EndPass(clock_.Now());
  EXPECT_EQ(r_.failing_since().at("default/web"), first);
  EXPECT_EQ(*finish.retry_at, clock_.Now() + absl::Seconds(2));

  // Then it works: no failure, no retry.
  clock_.Advance(absl::Seconds(2));
  EnrollAll(r_, s, {7}, clock_.Now());
  EXPECT_FALSE(r_.has_failures());
  EXPECT_THAT(r_.failing_since(), IsEmpty());
  EXPECT_EQ(r_.enrolled().at("default/web").netns_cookie, 7u);
  EXPECT_FALSE(r_.EndPass(clock_.Now()).retry_at.has_value());
}

// A pod whose network namespace never appears is retried less and less often, up to the cap: not
// every two seconds for ever.
TEST_F(EnrollmentTest, RetriesOfAPodThatKeepsFailingBackOffToTheCap) {
  auto s = MakeState({MakePod("web", "198.18.0.1")});
  std::vector<absl::Duration> waits;
  for (int i = 0; i < 8; ++i) {
    auto plan = r_.Begin(s);
    ASSERT_THAT(Keys(plan.enroll), ElementsAre("default/web"));
    r_.OnEnrollFailed("default/web", "netns /var/run/netns/web not found", clock_.Now());
    auto finish = r_.EndPass(clock_.Now());
    ASSERT_TRUE(finish.retry_at.has_value());
    waits.push_back(*finish.retry_at - clock_.Now());
    clock_.Advance(waits.back());
  }
  EXPECT_THAT(waits, ElementsAre(absl::Seconds(2), absl::Seconds(2), absl::Seconds(4),
                                 absl::Seconds(8), absl::Seconds(16), absl::Seconds(30),
                                 absl::Seconds(30), absl::Seconds(30)));

  // A second pod failing since now sets the pace again: it is retried after 2 s.
  s = MakeState({MakePod("web", "198.18.0.1"), MakePod("api", "198.18.0.2")});
  auto plan = r_.Begin(s);
  ASSERT_EQ(plan.enroll.size(), 2u);
  r_.OnEnrollFailed("default/web", "netns /var/run/netns/web not found", clock_.Now());
  r_.OnEnrollFailed("default/api", "netns /var/run/netns/api not found", clock_.Now());
  EXPECT_EQ(*r_.EndPass(clock_.Now()).retry_at, clock_.Now() + absl::Seconds(2));
}

TEST_F(EnrollmentTest, PodRemovedWhileItsEnrollmentFailsIsNotRetried) {
  auto plan = r_.Begin(MakeState({MakePod("web", "198.18.0.1")}));
  r_.OnEnrollFailed("default/web", "netns not found", clock_.Now());
  ASSERT_TRUE(r_.EndPass(clock_.Now()).retry_at.has_value());

  plan = r_.Begin(MakeState({}));
  EXPECT_THAT(plan.enroll, IsEmpty());
  EXPECT_THAT(plan.remove, IsEmpty());  // it never was enrolled
  EXPECT_FALSE(r_.EndPass(clock_.Now()).retry_at.has_value());
  EXPECT_FALSE(r_.has_failures());
  EXPECT_THAT(r_.failing_since(), IsEmpty());
}

TEST_F(EnrollmentTest, PodWithADuplicateAddressIsNotEnrolledUntilTheConflictEnds) {
  auto s = MakeState({MakePod("old", "198.18.0.1"), MakePod("new", "198.18.0.1")});
  s.ip_conflicts["default/new"].holder = "default/old";
  EnrollAll(r_, s, {1}, clock_.Now());
  EXPECT_EQ(r_.enrolled().size(), 1u);
  EXPECT_TRUE(r_.enrolled().contains("default/old"));

  // The holder goes: the other pod is enrolled, in a slot of its own.
  auto after = MakeState({MakePod("new", "198.18.0.1")});
  auto plan = r_.Begin(after);
  EXPECT_THAT(plan.remove, ElementsAre("default/old"));
  EXPECT_THAT(Keys(plan.enroll), ElementsAre("default/new"));
}

TEST_F(EnrollmentTest, EnrolledPodThatLosesItsAddressIsRemoved) {
  EnrollAll(r_, MakeState({MakePod("web", "198.18.0.1")}), {1}, clock_.Now());
  auto s = MakeState({MakePod("web", "198.18.0.1"), MakePod("older", "198.18.0.1")});
  s.ip_conflicts["default/web"].holder = "default/older";
  auto plan = r_.Begin(s);
  EXPECT_THAT(plan.remove, ElementsAre("default/web"));
  EXPECT_THAT(Keys(plan.enroll), ElementsAre("default/older"));
}

TEST_F(EnrollmentTest, NewNetnsPathIsARemovalAndAnEnrollment) {
  EnrollAll(r_, MakeState({MakePod("web", "198.18.0.1")}), {1}, clock_.Now());
  auto moved = MakePod("web", "198.18.0.1");
  moved.netns_path = "/var/run/netns/web-2";
  auto plan = r_.Begin(MakeState({moved}));
  EXPECT_THAT(plan.remove, ElementsAre("default/web"));
  EXPECT_THAT(Keys(plan.enroll), ElementsAre("default/web"));
}

TEST_F(EnrollmentTest, PodsEnrolledByLabelAreFoundByIpAndReEnrolledWhenTheirIpChanges) {
  auto web = MakePod("web", "198.18.0.1");
  web.netns_path.clear();
  web.labels["istio.io/dataplane-mode"] = "ambient";
  EnrollAll(r_, MakeState({web}), {1}, clock_.Now());
  ASSERT_TRUE(r_.enrolled().contains("default/web"));
  // Unchanged: nothing to do.
  auto same = r_.Begin(MakeState({web}));
  EXPECT_THAT(same.remove, IsEmpty());
  EXPECT_THAT(same.enroll, IsEmpty());
  r_.EndPass(clock_.Now());
  // Re-created under the same name with a new address: another namespace, enrolled anew.
  auto recreated = web;
  recreated.ips = {*IpAddress::Parse("198.18.0.9")};
  auto plan = r_.Begin(MakeState({recreated}));
  EXPECT_THAT(plan.remove, ElementsAre("default/web"));
  EXPECT_THAT(Keys(plan.enroll), ElementsAre("default/web"));
}

TEST_F(EnrollmentTest, SlotsAreReusedAndPinnedSlotsAreNotHandedOut) {
  r_.SetPinnedSlots({{100, 0}}, false);
  auto s = MakeState({MakePod("a", "198.18.0.1"), MakePod("b", "198.18.0.2")});
  auto d = EnrollAll(r_, s, {1, 2}, clock_.Now());
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].slot, 1u);  // 0 is pinned for a pod of an earlier run
  EXPECT_EQ(d[1].slot, 2u);
  // The earlier run's pod is not wanted: its slot is freed at the end of the pass.
  auto again = r_.Begin(s);
  EXPECT_THAT(again.enroll, IsEmpty());
  EXPECT_THAT(r_.EndPass(clock_.Now()).stale_slots, IsEmpty());  // already freed the first time
  auto plan = r_.Begin(MakeState({MakePod("b", "198.18.0.2"), MakePod("c", "198.18.0.3")}));
  ASSERT_THAT(plan.remove, ElementsAre("default/a"));
  r_.OnRemoved("default/a", false, clock_.Now());
  EXPECT_EQ(r_.Decide("default/c", 3, clock_.Now()).slot, 0u);
}

TEST_F(EnrollmentTest, StalePinnedSlotsAreRemovedAtTheEndOfThePass) {
  r_.SetPinnedSlots({{100, 0}, {200, 4}}, false);
  r_.Begin(MakeState({}));
  auto finish = r_.EndPass(clock_.Now());
  EXPECT_THAT(finish.stale_slots, ElementsAre(std::pair<uint64_t, uint32_t>{100, 0},
                                              std::pair<uint64_t, uint32_t>{200, 4}));
  r_.Begin(MakeState({}));
  EXPECT_THAT(r_.EndPass(clock_.Now()).stale_slots, IsEmpty());
}

TEST_F(EnrollmentTest, DataPlaneRestartResendsEveryEnrolledPod) {
  r_.OnSessionStart({});
  EnrollAll(r_, MakeState({MakePod("a", "198.18.0.1"), MakePod("b", "198.18.0.2")}), {1, 2},
            clock_.Now());
  r_.OnDataPlaneExit();
  EXPECT_FALSE(r_.connected());
  EXPECT_THAT(r_.OnSessionStart({}), ElementsAre("default/a", "default/b"));
  EXPECT_TRUE(r_.connected());
}

TEST_F(EnrollmentTest, HandedBackPodWithPinnedSlotIsAdoptedWithItsListeners) {
  r_.SetPinnedSlots({{42, 3}}, false);
  auto s = MakeState({MakePod("web", "198.18.0.1")});
  const std::string identity = "spiffe://cluster.local/ns/default/sa/default";
  r_.OnSessionStart({{"default/web", identity, 42, true}});
  r_.Begin(s);
  Decision d = r_.Decide("default/web", 42, clock_.Now());
  EXPECT_EQ(d.kind, Decision::kAdopt);
  EXPECT_EQ(d.slot, 3u);
  EXPECT_FALSE(EnrollmentReconciler::MustSend(d, identity));  // the data plane serves it already
  EXPECT_TRUE(EnrollmentReconciler::MustSend(d, "spiffe://new.example/ns/default/sa/default"));
  r_.OnEnrolled("default/web", {s.pods.begin()->second.netns_path, 42, d.slot, d.spiffe_id,
                                s.pods.begin()->second.ips});
  auto finish = r_.EndPass(clock_.Now());
  EXPECT_THAT(finish.stale_slots, IsEmpty());
  EXPECT_THAT(finish.release_handed_back, IsEmpty());
}

TEST_F(EnrollmentTest, WaypointProcessHandBackIsAdoptedAlongsideTheDataPlanes) {
  r_.SetPinnedSlots({{42, 3}, {43, 4}}, false);
  auto s = MakeState({MakePod("web", "198.18.0.1"), MakePod("wp", "198.18.0.2")});
  const std::string identity = "spiffe://cluster.local/ns/default/sa/default";
  EXPECT_THAT(r_.OnSessionStart({{"default/web", identity, 42, true}}), IsEmpty());
  r_.OnHandedBack({{"default/wp", identity, 43, true}});
  EXPECT_TRUE(r_.connected());  // the data plane's session, untouched by the waypoint's
  r_.Begin(s);
  EXPECT_EQ(r_.Decide("default/web", 42, clock_.Now()).kind, Decision::kAdopt);
  Decision d = r_.Decide("default/wp", 43, clock_.Now());
  EXPECT_EQ(d.kind, Decision::kAdopt);
  EXPECT_EQ(d.slot, 4u);
  EXPECT_FALSE(EnrollmentReconciler::MustSend(d, identity));
}

TEST_F(EnrollmentTest, HandedBackPodMissingAListenerGetsNewOnes) {
  r_.SetPinnedSlots({{42, 3}}, false);
  r_.OnSessionStart({{"default/web", "spiffe://cluster.local/ns/default/sa/default", 42, false}});
  r_.Begin(MakeState({MakePod("web", "198.18.0.1")}));
  Decision d = r_.Decide("default/web", 42, clock_.Now());
  EXPECT_EQ(d.kind, Decision::kCreate);
  EXPECT_EQ(d.slot, 3u);  // the pinned slot all the same
  EXPECT_TRUE(EnrollmentReconciler::MustSend(d, "spiffe://cluster.local/ns/default/sa/default"));
}

TEST_F(EnrollmentTest, HandedBackPodWithoutPinnedSlotIsAdoptedOnlyWhileMigrating) {
  r_.OnSessionStart({{"default/web", "id", 42, true}});
  r_.Begin(MakeState({MakePod("web", "198.18.0.1")}));
  EXPECT_EQ(r_.Decide("default/web", 42, clock_.Now()).kind, Decision::kCreate);

  EnrollmentReconciler migrating({kNode});
  migrating.SetPinnedSlots({}, true);
  migrating.OnSessionStart({{"default/web", "id", 42, true}});
  migrating.Begin(MakeState({MakePod("web", "198.18.0.1")}));
  Decision d = migrating.Decide("default/web", 42, clock_.Now());
  EXPECT_EQ(d.kind, Decision::kAdopt);
  EXPECT_EQ(d.slot, 0u);
}

TEST_F(EnrollmentTest, HandedBackPodNoLongerWantedIsReleased) {
  r_.OnSessionStart({{"default/gone", "id", 42, true}});
  r_.Begin(MakeState({}));
  auto finish = r_.EndPass(clock_.Now());
  EXPECT_THAT(finish.release_handed_back, ElementsAre("default/gone"));
  // Once: the next pass has nothing left to release.
  r_.Begin(MakeState({}));
  EXPECT_THAT(r_.EndPass(clock_.Now()).release_handed_back, IsEmpty());
}

TEST_F(EnrollmentTest, NetnsOfARemovedPodWaitsForTheDataPlaneRelease) {
  r_.OnSessionStart({});
  EnrollAll(r_, MakeState({MakePod("old", "198.18.0.1")}), {42}, clock_.Now());
  // The pod is replaced by one in the same netns.
  auto replacement = MakePod("new", "198.18.0.2");
  replacement.netns_path = "/var/run/netns/old";
  auto s = MakeState({replacement});
  auto plan = r_.Begin(s);
  ASSERT_THAT(plan.remove, ElementsAre("default/old"));
  r_.OnRemoved("default/old", true, clock_.Now());
  Decision d = r_.Decide("default/new", 42, clock_.Now());
  EXPECT_EQ(d.kind, Decision::kWait);
  EXPECT_TRUE(absl::StrContains(d.error, "default/old")) << d.error;
  r_.OnEnrollFailed("default/new", d.error, clock_.Now());
  auto finish = r_.EndPass(clock_.Now());
  ASSERT_TRUE(finish.retry_at.has_value());
  // The release is answered: retry now instead of at the interval.
  EXPECT_TRUE(r_.OnPodRemoved("default/old"));
  EXPECT_FALSE(r_.releasing(42));
  r_.Begin(s);
  EXPECT_EQ(r_.Decide("default/new", 42, clock_.Now()).kind, Decision::kCreate);
}

TEST_F(EnrollmentTest, RetryComesNoLaterThanTheReleaseTimeoutAndThenEnrollsAnyway) {
  EnrollmentReconciler r({kNode, absl::Seconds(10), absl::Seconds(5)});
  r.OnSessionStart({});
  EnrollAll(r, MakeState({MakePod("old", "198.18.0.1")}), {42}, clock_.Now());
  auto replacement = MakePod("new", "198.18.0.2");
  replacement.netns_path = "/var/run/netns/old";
  auto s = MakeState({replacement});
  auto plan = r.Begin(s);
  r.OnRemoved("default/old", true, clock_.Now());
  Decision d = r.Decide("default/new", 42, clock_.Now());
  ASSERT_EQ(d.kind, Decision::kWait);
  r.OnEnrollFailed("default/new", d.error, clock_.Now());
  auto finish = r.EndPass(clock_.Now());
  EXPECT_EQ(*finish.retry_at, clock_.Now() + absl::Seconds(5));  // the release deadline

  clock_.Advance(absl::Seconds(5));
  r.Begin(s);
  d = r.Decide("default/new", 42, clock_.Now());
  EXPECT_EQ(d.kind, Decision::kCreate);
  EXPECT_TRUE(absl::StrContains(d.warning, "did not confirm the removal of pod default/old"))
      << d.warning;
}

TEST_F(EnrollmentTest, LateAnswerToATimedOutRemovalDoesNotClearANewerOne) {
  // The pod is removed, comes back in the same netns after the release timed out, and is
  // removed again; then the data plane's answer to the first removal arrives. The netns must
  // still wait for the answer to the second.
  r_.OnSessionStart({});
  auto pod = MakePod("web", "198.18.0.1");
  EnrollAll(r_, MakeState({pod}), {42}, clock_.Now());
  r_.Begin(MakeState({}));
  r_.OnRemoved("default/web", true, clock_.Now());
  r_.EndPass(clock_.Now());

  clock_.Advance(absl::Seconds(6));
  auto d = EnrollAll(r_, MakeState({pod}), {42}, clock_.Now());
  ASSERT_EQ(d.size(), 1u);
  ASSERT_EQ(d[0].kind, Decision::kCreate);
  ASSERT_FALSE(d[0].warning.empty());

  r_.Begin(MakeState({}));
  r_.OnRemoved("default/web", true, clock_.Now());
  r_.EndPass(clock_.Now());
  ASSERT_TRUE(r_.releasing(42));

  EXPECT_FALSE(r_.OnPodRemoved("default/web"));  // the first removal's answer
  EXPECT_TRUE(r_.releasing(42));
  r_.Begin(MakeState({pod}));
  EXPECT_EQ(r_.Decide("default/web", 42, clock_.Now()).kind, Decision::kWait);
  r_.OnPodRemoved("default/web");  // the second's
  EXPECT_FALSE(r_.releasing(42));
  EXPECT_EQ(r_.Decide("default/web", 42, clock_.Now()).kind, Decision::kCreate);
}

TEST_F(EnrollmentTest, AnswerForARemovalNeverSentIsIgnored) {
  r_.OnSessionStart({});
  EnrollAll(r_, MakeState({MakePod("web", "198.18.0.1")}), {42}, clock_.Now());
  r_.Begin(MakeState({}));
  r_.OnRemoved("default/web", true, clock_.Now());
  EXPECT_FALSE(r_.OnPodRemoved("default/other"));
  EXPECT_TRUE(r_.releasing(42));
}

TEST_F(EnrollmentTest, NewDataPlaneSessionForgetsPendingRemovals) {
  r_.OnSessionStart({});
  EnrollAll(r_, MakeState({MakePod("web", "198.18.0.1")}), {42}, clock_.Now());
  r_.Begin(MakeState({}));
  r_.OnRemoved("default/web", true, clock_.Now());
  r_.EndPass(clock_.Now());
  ASSERT_TRUE(r_.releasing(42));
  ASSERT_EQ(r_.unanswered_removals(), 1u);
  r_.OnDataPlaneExit();
  r_.OnSessionStart({});  // a restarted data plane holds nothing of the pod
  EXPECT_FALSE(r_.releasing(42));
  EXPECT_EQ(r_.unanswered_removals(), 0u);
}

TEST_F(EnrollmentTest, RemovalNotToldToTheDataPlaneDoesNotHoldTheNetns) {
  EnrollAll(r_, MakeState({MakePod("web", "198.18.0.1")}), {42}, clock_.Now());
  r_.Begin(MakeState({}));
  r_.OnRemoved("default/web", false, clock_.Now());
  EXPECT_FALSE(r_.releasing(42));
}

TEST_F(EnrollmentTest, UnansweredRemovalsAreBounded) {
  EnrollmentReconciler r({kNode, absl::Seconds(2), absl::Seconds(5), 3});
  r.OnSessionStart({});
  auto pod = MakePod("web", "198.18.0.1");
  for (int i = 0; i < 10; ++i) {
    EnrollAll(r, MakeState({pod}), {static_cast<uint64_t>(100 + i)}, clock_.Now());
    r.Begin(MakeState({}));
    r.OnRemoved("default/web", true, clock_.Now());
    r.EndPass(clock_.Now());
  }
  EXPECT_EQ(r.unanswered_removals(), 3u);
}

TEST_F(EnrollmentTest, IdentityChangeIsResentOnlyToAConnectedDataPlane) {
  auto s = MakeState({MakePod("web", "198.18.0.1")});
  r_.OnSessionStart({});
  EnrollAll(r_, s, {42}, clock_.Now());
  EXPECT_THAT(r_.Begin(s).resend, IsEmpty());
  r_.EndPass(clock_.Now());

  s.mesh.trust_domain = "new.example";
  auto plan = r_.Begin(s);
  EXPECT_THAT(plan.resend, ElementsAre("default/web"));
  EXPECT_THAT(plan.enroll, IsEmpty());
  EXPECT_THAT(plan.remove, IsEmpty());
  r_.OnSent("default/web", state::SpiffeId(s.mesh, s.pods.begin()->second));
  r_.EndPass(clock_.Now());
  EXPECT_THAT(r_.Begin(s).resend, IsEmpty());
  r_.EndPass(clock_.Now());

  r_.OnDataPlaneExit();
  s.mesh.trust_domain = "third.example";
  EXPECT_THAT(r_.Begin(s).resend, IsEmpty());  // the session start re-sends everything
}

TEST_F(EnrollmentTest, RefusalIsReportedOncePerReasonAndNotRetried) {
  auto s = MakeState({MakePod("host", "198.18.0.1")});
  r_.Begin(s);
  EXPECT_TRUE(r_.OnRefused("default/host", "names the node's netns"));
  auto finish = r_.EndPass(clock_.Now());
  EXPECT_FALSE(finish.retry_at.has_value());
  EXPECT_EQ(r_.refused().at("default/host"), "names the node's netns");

  r_.Begin(s);
  EXPECT_FALSE(r_.OnRefused("default/host", "names the node's netns"));
  r_.EndPass(clock_.Now());
  r_.Begin(s);
  EXPECT_TRUE(r_.OnRefused("default/host", "names ambitd's netns"));
  r_.EndPass(clock_.Now());

  // A pass without the pod forgets the refusal.
  r_.Begin(MakeState({}));
  r_.EndPass(clock_.Now());
  EXPECT_THAT(r_.refused(), IsEmpty());
}

}  // namespace
}  // namespace ambit::node
