#include "agent/node/zds_workloads.h"

#include <fcntl.h>

#include <string>
#include <vector>

#include "agent/common/clock.h"
#include "agent/node/enrollment_pass.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_pod_host.h"

namespace ambit::node {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr char kNode[] = "node-a";

// A pod as the API server has it: no ambit.dev/netns, maybe no label, maybe no addresses yet.
state::Pod MakePod(const std::string& name, const std::string& ip = "", bool ambient = false) {
  state::Pod pod;
  pod.name = name;
  pod.node_name = kNode;
  if (!ip.empty()) pod.ips.push_back(*IpAddress::Parse(ip));
  if (ambient) pod.labels["istio.io/dataplane-mode"] = "ambient";
  return pod;
}

state::ClusterState MakeState(std::vector<state::Pod> pods) {
  state::ClusterState s;
  s.mesh.trust_domain = "cluster.local";
  for (auto& p : pods) s.pods[p.Key()] = std::move(p);
  return s;
}

ZdsWorkload Handed(const std::string& uid, const std::string& name, zds::Source source,
                   uint64_t cookie = 7, const std::string& netns_ip = "198.18.9.9") {
  ZdsWorkload w;
  w.uid = uid;
  w.source = source;
  w.namespace_name = "default";
  w.name = name;
  w.netns = UniqueFd(open("/dev/null", O_RDONLY | O_CLOEXEC));
  w.netns_cookie = cookie;
  w.addresses.push_back(*IpAddress::Parse(netns_ip));
  return w;
}

class ZdsWorkloadsTest : public ::testing::Test {
 protected:
  void SetUp() override { r_.OnSessionStart({}); }
  state::ClusterState Apply(const state::ClusterState& config,
                            std::vector<std::string>* gone = nullptr) {
    return zds_.Apply(config, kNode, gone);
  }
  void Pass(const state::ClusterState& s) { RunEnrollmentPass(r_, s, host_, clock_); }
  std::vector<std::string> SetUpUids() const {
    std::vector<std::string> out;
    for (const auto& c : host_.set_up) out.push_back(c.uid);
    return out;
  }

