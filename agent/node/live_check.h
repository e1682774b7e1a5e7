#pragma once

// ambitd's answer to `ambitctl check FROM TO:PORT`: the decision the data path would reach for one
// connection (and, through a waypoint, one HTTP request) under the configuration in force.
//
// The destination is resolved as MeshSnapshot::Resolve resolves it in the tunnel: a pod, or a
// service (cluster IP or namespace/name) and then its first endpoint. When the destination uses a
// waypoint (the pod's binding for a pod address, the service's for a service address), hop 1 is
// the waypoint: RequestAuthentication, then the L7 AuthorizationPolicies attached to its Gateway
// and the addressed service; hop 2 is the destination's tunnel, which accepts only the
// waypoint's identity (bypass closed unless the pod opts out) and applies its L4 policy with the
// waypoint as the source. Without a waypoint there is one hop, the tunnel, at L4.
//
// Immutable once built; Check is thread-safe (gRPC threads).

#include <functional>
#include <memory>
#include <vector>

#include "agent/admin/admin_server.h"
#include "agent/authn/model.h"
#include "agent/authz/engine.h"
#include "agent/authz/peer_authentication.h"
#include "agent/state/model.h"
#include "agent/state/waypoint.h"
#include "agent/supervisor/ext_authz_probe.h"

namespace ambit::node {

// Every member has a default so designated initializers may name only what they need.
struct LiveCheckConfig {
  std::shared_ptr<const state::ClusterState> state = nullptr;
  std::vector<authz::PeerAuthentication> peer_authns = {};
  std::shared_ptr<const authz::Engine> engine = nullptr;
  std::vector<authn::RequestAuthentication> request_authns = {};
  // The waypoint bindings of `state`; null: resolved here.
  std::shared_ptr<const state::WaypointResolution> waypoints = nullptr;
  // Asks this node's waypoint data plane (ambit-waypoint) what a CUSTOM policy's provider
  // answers for the request (thread-safe, bounded: supervisor::DataPlane::ProbeExtAuthz). Null,
  // an error, or a check with no_ext_authz: the waypoint hop's decision is undetermined.
  std::function<absl::StatusOr<supervisor::ExtAuthzProbeAnswer>(
      const supervisor::ExtAuthzProbeQuery&)>
      ext_authz_prober = nullptr;
};

// Answers `ambitctl check` against one configuration. JWKS given by jwksUri are not fetched: such
// tokens are rejected, and the answer says so. A CUSTOM policy at the waypoint is explained by
// asking the running waypoint (ext_authz_prober) and folding its provider's answer in
// (ext_authz_check.h).
std::shared_ptr<const admin::CheckEvaluator> NewCheckEvaluator(LiveCheckConfig config);

}  // namespace ambit::node
