#pragma once

// `ambitctl check` and a CUSTOM policy at the waypoint: folds what the running waypoint's ext_authz
// provider answered (supervisor::ExtAuthzProbeAnswer) into the pending decision the way the
// waypoint does: an unresolved provider denies 403; an error denies with statusOnError unless
// failOpen lets the request on; then authz::ResolveExtAuthz gives the DENY/ALLOW verdict after an
// allow. Without an answer the decision is undetermined, never allow. Pure; thread-safe.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/admin/admin_server.h"
#include "agent/authz/engine.h"
#include "agent/supervisor/ext_authz_probe.h"

namespace ambit::node {

struct ExtAuthzCheck {
  bool determined = false;
  authz::Decision decision;  // after the answer; the pending one when undetermined
  // What the waypoint answers the client itself (the authorizer's deny, statusOnError, 403 of a
  // DENY/ALLOW policy); 0 when it forwards the request or the answer is undetermined.
  int http_status = 0;
  std::string body;  // of that answer
  std::string text;  // trace lines, each ending in "\n"
};

// `pending` has reason kExtAuthzRequired. `answer` is the probe's result; `not_asked` non-empty
// means nobody was asked, and why (then `answer` is ignored). Fills `out`.
ExtAuthzCheck FoldExtAuthzAnswer(const authz::Decision& pending,
                                 const absl::StatusOr<supervisor::ExtAuthzProbeAnswer>& answer,
                                 absl::string_view not_asked, ambit::admin::v1::CheckExtAuthz* out);

// "2.1 ms", "0.3 ms", "1204.0 ms".
std::string FormatLatency(absl::Duration latency);

}  // namespace ambit::node
