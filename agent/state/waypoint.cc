#include "agent/state/waypoint.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ambit::state {
namespace {

std::string Label(const std::map<std::string, std::string>& labels, const char* key) {
  auto it = labels.find(std::string(key));
  return it == labels.end() ? std::string() : it->second;
}

bool HasLabel(const std::map<std::string, std::string>& labels, const char* key) {
  return labels.contains(std::string(key));
}

// What an object's istio.io/use-waypoint says.
struct UseWaypoint {
  enum class Kind { kAbsent, kNone, kNamed };
  Kind kind = Kind::kAbsent;
  std::string gateway;  // "namespace/name" when kNamed
};

UseWaypoint ReadUseWaypoint(const std::map<std::string, std::string>& labels,
                            const std::string& default_namespace) {
  if (!HasLabel(labels, kUseWaypointLabel)) return {};
  const std::string name = Label(labels, kUseWaypointLabel);
  // Istio reserves the word: a waypoint called "none" cannot be used.
  if (name == "none") return {UseWaypoint::Kind::kNone, ""};
  std::string ns = default_namespace;
  if (HasLabel(labels, kUseWaypointNamespaceLabel)) {
    ns = Label(labels, kUseWaypointNamespaceLabel);
  }
  return {UseWaypoint::Kind::kNamed, absl::StrCat(ns, "/", name)};
}

// Where a binding came from, for messages.
struct Found {
  std::string gateway;
  bool own_label = false;  // on the object itself, not inherited from its Namespace
};

std::optional<Found> Lookup(const ClusterState& state, const std::string& namespace_name,
                            const std::map<std::string, std::string>& labels) {
  UseWaypoint own = ReadUseWaypoint(labels, namespace_name);
  if (own.kind == UseWaypoint::Kind::kNone) return std::nullopt;
  if (own.kind == UseWaypoint::Kind::kNamed) return Found{own.gateway, true};
  auto ns = state.namespaces.find(namespace_name);
  if (ns == state.namespaces.end()) return std::nullopt;
  // A Namespace's "none" means nothing more than no label.
  UseWaypoint inherited = ReadUseWaypoint(ns->second.labels, namespace_name);
  if (inherited.kind != UseWaypoint::Kind::kNamed) return std::nullopt;
  return Found{inherited.gateway, false};
}

const Gateway* FindWaypoint(const ClusterState& state, const std::string& key) {
  auto it = state.gateways.find(key);
  if (it == state.gateways.end() || it->second.gateway_class != kWaypointGatewayClass) {
    return nullptr;
  }
  return &it->second;
}

bool Takes(WaypointTraffic traffic, WaypointTraffic wanted) {
  return traffic == WaypointTraffic::kAll || traffic == wanted;
}

}  // namespace

std::optional<WaypointTraffic> ParseWaypointTraffic(std::string_view value) {
  for (WaypointTraffic t : {WaypointTraffic::kService, WaypointTraffic::kWorkload,
                            WaypointTraffic::kAll, WaypointTraffic::kNone}) {
    if (value == WaypointTrafficName(t)) return t;
  }
  return std::nullopt;
}

const char* WaypointTrafficName(WaypointTraffic traffic) {
  switch (traffic) {
    case WaypointTraffic::kService:
      return "service";
    case WaypointTraffic::kWorkload:
      return "workload";
    case WaypointTraffic::kAll:
      return "all";
    case WaypointTraffic::kNone:
      return "none";
  }
  return "none";
}

WaypointTraffic TrafficOf(const Gateway& gateway) {
  auto it = gateway.labels.find(std::string(kWaypointForLabel));
  if (it == gateway.labels.end()) return WaypointTraffic::kService;
  return ParseWaypointTraffic(it->second).value_or(WaypointTraffic::kService);
}