  ZdsWorkloads zds_;
  FakeClock clock_;
  FakePodHost host_;
  EnrollmentReconciler r_{EnrollmentReconciler::Options{kNode}};
};

TEST_F(ZdsWorkloadsTest, IstioCniPodIsInTheMeshWithoutTheLabelAndUsesTheHandedNetns) {
  auto config = MakeState({MakePod("web", "198.18.0.1")});
  Pass(Apply(config));
  EXPECT_THAT(host_.set_up, IsEmpty());  // not in the mesh, named no netns
  ASSERT_TRUE(zds_.Add(Handed("u1", "web", zds::Source::kIstioCni)).ok());
  auto s = Apply(config);
  const state::Pod& pod = s.pods.at("default/web");
  EXPECT_EQ(pod.netns_path, "zds:istio-cni/u1#0");
  EXPECT_EQ(zds_.ByMarker(pod.netns_path), zds_.ByUid("u1"));
  EXPECT_EQ(pod.ips[0].ToString(), "198.18.0.1");  // the object's addresses win
  Pass(s);
  EXPECT_THAT(host_.opened, ElementsAre("default/web"));
  EXPECT_THAT(SetUpUids(), ElementsAre("default/web"));
}

TEST_F(ZdsWorkloadsTest, AmbitCniPodNeedsTheMeshLabel) {
  ASSERT_TRUE(zds_.Add(Handed("u1", "web", zds::Source::kAmbitCni)).ok());
  auto plain = Apply(MakeState({MakePod("web", "198.18.0.1")}));
  EXPECT_EQ(plain.pods.at("default/web").netns_path, "");
  Pass(plain);
  EXPECT_THAT(host_.set_up, IsEmpty());
  auto ambient = Apply(MakeState({MakePod("web", "198.18.0.1", /*ambient=*/true)}));
  EXPECT_EQ(ambient.pods.at("default/web").netns_path, "zds:ambit-cni/u1#0");
  Pass(ambient);
  EXPECT_THAT(SetUpUids(), ElementsAre("default/web"));
}

TEST_F(ZdsWorkloadsTest, PodWithoutAddressesTakesTheNetnsAddressesUntilItsObjectHasSome) {
  ASSERT_TRUE(zds_.Add(Handed("u1", "web", zds::Source::kIstioCni, 7, "198.18.5.5")).ok());
  auto early = Apply(MakeState({MakePod("web")}));
  ASSERT_EQ(early.pods.at("default/web").ips.size(), 1u);
  EXPECT_EQ(early.pods.at("default/web").ips[0].ToString(), "198.18.5.5");
  Pass(early);
  auto later = Apply(MakeState({MakePod("web", "198.18.0.1")}));
  EXPECT_EQ(later.pods.at("default/web").ips[0].ToString(), "198.18.0.1");
  Pass(later);
  // Same netns marker: not removed and enrolled again (the agent re-sends the addresses).
  EXPECT_THAT(host_.removed, IsEmpty());
  EXPECT_THAT(SetUpUids(), ElementsAre("default/web"));
}

TEST_F(ZdsWorkloadsTest, AddOfAKnownUidReplacesTheNetnsAndReenrollsOnlyWhenItDiffers) {
  auto config = MakeState({MakePod("web", "198.18.0.1")});
  ASSERT_TRUE(zds_.Add(Handed("u1", "web", zds::Source::kIstioCni, 7)).ok());
  Pass(Apply(config));
  ASSERT_TRUE(zds_.Add(Handed("u1", "web", zds::Source::kIstioCni, 7)).ok());
  Pass(Apply(config));
  EXPECT_THAT(host_.removed, IsEmpty());
  ASSERT_TRUE(zds_.Add(Handed("u1", "web", zds::Source::kIstioCni, 8)).ok());
  auto s = Apply(config);
  EXPECT_EQ(s.pods.at("default/web").netns_path, "zds:istio-cni/u1#1");
  Pass(s);
  EXPECT_THAT(host_.removed, ElementsAre("default/web"));
  EXPECT_EQ(zds_.size(), 1u);
}

TEST_F(ZdsWorkloadsTest, RemovedWorkloadRemovesTheEnrollmentAndKeepsThePodOut) {
  auto config = MakeState({MakePod("web", "198.18.0.1", /*ambient=*/true)});
  ASSERT_TRUE(zds_.Add(Handed("u1", "web", zds::Source::kIstioCni)).ok());
  Pass(Apply(config));
  ASSERT_TRUE(zds_.Remove("u1"));
  auto s = Apply(config);
  // Labelled ambient, but its CNI side said it is gone: no search by IP brings it back.
  EXPECT_FALSE(state::InMesh(s.pods.at("default/web"), s));
  Pass(s);
  EXPECT_THAT(host_.removed, ElementsAre("default/web"));
  EXPECT_FALSE(zds_.Remove("u1"));
  // A new add brings it back.
  ASSERT_TRUE(zds_.Add(Handed("u2", "web", zds::Source::kIstioCni)).ok());
  EXPECT_EQ(Apply(config).pods.at("default/web").netns_path, "zds:istio-cni/u2#0");
}

TEST_F(ZdsWorkloadsTest, PodGoneFromTheConfigurationDropsItsWorkload) {
  ASSERT_TRUE(zds_.Add(Handed("u1", "web", zds::Source::kIstioCni)).ok());
  ASSERT_TRUE(zds_.Add(Handed("u2", "later", zds::Source::kIstioCni)).ok());
  std::vector<std::string> gone;
  Apply(MakeState({MakePod("web", "198.18.0.1")}), &gone);
  EXPECT_THAT(gone, IsEmpty());
  Apply(MakeState({}), &gone);
  // u2's pod was never seen: it may still be on its way into the configuration.
  EXPECT_THAT(gone, ElementsAre("u1"));
  EXPECT_EQ(zds_.ByUid("u1"), nullptr);
  EXPECT_NE(zds_.ByUid("u2"), nullptr);
}

TEST_F(ZdsWorkloadsTest, PodOnAnotherNodeIsNotTaken) {
  ASSERT_TRUE(zds_.Add(Handed("u1", "web", zds::Source::kIstioCni)).ok());
  state::Pod pod = MakePod("web", "198.18.0.1");
  pod.node_name = "node-b";
  auto s = Apply(MakeState({pod}));
  EXPECT_EQ(s.pods.at("default/web").netns_path, "");
}

TEST_F(ZdsWorkloadsTest, BoundedAndSourcesApart) {
  for (size_t i = 0; i < ZdsWorkloads::kMaxWorkloads; ++i) {
    ASSERT_TRUE(zds_.Add(Handed("u" + std::to_string(i), "p" + std::to_string(i),
                                i % 2 ? zds::Source::kIstioCni : zds::Source::kAmbitCni))
                    .ok());
  }
  absl::Status s = zds_.Add(Handed("one-more", "x", zds::Source::kIstioCni));
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_NE(s.message().find("512 ZDS workloads"), std::string::npos) << s;
  // Replacing a known uid is always possible.
  EXPECT_TRUE(zds_.Add(Handed("u0", "p0", zds::Source::kAmbitCni, 99)).ok());
  EXPECT_EQ(zds_.UidsOf(zds::Source::kIstioCni).size(), ZdsWorkloads::kMaxWorkloads / 2);
}

TEST_F(ZdsWorkloadsTest, InPlaceApplyKeepsOnlyTheChangedPodsAndRestoresTheConfiguration) {
  // The agent holds the configuration's pods once: the overlay changes the state in place and
  // keeps the configuration's version of what it changed, which Restore puts back exactly.
  const auto config = MakeState({MakePod("web", "", /*ambient=*/true), MakePod("gone", "", true),
                                 MakePod("peer", "198.18.0.9")});
  ASSERT_TRUE(zds_.Add(Handed("u1", "web", zds::Source::kAmbitCni)).ok());
  ASSERT_TRUE(zds_.Add(Handed("u2", "gone", zds::Source::kAmbitCni, 8, "198.18.9.8")).ok());
  state::ClusterState state = config;
  std::map<std::string, state::Pod> originals;
  zds_.ApplyInPlace(&state, kNode, nullptr, &originals);
  EXPECT_EQ(state, Apply(config));  // the same as the copying form
  EXPECT_THAT(originals, ::testing::SizeIs(2));
  EXPECT_EQ(originals.at("default/web"), config.pods.at("default/web"));
  EXPECT_FALSE(originals.contains("default/peer"));  // untouched pods are not copied
  EXPECT_EQ(state.pods.at("default/web").netns_path, zds_.ByUid("u1")->Marker());

  // A workload removed: the configuration restored, the overlay applied anew.
  ASSERT_TRUE(zds_.Remove("u2"));
  ZdsWorkloads::Restore(&state, &originals);
  EXPECT_EQ(state, config);
  EXPECT_THAT(originals, IsEmpty());
  zds_.ApplyInPlace(&state, kNode, nullptr, &originals);
  EXPECT_EQ(state.pods.at("default/gone").labels.at("istio.io/dataplane-mode"), "none");
  EXPECT_EQ(originals.at("default/gone"), config.pods.at("default/gone"));
  ZdsWorkloads::Restore(&state, &originals);
  EXPECT_EQ(state, config);
}

}  // namespace
}  // namespace ambit::node
