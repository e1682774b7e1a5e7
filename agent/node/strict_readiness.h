#pragma once

// `ambitctl strict-readiness`: whether switching a namespace or a pod to STRICT mTLS would refuse
// anyone, from the plaintext clients the data plane saw reach this node's pods
// (agent/tunnel/plaintext_clients.h), and the PeerAuthentication that would not. Pure: the
// cluster state, PeerAuthentications and the data plane's answer in, the admin answer out.
// Thread-safe (no state).

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/admin/admin_server.h"  // the admin API's messages
#include "agent/authz/peer_authentication.h"
#include "agent/state/model.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::node {

// Members default to {} so a designated initializer names only what it sets.
struct StrictReadinessInputs {
  std::shared_ptr<const state::ClusterState> cluster = {};
  std::vector<authz::PeerAuthentication> peer_authns = {};
  std::set<std::string> enrolled = {};  // namespace/name of the pods this node serves
  std::string node_name = {};
};

// NotFound for a pod the configuration does not have; FailedPrecondition for one another node
// serves (its clients are seen there).
absl::StatusOr<ambit::admin::v1::StrictReadinessResponse> StrictReadiness(
    const StrictReadinessInputs& in, const ambit::dataplane::v1::StatsResponse& stats,
    const ambit::admin::v1::StrictReadinessRequest& request);

// The PeerAuthentication YAML StrictReadiness suggests (exposed for tests): `namespace`-wide
// STRICT (or one for `pod` alone), plus, per pod that still sees plaintext on some ports, a
// workload-level STRICT policy with those ports PERMISSIVE (Istio honours portLevelMtls only with
// a selector).
std::string SuggestPeerAuthentication(const state::ClusterState& cluster,
                                      const std::string& namespace_name, const std::string& pod,
                                      const ambit::admin::v1::StrictReadinessResponse& answer);

}  // namespace ambit::node
