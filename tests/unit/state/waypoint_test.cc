#include "agent/state/waypoint.h"

#include <string>
#include <utility>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::state {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

using Labels = std::map<std::string, std::string>;

class WaypointTest : public ::testing::Test {
 protected:
  Pod& AddPod(const std::string& ns, const std::string& name, Labels labels = {}) {
    Pod pod;
    pod.namespace_name = ns;
    pod.name = name;
    pod.labels = std::move(labels);
    pod.source_file = "pods.yaml";
    return state_.pods[pod.Key()] = pod;
  }
  Service& AddService(const std::string& ns, const std::string& name, Labels labels = {}) {
    Service svc;
    svc.namespace_name = ns;
    svc.name = name;
    svc.labels = std::move(labels);
    svc.source_file = "services.yaml";
    return state_.services[svc.Key()] = svc;
  }
  void AddNamespace(const std::string& name, Labels labels) {
    state_.namespaces[name] = Namespace{name, std::move(labels), {}, "ns.yaml"};
  }
  // A waypoint with one pod (labelled gateway-name, as its Deployment's pods are).
  Gateway& AddWaypoint(const std::string& ns, const std::string& name,
                       std::optional<std::string> waypoint_for = std::nullopt,
                       bool with_pod = true) {
    Gateway gw;
    gw.namespace_name = ns;
    gw.name = name;
    gw.gateway_class = kWaypointGatewayClass;
    if (waypoint_for) gw.labels[kWaypointForLabel] = *waypoint_for;
    gw.source_file = "gateways.yaml";
    if (with_pod) AddPod(ns, name + "-pod", {{kGatewayNameLabel, name}});
    return state_.gateways[gw.Key()] = gw;
  }
  static Labels Use(const std::string& gateway) { return {{kUseWaypointLabel, gateway}}; }

  std::vector<std::string> Problems(const WaypointResolution& r) {
    std::vector<std::string> out;
    for (const auto& p : r.problems) out.push_back(p.object + ": " + p.message);
    return out;
  }

  ClusterState state_;
};

TEST_F(WaypointTest, TrafficTypeNamesRoundTrip) {
  for (auto t : {WaypointTraffic::kService, WaypointTraffic::kWorkload, WaypointTraffic::kAll,
                 WaypointTraffic::kNone}) {
    EXPECT_EQ(ParseWaypointTraffic(WaypointTrafficName(t)), t);
  }
  EXPECT_EQ(ParseWaypointTraffic("Service"), std::nullopt);
  Gateway gw;
  EXPECT_EQ(TrafficOf(gw), WaypointTraffic::kService);  // Istio's default
}

TEST_F(WaypointTest, NamespaceLabelBindsServicesButNotPodsOfAServiceWaypoint) {
  AddWaypoint("prod", "wp");  // waypoint-for defaults to service
  AddNamespace("prod", Use("wp"));
  AddPod("prod", "api");
  AddService("prod", "api");
  WaypointResolution r = ResolveWaypoints(state_);
  EXPECT_THAT(r.services, ElementsAre(Pair("prod/api", "prod/wp")));
  EXPECT_THAT(r.workloads, IsEmpty());  // inherited and service-only: silently not bound
  EXPECT_THAT(r.instances, ElementsAre(Pair("prod/wp", ElementsAre("prod/wp-pod"))));
  EXPECT_THAT(r.instance_of, ElementsAre(Pair("prod/wp-pod", "prod/wp")));
  EXPECT_THAT(Problems(r), IsEmpty());
}

TEST_F(WaypointTest, PodLabelNamingAServiceWaypointIsReported) {
  AddWaypoint("prod", "wp", "service");
  AddPod("prod", "api", Use("wp"));
  WaypointResolution r = ResolveWaypoints(state_);
  EXPECT_THAT(r.workloads, IsEmpty());
  EXPECT_THAT(Problems(r),
              ElementsAre(AllOf(HasSubstr("Pod prod/api"), HasSubstr("takes service traffic"))));
}

TEST_F(WaypointTest, WaypointForDecidesWhichTrafficIsBound) {
  struct Row {
    std::optional<std::string> waypoint_for;
    bool pod_bound, service_bound;
  };
  for (const Row& row :
       {Row{std::nullopt, false, true}, Row{"service", false, true}, Row{"workload", true, false},
        Row{"all", true, true}, Row{"none", false, false}}) {
    state_ = {};
    AddWaypoint("prod", "wp", row.waypoint_for);
    AddNamespace("prod", Use("wp"));
    AddPod("prod", "api");
    AddService("prod", "api");
    WaypointResolution r = ResolveWaypoints(state_);
    SCOPED_TRACE(row.waypoint_for.value_or("(absent)"));
    EXPECT_EQ(r.workloads.contains("prod/api"), row.pod_bound);
    EXPECT_EQ(r.services.contains("prod/api"), row.service_bound);
  }
}

TEST_F(WaypointTest, ObjectLabelWinsOverNamespaceAndNoneOptsOut) {
  AddWaypoint("prod", "ns-wp", "all");
  AddWaypoint("prod", "own-wp", "all");
  AddNamespace("prod", Use("ns-wp"));
  AddPod("prod", "own", Use("own-wp"));
  AddPod("prod", "opted-out", Use("none"));
  AddPod("prod", "inherits");
  AddService("prod", "own", Use("own-wp"));
  AddService("prod", "opted-out", Use("none"));
  AddService("prod", "inherits");
  WaypointResolution r = ResolveWaypoints(state_);
  EXPECT_THAT(r.workloads,
              ElementsAre(Pair("prod/inherits", "prod/ns-wp"), Pair("prod/own", "prod/own-wp")));
  EXPECT_THAT(r.services,
              ElementsAre(Pair("prod/inherits", "prod/ns-wp"), Pair("prod/own", "prod/own-wp")));
}

