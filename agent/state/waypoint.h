#pragma once

// Which destinations use which waypoint, decided as istiod decides it, from the labels users
// already write:
//  - a waypoint is a Gateway of class istio-waypoint; its pods are the pods of its namespace
//    labelled gateway.networking.k8s.io/gateway-name=<gateway>, and its identities are theirs;
//  - istio.io/use-waypoint: <gateway> (with istio.io/use-waypoint-namespace: <ns>, else the
//    labelled object's namespace) on a Pod binds traffic addressed to the pod, on a Service
//    traffic addressed to the service; the object's own label wins over its Namespace's, and the
//    value "none" on the object opts it out of its namespace's waypoint;
//  - istio.io/waypoint-for on the Gateway says which of the two it takes: service (the default),
//    workload, all or none. A pod labelled with a service-only waypoint is not bound (with a
//    warning); one that only inherits it from its namespace is not bound, silently, as in istiod;
//  - a waypoint's own pods and services never use a waypoint.
// Where ambit differs: istiod drops the binding of a label naming a Gateway that does not exist
// (or is not of class istio-waypoint) until it is ready, so the traffic goes straight to the
// destination and skips the L7 policy it was labelled for. Here such a binding stays, to a
// waypoint without pods: traffic to the destination is refused until the waypoint exists, and a
// warning names the label (ztunnel itself answers a waypoint it cannot resolve with an error).
//
// Pure functions of a ClusterState: thread-compatible.

#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "agent/state/model.h"

namespace ambit::state {

inline constexpr char kUseWaypointLabel[] = "istio.io/use-waypoint";
inline constexpr char kUseWaypointNamespaceLabel[] = "istio.io/use-waypoint-namespace";
inline constexpr char kWaypointForLabel[] = "istio.io/waypoint-for";
inline constexpr char kGatewayNameLabel[] = "gateway.networking.k8s.io/gateway-name";
inline constexpr char kWaypointGatewayClass[] = "istio-waypoint";
// istiod's mark on the Services it creates for waypoints (gateway.istio.io/managed).
inline constexpr char kGatewayManagedLabel[] = "gateway.istio.io/managed";
inline constexpr char kMeshControllerValue[] = "istio.io-mesh-controller";
// The explicit opt-out of the bypass check, on a Pod: "true" lets the pod's tunnel accept
// connections that did not come through its waypoint (Istio's behaviour without a hand-written
// policy). Anything but "true" or "false" is reported and read as "false".
inline constexpr char kWaypointBypassAnnotation[] = "ambit.dev/allow-waypoint-bypass";

// istio.io/waypoint-for.
enum class WaypointTraffic { kService, kWorkload, kAll, kNone };

// "service", "workload", "all", "none"; nullopt for anything else.
std::optional<WaypointTraffic> ParseWaypointTraffic(std::string_view value);
const char* WaypointTrafficName(WaypointTraffic traffic);

// A Gateway's waypoint-for label, Istio's default (service) when absent or invalid.
WaypointTraffic TrafficOf(const Gateway& gateway);

// A problem found while resolving, reported like a config error of `object` (e.g. "Pod ns/a").
struct WaypointProblem {
  std::string source_file;
  std::string object;
  std::string field;
  std::string message;

  friend bool operator==(const WaypointProblem&, const WaypointProblem&) = default;
};

struct WaypointResolution {
  // Gateway keys ("namespace/name") by Pod::Key() and Service::Key(): traffic addressed to the
  // pod (resp. the service) goes through that waypoint. The gateway may be missing from
  // ClusterState::gateways (or not be a waypoint): the binding then has no pod (see above).
  std::map<std::string, std::string> workloads;
  std::map<std::string, std::string> services;
  // Every waypoint any binding names, with the Pod::Key() of its pods (sorted; empty: no pod).
  std::map<std::string, std::vector<std::string>> instances;
  // The pods that are instances of a waypoint (Gateway of class istio-waypoint), with its key:
  // where ambitd will run ambit-waypoint.
  std::map<std::string, std::string> instance_of;
  // Pod::Key() of the pods whose kWaypointBypassAnnotation is "true".
  std::set<std::string> bypass_allowed;
  std::vector<WaypointProblem> problems;
};

// Resolves every binding of `state`. Pods in state.ip_conflicts are neither bound nor instances.
WaypointResolution ResolveWaypoints(const ClusterState& state);

}  // namespace ambit::state