WaypointResolution ResolveWaypoints(const ClusterState& state) {
  WaypointResolution out;
  // Instances first: a waypoint's own pods are never steered to a waypoint.
  for (const auto& [key, pod] : state.pods) {
    if (state.HasIpConflict(key)) continue;
    const std::string gateway = Label(pod.labels, kGatewayNameLabel);
    if (gateway.empty()) continue;
    const std::string gateway_key = absl::StrCat(pod.namespace_name, "/", gateway);
    if (FindWaypoint(state, gateway_key) != nullptr) out.instance_of[key] = gateway_key;
  }

  // A binding to gateway_key by `object`: a warning when it cannot be served as declared.
  auto bind = [&](const std::string& gateway_key, const std::string& source_file,
                  const std::string& object, const Found& found) {
    const std::string field = absl::StrCat("metadata.labels[", kUseWaypointLabel, "]");
    const std::string how =
        found.own_label ? "" : absl::StrCat(" (inherited from its Namespace's label)");
    auto gw = state.gateways.find(gateway_key);
    if (gw == state.gateways.end()) {
      out.problems.push_back({source_file, object, field,
                              absl::StrCat("Gateway ", gateway_key, how,
                                           " is not defined: traffic to it is refused until the "
                                           "waypoint exists")});
    } else if (gw->second.gateway_class != kWaypointGatewayClass) {
      out.problems.push_back(
          {source_file, object, field,
           absl::StrCat("Gateway ", gateway_key, how, " has gatewayClassName '",
                        gw->second.gateway_class, "', not '", kWaypointGatewayClass,
                        "': it is no waypoint, and traffic to it is refused until it is one")});
    }
    out.instances.try_emplace(gateway_key);
  };

  for (const auto& [key, pod] : state.pods) {
    if (state.HasIpConflict(key) || out.instance_of.contains(key)) continue;
    const std::string object = absl::StrCat("Pod ", key);
    if (HasLabel(pod.annotations, kWaypointBypassAnnotation)) {
      const std::string value = Label(pod.annotations, kWaypointBypassAnnotation);
      if (value == "true") {
        out.bypass_allowed.insert(key);
      } else if (value != "false") {
        out.problems.push_back(
            {pod.source_file, object,
             absl::StrCat("metadata.annotations[", kWaypointBypassAnnotation, "]"),
             absl::StrCat("'", value,
                          "' is neither 'true' nor 'false'; read as 'false' (only the waypoint "
                          "may connect)")});
      }
    }
    std::optional<Found> found = Lookup(state, pod.namespace_name, pod.labels);
    if (!found) continue;
    const Gateway* gw = FindWaypoint(state, found->gateway);
    // A Gateway that is missing or no waypoint has no declared traffic: fail closed, bind.
    if (gw != nullptr && !Takes(TrafficOf(*gw), WaypointTraffic::kWorkload)) {
      if (found->own_label) {
        out.problems.push_back(
            {pod.source_file, object, absl::StrCat("metadata.labels[", kUseWaypointLabel, "]"),
             absl::StrCat("waypoint ", found->gateway, " takes ",
                          WaypointTrafficName(TrafficOf(*gw)), " traffic (", kWaypointForLabel,
                          "), not workload traffic: traffic to the pod does not go through it")});
      }
      continue;
    }
    bind(found->gateway, pod.source_file, object, *found);
    out.workloads[key] = found->gateway;
  }

  for (const auto& [key, svc] : state.services) {
    if (Label(svc.labels, kGatewayManagedLabel) == kMeshControllerValue) continue;
    std::optional<Found> found = Lookup(state, svc.namespace_name, svc.labels);
    if (!found) continue;
    const std::string object = absl::StrCat("Service ", key);
    const Gateway* gw = FindWaypoint(state, found->gateway);
    if (gw != nullptr && !Takes(TrafficOf(*gw), WaypointTraffic::kService)) {
      out.problems.push_back(
          {svc.source_file, object, absl::StrCat("metadata.labels[", kUseWaypointLabel, "]"),
           absl::StrCat("waypoint ", found->gateway, " takes ", WaypointTrafficName(TrafficOf(*gw)),
                        " traffic (", kWaypointForLabel,
                        "), not service traffic: traffic to the service does not go through it")});
      continue;
    }
    bind(found->gateway, svc.source_file, object, *found);
    out.services[key] = found->gateway;
  }

  for (const auto& [pod, gateway] : out.instance_of) {
    auto it = out.instances.find(gateway);
    if (it != out.instances.end()) it->second.push_back(pod);
  }
  for (auto& [gateway, pods] : out.instances) std::sort(pods.begin(), pods.end());

  // Every waypoint, used or not, is checked: one without pods is a deployment waiting to happen.
  for (const auto& [key, gw] : state.gateways) {
    if (gw.gateway_class != kWaypointGatewayClass) continue;
    // A name of its own for the lambda: clang 14 (the fuzz build) cannot capture a structured
    // binding.
    const std::string& gateway = key;
    const bool has_pod = std::any_of(out.instance_of.begin(), out.instance_of.end(),
                                     [&gateway](const auto& e) { return e.second == gateway; });
    if (!has_pod) {
      out.problems.push_back(
          {gw.source_file, absl::StrCat("Gateway ", key), "",
           absl::StrCat("no pod of namespace ", gw.namespace_name, " has the label ",
                        kGatewayNameLabel, "=", gw.name,
                        ": the waypoint has no instance, and traffic bound to it is refused")});
    }
  }
  return out;
}

}  // namespace ambit::state
