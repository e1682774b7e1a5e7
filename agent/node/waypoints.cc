#include "agent/node/waypoints.h"

#include <map>
#include <set>
#include <string>
#include <vector>

#include "agent/state/waypoint.h"

namespace ambit::node {

void AddWaypoints(const state::ClusterState& state, mesh::Snapshot* snapshot) {
  const state::WaypointResolution r = state::ResolveWaypoints(state);
  std::set<std::string> present;  // workloads of the snapshot
  for (const auto& w : snapshot->workloads) present.insert(w.Key());
  std::set<std::string> named;  // waypoints the snapshot must describe
  for (auto& w : snapshot->workloads) {
    const std::string key = w.Key();
    if (auto it = r.workloads.find(key); it != r.workloads.end()) {
      w.waypoint = it->second;
      named.insert(it->second);
    }
    // Listed with its pods even when nothing here uses it: the seam for running it.
    if (auto it = r.instance_of.find(key); it != r.instance_of.end()) named.insert(it->second);
    w.waypoint_bypass_allowed = w.enrolled_here && r.bypass_allowed.contains(key);
  }
  for (auto& s : snapshot->services) {
    if (auto it = r.services.find(s.Key()); it != r.services.end()) {
      s.waypoint = it->second;
      named.insert(it->second);
    }
  }
  std::map<std::string, std::vector<std::string>> instances;
  for (const auto& [pod, gateway] : r.instance_of) {
    if (present.contains(pod)) instances[gateway].push_back(pod);
  }
  for (const std::string& key : named) {
    mesh::Waypoint wp;
    const size_t slash = key.find('/');
    wp.namespace_name = key.substr(0, slash);
    wp.name = key.substr(slash + 1);
    if (auto it = instances.find(key); it != instances.end()) wp.instances = it->second;
    snapshot->waypoints.push_back(std::move(wp));
  }
}

}  // namespace ambit::node
