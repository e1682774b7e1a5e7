#include "agent/state/model.h"

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
  Pod pod = MakePod("default", "web");
  pod.node_name = "node-a";
  EXPECT_FALSE(IsEnrolled(pod, "node-a"));  // no netns annotation
  pod.netns_path = "/var/run/netns/web";
  EXPECT_TRUE(IsEnrolled(pod, "node-a"));
  EXPECT_FALSE(IsEnrolled(pod, "node-b"));
  EXPECT_FALSE(IsEnrolled(pod, ""));
  pod.node_name.clear();
  EXPECT_FALSE(IsEnrolled(pod, "node-a"));
  EXPECT_FALSE(IsEnrolled(pod, ""));  // unscheduled pods never match an empty node name
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

}  // namespace
}  // namespace ambit::state
