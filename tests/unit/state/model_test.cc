#include "agent/state/model.h"

#include <optional>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::state {
namespace {

IpAddress Ip(const char* text) { return IpAddress::Parse(text).value(); }

Pod MakePod(std::string ns, std::string name) {
  Pod pod;
  pod.namespace_name = std::move(ns);
  pod.name = std::move(name);
  return pod;
}

TEST(ModelTest, DefaultsFollowKubernetesAndIstio) {
  Pod pod;
  EXPECT_EQ(pod.namespace_name, "default");
  EXPECT_EQ(pod.service_account, "default");
  MeshConfig mesh;
  EXPECT_EQ(mesh.trust_domain, "cluster.local");
  EXPECT_EQ(mesh.root_namespace, "istio-system");
  ServicePort port;
  EXPECT_EQ(port.protocol, "TCP");
}

TEST(ModelTest, KeysAreNamespaceSlashName) {
  EXPECT_EQ(MakePod("prod", "web-0").Key(), "prod/web-0");
  Service svc;
  svc.name = "web";
  EXPECT_EQ(svc.Key(), "default/web");
}

TEST(ModelTest, FindPodByIpMatchesEitherFamily) {
  ClusterState state;
  Pod a = MakePod("default", "a");
  a.ips = {Ip("198.18.0.10"), Ip("2001:2::10")};
  Pod b = MakePod("default", "b");
  b.ips = {Ip("198.18.0.11")};
  state.pods[a.Key()] = a;
  state.pods[b.Key()] = b;

  ASSERT_NE(state.FindPodByIp(Ip("198.18.0.10")), nullptr);
  EXPECT_EQ(state.FindPodByIp(Ip("198.18.0.10"))->name, "a");
  ASSERT_NE(state.FindPodByIp(Ip("2001:2::10")), nullptr);
  EXPECT_EQ(state.FindPodByIp(Ip("2001:2::10"))->name, "a");
  ASSERT_NE(state.FindPodByIp(Ip("198.18.0.11")), nullptr);
  EXPECT_EQ(state.FindPodByIp(Ip("198.18.0.11"))->name, "b");
  EXPECT_EQ(state.FindPodByIp(Ip("198.18.0.12")), nullptr);
  EXPECT_EQ(state.FindPodByIp(Ip("::ffff:198.18.0.11"))->name, "b");  // mapped form is the same
  EXPECT_EQ(ClusterState().FindPodByIp(Ip("198.18.0.10")), nullptr);
}

TEST(ModelTest, IsEnrolledNeedsThisNodeAndANetns) {
  ClusterState state;
  Pod pod = MakePod("default", "web");
  pod.node_name = "node-a";
  EXPECT_FALSE(IsEnrolled(pod, state, "node-a"));  // no netns annotation
  pod.netns_path = "/var/run/netns/web";
  EXPECT_TRUE(IsEnrolled(pod, state, "node-a"));
  EXPECT_FALSE(IsEnrolled(pod, state, "node-b"));
  EXPECT_FALSE(IsEnrolled(pod, state, ""));
  pod.node_name.clear();
  EXPECT_FALSE(IsEnrolled(pod, state, "node-a"));
  EXPECT_FALSE(IsEnrolled(pod, state, ""));  // unscheduled pods never match an empty node name
}

TEST(ModelTest, AmbientLabelEnrollsAPodWithoutNetnsAnnotation) {
  ClusterState state;
  Pod pod = MakePod("default", "web");
  pod.node_name = "node-a";
  EXPECT_FALSE(InMesh(pod, state));
  pod.labels["istio.io/dataplane-mode"] = "ambient";
  EXPECT_TRUE(InMesh(pod, state));
  EXPECT_TRUE(IsEnrolled(pod, state, "node-a"));
  EXPECT_FALSE(IsEnrolled(pod, state, "node-b"));
  pod.labels["istio.io/dataplane-mode"] = "sidecar";
  EXPECT_FALSE(InMesh(pod, state));
}

TEST(ModelTest, NamespaceAmbientLabelEnrollsItsPodsUnlessAPodOptsOut) {
  ClusterState state;
  Namespace ns;
  ns.name = "default";
  ns.labels["istio.io/dataplane-mode"] = "ambient";
  state.namespaces["default"] = ns;
  Pod pod = MakePod("default", "web");
  EXPECT_TRUE(InMesh(pod, state));
  EXPECT_FALSE(InMesh(MakePod("other", "web"), state));  // another namespace
  pod.labels["istio.io/dataplane-mode"] = "none";
  EXPECT_FALSE(InMesh(pod, state));
  pod.netns_path = "/var/run/netns/web";  // a named netns is captured whatever the labels say
  EXPECT_TRUE(InMesh(pod, state));
}

TEST(ModelTest, SpiffeIdUsesTrustDomainNamespaceAndServiceAccount) {
  Pod pod = MakePod("prod", "web-0");
  EXPECT_EQ(SpiffeId(MeshConfig(), pod), "spiffe://cluster.local/ns/prod/sa/default");
  pod.service_account = "web";
  MeshConfig mesh;
  mesh.trust_domain = "example.org";
  EXPECT_EQ(SpiffeId(mesh, pod), "spiffe://example.org/ns/prod/sa/web");
}

TEST(ModelTest, StatesCompareByValue) {
  ClusterState a;
  ClusterState b;
  EXPECT_EQ(a, b);
  Pod pod = MakePod("default", "web");
  a.pods[pod.Key()] = pod;
  EXPECT_NE(a, b);
  b.pods[pod.Key()] = pod;
  EXPECT_EQ(a, b);
  b.pods[pod.Key()].labels["app"] = "web";
  EXPECT_NE(a, b);
}

Pod PodAt(std::string name, const char* ip, std::optional<absl::Time> created,
          absl::Time seen = absl::FromUnixSeconds(1000), uint64_t load = 1) {
  Pod pod = MakePod("default", std::move(name));
  pod.ips = {Ip(ip)};
  pod.creation_time = created;
  pod.first_seen = seen;
  pod.first_seen_load = load;
  return pod;
}

TEST(ModelTest, IsOlderIsATotalOrderOverAgeLoadAndKey) {
  const absl::Time t = absl::FromUnixSeconds(1000);
  Pod created_early = PodAt("z", "198.18.0.1", t - absl::Hours(1));
  Pod seen_first = PodAt("y", "198.18.0.1", std::nullopt, t, 1);
  Pod seen_later_same_time = PodAt("a", "198.18.0.1", std::nullopt, t, 2);
  Pod created_late = PodAt("b", "198.18.0.1", t + absl::Hours(1));
  std::vector<Pod> order = {created_early, seen_first, seen_later_same_time, created_late};
  for (size_t i = 0; i < order.size(); ++i) {
    EXPECT_FALSE(IsOlder(order[i], order[i])) << i;
    for (size_t j = i + 1; j < order.size(); ++j) {
      EXPECT_TRUE(IsOlder(order[i], order[j])) << i << " " << j;
      EXPECT_FALSE(IsOlder(order[j], order[i])) << i << " " << j;
    }
  }
  // Same age and load: namespace/name decides.
  EXPECT_TRUE(IsOlder(PodAt("a", "198.18.0.1", t), PodAt("b", "198.18.0.1", t)));
}

TEST(ModelTest, ResolveIpConflictsKeepsTheOlderPodWhateverTheKeys) {
  const absl::Time t = absl::FromUnixSeconds(1000);
  ClusterState state;
  Pod newcomer = PodAt("a-newcomer", "198.18.0.5", t + absl::Minutes(1));
  newcomer.ips.push_back(Ip("198.18.0.6"));  // unclaimed by others, still not given out
  newcomer.source_file = "late.yaml";
  Pod holder = PodAt("z-holder", "198.18.0.5", t);
  holder.source_file = "pods.yaml";
  Pod bystander = PodAt("m", "198.18.0.7", std::nullopt);
  state.pods = {{newcomer.Key(), newcomer}, {holder.Key(), holder}, {bystander.Key(), bystander}};
  ResolveIpConflicts(&state);
  ASSERT_EQ(state.ip_conflicts.size(), 1u);
  const IpConflict& c = state.ip_conflicts.at("default/a-newcomer");
  EXPECT_EQ(c.ip, Ip("198.18.0.5"));
  EXPECT_EQ(c.holder, "default/z-holder");
  EXPECT_EQ(c.holder_file, "pods.yaml");
  EXPECT_EQ(c.holder_age, "created 1970-01-01T00:16:40.000Z");
  EXPECT_EQ(c.Summary(), "IP 198.18.0.5 held by default/z-holder");
  EXPECT_EQ(state.FindPodByIp(Ip("198.18.0.5"))->name, "z-holder");
  EXPECT_EQ(state.FindPodByIp(Ip("198.18.0.6")), nullptr);
  EXPECT_EQ(state.FindPodByIp(Ip("198.18.0.7"))->name, "m");
  EXPECT_FALSE(state.HasIpConflict("default/z-holder"));

  // Run again with the conflict gone: nothing stale is left.
  state.pods.erase("default/z-holder");
  ResolveIpConflicts(&state);
  EXPECT_TRUE(state.ip_conflicts.empty());
  EXPECT_EQ(state.FindPodByIp(Ip("198.18.0.5"))->name, "a-newcomer");
}

TEST(ModelTest, ResolveIpConflictsWithThreeClaimantsLeavesOutBothYoungerOnes) {
  const absl::Time t = absl::FromUnixSeconds(1000);
  ClusterState state;
  for (const auto& [name, at] : {std::pair{"c", t + absl::Seconds(2)},
                                 std::pair{"a", t + absl::Seconds(1)}, std::pair{"b", t}}) {
    Pod p = PodAt(name, "2001:2::5", std::nullopt, at);
    state.pods[p.Key()] = p;
  }
  ResolveIpConflicts(&state);
  EXPECT_EQ(state.FindPodByIp(Ip("2001:2::5"))->name, "b");
  ASSERT_EQ(state.ip_conflicts.size(), 2u);
  EXPECT_EQ(state.ip_conflicts.at("default/a").holder, "default/b");
  EXPECT_EQ(state.ip_conflicts.at("default/c").holder, "default/b");
  EXPECT_THAT(state.ip_conflicts.at("default/c").holder_age,
              ::testing::HasSubstr("first seen by this agent 1970-01-01T00:16:40.000Z"));
}

}  // namespace
}  // namespace ambit::state
