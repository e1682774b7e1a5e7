#pragma once

// The waypoint part of a data-plane snapshot: which workloads and services of `snapshot` use which
// waypoint (state/waypoint.h decides), the waypoints themselves with their pods, and the pods
// enrolled here that opted out of the bypass check. Thread-compatible; a pure function.

#include "absl/status/status.h"
#include "agent/mesh/model.h"
#include "agent/state/model.h"

namespace ambit::node {

// Fills Workload::waypoint, waypoint_bypass_allowed (workloads enrolled here only),
// Service::waypoint and Snapshot::waypoints (those named, and those with a pod in the snapshot) of
// a snapshot whose workloads and services were built from `state`. A waypoint's instances are only
// pods the snapshot holds.
void AddWaypoints(const state::ClusterState& state, mesh::Snapshot* snapshot);

}  // namespace ambit::node
