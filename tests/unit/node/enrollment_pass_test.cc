#include "agent/node/enrollment_pass.h"

#include <string>
#include <vector>

#include "agent/common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_pod_host.h"

namespace ambit::node {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using Kind = EnrollmentReconciler::Decision::Kind;

constexpr char kNode[] = "node-a";

state::Pod MakePod(const std::string& name, const std::string& ip) {
  state::Pod pod;
  pod.name = name;
  pod.node_name = kNode;
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

class EnrollmentPassTest : public ::testing::Test {
 protected:
  void SetUp() override { r_.OnSessionStart({}); }
  std::optional<absl::Time> Pass(const state::ClusterState& s) {
    return RunEnrollmentPass(r_, s, host_, clock_);
  }

  FakeClock clock_;
  FakePodHost host_;
  EnrollmentReconciler r_{EnrollmentReconciler::Options{kNode}};
};

TEST_F(EnrollmentPassTest, FailedSetUpIsRetriedWithBackOffUntilItSucceeds) {
  auto s = MakeState({MakePod("web", "198.18.0.1")});
  host_.set_up_errors["default/web"] = absl::InternalError("bind 15001: address in use");
  auto retry = Pass(s);
  ASSERT_TRUE(retry.has_value());
  EXPECT_EQ(*retry, clock_.Now() + absl::Seconds(2));
  EXPECT_EQ(r_.failed().at("default/web"), "bind 15001: address in use");
  EXPECT_THAT(r_.enrolled(), IsEmpty());

  clock_.Advance(absl::Seconds(2));
  host_.set_up_errors.clear();
  EXPECT_FALSE(Pass(s).has_value());
  EXPECT_TRUE(r_.enrolled().contains("default/web"));
  EXPECT_FALSE(r_.has_failures());
  ASSERT_EQ(host_.set_up.size(), 2u);
  EXPECT_TRUE(host_.set_up[1].send);
  EXPECT_THAT(host_.serving, ElementsAre("default/web"));
}

TEST_F(EnrollmentPassTest, NetnsThatCannotBeOpenedIsRetriedButTheNodesOwnIsRefused) {
  auto s = MakeState({MakePod("missing", "198.18.0.1"), MakePod("host", "198.18.0.2")});
  host_.open_errors["/var/run/netns/missing"] = absl::UnavailableError("no such file");
  host_.open_errors["/var/run/netns/host"] =
      absl::PermissionDeniedError("names the node's own network namespace");
  auto retry = Pass(s);
  ASSERT_TRUE(retry.has_value());
  EXPECT_TRUE(r_.failed().contains("default/missing"));
  EXPECT_FALSE(r_.failed().contains("default/host"));
  EXPECT_TRUE(r_.refused().contains("default/host"));
  EXPECT_THAT(host_.set_up, IsEmpty());

  host_.open_errors.erase("/var/run/netns/missing");
  EXPECT_FALSE(Pass(s).has_value());  // the refused pod does not keep a retry going
  EXPECT_TRUE(r_.enrolled().contains("default/missing"));
}

TEST_F(EnrollmentPassTest, PodDeletedWhileItsEnrollmentFailsIsDropped) {
  host_.set_up_errors["default/web"] = absl::InternalError("routing");
  ASSERT_TRUE(Pass(MakeState({MakePod("web", "198.18.0.1")})).has_value());
  EXPECT_FALSE(Pass(MakeState({})).has_value());
  EXPECT_THAT(host_.removed, IsEmpty());
  EXPECT_FALSE(r_.has_failures());
}

TEST_F(EnrollmentPassTest, PodsEnrolledWithoutADataPlaneAreSentWhenOneConnects) {
  r_.OnDataPlaneExit();
  host_.connected = false;
  Pass(MakeState({MakePod("a", "198.18.0.1"), MakePod("b", "198.18.0.2")}));
  ASSERT_EQ(host_.set_up.size(), 2u);
  EXPECT_FALSE(host_.set_up[0].send);
  EXPECT_FALSE(host_.set_up[1].send);
  EXPECT_EQ(r_.enrolled().at("default/a").spiffe_id, "");
  host_.connected = true;
  EXPECT_THAT(r_.OnSessionStart({}), ElementsAre("default/a", "default/b"));
}

TEST_F(EnrollmentPassTest, HandedBackPodIsAdoptedAndAnUnwantedOneReleased) {
  EnrollmentReconciler r({kNode});
  r.SetPinnedSlots({{500, 2}, {600, 3}}, false);
  host_.cookies["/var/run/netns/web"] = 500;
  r.OnSessionStart(
      {{"default/web", host_.identity, 500, true}, {"default/gone", host_.identity, 600, true}});
  EXPECT_FALSE(
      RunEnrollmentPass(r, MakeState({MakePod("web", "198.18.0.1")}), host_, clock_).has_value());
  ASSERT_EQ(host_.set_up.size(), 1u);
  EXPECT_EQ(host_.set_up[0].kind, Kind::kAdopt);
  EXPECT_EQ(host_.set_up[0].slot, 2u);
  EXPECT_FALSE(host_.set_up[0].send);  // the data plane serves it with this identity already
  EXPECT_EQ(r.enrolled().at("default/web").spiffe_id, host_.identity);
  EXPECT_THAT(host_.released, ElementsAre("default/gone"));
  EXPECT_THAT(host_.stale, ElementsAre(std::pair<uint64_t, uint32_t>{600, 3}));
  EXPECT_EQ(host_.dropped_handed_back, 1);
}

TEST_F(EnrollmentPassTest, ReplacementInTheSameNetnsWaitsForTheReleaseThenRetriesAtOnce) {
  Pass(MakeState({MakePod("old", "198.18.0.1")}));
  auto replacement = MakePod("new", "198.18.0.2");
  replacement.netns_path = "/var/run/netns/old";
  auto s = MakeState({replacement});
  auto retry = Pass(s);
  EXPECT_THAT(host_.removed, ElementsAre("default/old"));
  ASSERT_TRUE(retry.has_value());
  EXPECT_TRUE(r_.failed().contains("default/new"));
  EXPECT_EQ(host_.set_up.size(), 1u);  // only the old pod's

  EXPECT_TRUE(r_.OnPodRemoved("default/old"));
  EXPECT_FALSE(Pass(s).has_value());
  EXPECT_TRUE(r_.enrolled().contains("default/new"));
}

TEST_F(EnrollmentPassTest, RemovalWithoutADataPlaneDoesNotHoldTheNetns) {
  Pass(MakeState({MakePod("old", "198.18.0.1")}));
  r_.OnDataPlaneExit();
  host_.connected = false;
  auto replacement = MakePod("new", "198.18.0.2");
  replacement.netns_path = "/var/run/netns/old";
  EXPECT_FALSE(Pass(MakeState({replacement})).has_value());
  EXPECT_TRUE(r_.enrolled().contains("default/new"));
}

TEST_F(EnrollmentPassTest, IdentityChangeThatCannotBeSentIsTriedAgainNextPass) {
  auto s = MakeState({MakePod("web", "198.18.0.1")});
  Pass(s);
  s.mesh.trust_domain = "new.example";
  host_.identity = "spiffe://new.example/ns/default/sa/default";
  host_.resend_errors["default/web"] = absl::UnavailableError("control socket closed");
  Pass(s);
  EXPECT_THAT(host_.resent, ElementsAre("default/web"));
  host_.resend_errors.clear();
  Pass(s);
  EXPECT_THAT(host_.resent, ElementsAre("default/web", "default/web"));
  EXPECT_EQ(r_.enrolled().at("default/web").spiffe_id, host_.identity);
  Pass(s);
  EXPECT_EQ(host_.resent.size(), 2u);
}

TEST_F(EnrollmentPassTest, PassOverTheLastGoodStateChangesNothing) {
  // A configuration error leaves the loader's last good objects in the state: the pass that
  // follows must leave every enrolled pod alone.
  auto s = MakeState({MakePod("a", "198.18.0.1"), MakePod("b", "198.18.0.2")});
  Pass(s);
  ASSERT_EQ(host_.set_up.size(), 2u);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(Pass(s).has_value());
  EXPECT_EQ(host_.set_up.size(), 2u);
  EXPECT_THAT(host_.opened, ElementsAre("default/a", "default/b"));
  EXPECT_THAT(host_.removed, IsEmpty());
  EXPECT_THAT(host_.resent, IsEmpty());
  EXPECT_EQ(r_.enrolled().size(), 2u);
}

}  // namespace
}  // namespace ambit::node
