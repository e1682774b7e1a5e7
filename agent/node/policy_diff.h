#pragma once

// `ambitctl policy diff`: what a directory's AuthorizationPolicies and PeerAuthentications would
// change if they replaced those in force, judged against the cluster state and the data plane's
// live connections. Nothing is applied: this only reads. Pure: inputs in, the admin answer out.
// Thread-safe (no state).

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "agent/admin/admin_server.h"  // the admin API's messages
#include "agent/config/security_config.h"
#include "agent/state/model.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::node {

struct PolicyDiffInputs {
  std::shared_ptr<const state::ClusterState> cluster = {};
  config::SecurityConfig current = {};  // in force now
};

// InvalidArgument when the request is over the admin API's bounds (admin::kMaxPolicyDiffBytes,
// kMaxPolicyDiffFiles) or names a file badly; problems inside the files are in the answer.
absl::StatusOr<ambit::admin::v1::PolicyDiffResponse> PolicyDiff(
    const PolicyDiffInputs& in, const ambit::dataplane::v1::StatsResponse& live,
    const ambit::admin::v1::PolicyDiffRequest& request);

}  // namespace ambit::node
