#pragma once

// AuthorizationPolicies cross the agent/data-plane boundary as Protobuf; these convert between
// that edge form and the engine's own model (agent/authz/model.h), losslessly. An action that is
// unset or unknown on the wire is an error naming the policy, never a default.

#include "absl/status/statusor.h"
#include "agent/authz/model.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::authz_wire {

void ToProto(const authz::Policy& policy, ambit::dataplane::v1::AuthzPolicy* out);
absl::StatusOr<authz::Policy> FromProto(const ambit::dataplane::v1::AuthzPolicy& in);

}  // namespace ambit::authz_wire