TEST_F(WaypointTest, NoneOnTheNamespaceIsNoLabel) {
  AddNamespace("prod", Use("none"));
  AddPod("prod", "api");
  AddService("prod", "api");
  WaypointResolution r = ResolveWaypoints(state_);
  EXPECT_THAT(r.workloads, IsEmpty());
  EXPECT_THAT(r.services, IsEmpty());
  EXPECT_THAT(Problems(r), IsEmpty());
}

TEST_F(WaypointTest, UseWaypointNamespaceNamesAnotherNamespace) {
  AddWaypoint("infra", "shared", "all");
  Labels labels = Use("shared");
  labels[kUseWaypointNamespaceLabel] = "infra";
  AddPod("prod", "api", labels);
  AddNamespace("dev", labels);
  AddService("dev", "web");
  WaypointResolution r = ResolveWaypoints(state_);
  EXPECT_THAT(r.workloads, ElementsAre(Pair("prod/api", "infra/shared")));
  EXPECT_THAT(r.services, ElementsAre(Pair("dev/web", "infra/shared")));
}

// istiod drops these bindings until the waypoint is ready (traffic then skips its policy); here
// they stay, to a waypoint with no pod, so the data plane refuses the traffic. Reported.
TEST_F(WaypointTest, MissingOrNonWaypointGatewayStaysBoundWithoutPods) {
  Gateway other;
  other.namespace_name = "prod";
  other.name = "ingress";
  other.gateway_class = "istio";
  state_.gateways[other.Key()] = other;
  AddPod("prod", "a", Use("typo"));
  AddPod("prod", "b", Use("ingress"));
  AddService("prod", "c", Use("typo"));
  WaypointResolution r = ResolveWaypoints(state_);
  EXPECT_THAT(r.workloads,
              ElementsAre(Pair("prod/a", "prod/typo"), Pair("prod/b", "prod/ingress")));
  EXPECT_THAT(r.services, ElementsAre(Pair("prod/c", "prod/typo")));
  EXPECT_THAT(r.instances,
              ElementsAre(Pair("prod/ingress", IsEmpty()), Pair("prod/typo", IsEmpty())));
  EXPECT_THAT(
      Problems(r),
      UnorderedElementsAre(AllOf(HasSubstr("Pod prod/a"), HasSubstr("is not defined")),
                           AllOf(HasSubstr("Pod prod/b"), HasSubstr("gatewayClassName 'istio'")),
                           AllOf(HasSubstr("Service prod/c"), HasSubstr("is not defined"))));
}

TEST_F(WaypointTest, WaypointWithoutPodsIsReported) {
  AddWaypoint("prod", "wp", "all", /*with_pod=*/false);
  // A pod of another namespace with the label is no instance: the Deployment lives with its
  // Gateway.
  AddPod("dev", "stray", {{kGatewayNameLabel, "wp"}});
  AddPod("prod", "api", Use("wp"));
  WaypointResolution r = ResolveWaypoints(state_);
  EXPECT_THAT(r.workloads, ElementsAre(Pair("prod/api", "prod/wp")));
  EXPECT_THAT(r.instances, ElementsAre(Pair("prod/wp", IsEmpty())));
  EXPECT_THAT(r.instance_of, IsEmpty());
  EXPECT_THAT(Problems(r),
              ElementsAre(AllOf(HasSubstr("Gateway prod/wp"), HasSubstr("has no instance"))));
}

TEST_F(WaypointTest, WaypointsOwnPodsAndServicesUseNoWaypoint) {
  AddWaypoint("prod", "wp", "all");
  AddNamespace("prod", Use("wp"));
  AddService("prod", "wp", {{kGatewayManagedLabel, kMeshControllerValue}});
  WaypointResolution r = ResolveWaypoints(state_);
  EXPECT_THAT(r.workloads, IsEmpty());
  EXPECT_THAT(r.services, IsEmpty());
}

TEST_F(WaypointTest, PodsThatLostTheirAddressAreLeftOut) {
  AddWaypoint("prod", "wp", "all");
  AddPod("prod", "api", Use("wp"));
  state_.ip_conflicts["prod/api"] = IpConflict{};
  state_.ip_conflicts["prod/wp-pod"] = IpConflict{};
  WaypointResolution r = ResolveWaypoints(state_);
  EXPECT_THAT(r.workloads, IsEmpty());
  EXPECT_THAT(r.instance_of, IsEmpty());
}

TEST_F(WaypointTest, BypassAnnotationIsTheOptOut) {
  AddPod("prod", "open").annotations[kWaypointBypassAnnotation] = "true";
  AddPod("prod", "closed").annotations[kWaypointBypassAnnotation] = "false";
  AddPod("prod", "typo").annotations[kWaypointBypassAnnotation] = "yes";
  WaypointResolution r = ResolveWaypoints(state_);
  EXPECT_THAT(r.bypass_allowed, ElementsAre("prod/open"));
  EXPECT_THAT(Problems(r),
              ElementsAre(AllOf(HasSubstr("Pod prod/typo"), HasSubstr("read as 'false'"))));
}

}  // namespace
}  // namespace ambit::state
