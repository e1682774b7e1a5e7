#pragma once

// `ambitctl check` asking the waypoint data plane (ambit-waypoint) what an ext_authz provider
// answers for one request: the stats socket's ext_authz_probe (dataplane.proto), in plain types so
// the evaluator in agent/node sees no Protobuf. Pure mapping; thread-safe.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ambit::dataplane::v1 {
class ExtAuthzProbeRequest;
class ExtAuthzProbeResponse;
}  // namespace ambit::dataplane::v1

namespace ambit::supervisor {

using HeaderPairs = std::vector<std::pair<std::string, std::string>>;

// Every member has a default so designated initializers may name only what they need.
struct ExtAuthzProbeQuery {
  std::string waypoint_pod = {};  // namespace/name of a waypoint pod; or
  std::string waypoint = {};      // namespace/name of the waypoint, any of its pods on this node
  std::string provider = {};
  std::string method = "GET";
  std::string path = "/";
  std::string host = {};
  HeaderPairs headers = {};  // lower-case names
  std::string source_address = {};
  std::string source_principal = {};
  std::string destination_address = {};
};

struct ExtAuthzProbeAnswer {
  enum class Outcome { kAllow, kDeny, kError };
  struct HeaderEdit {
    enum class Op { kSet, kAppend, kRemove };
    Op op = Op::kSet;
    std::string name;
    std::string value;
  };
  Outcome outcome = Outcome::kError;
  int status = 0;
  HeaderPairs deny_headers;
  std::string deny_body;
  bool deny_body_truncated = false;
  std::vector<HeaderEdit> upstream_edits;
  std::vector<HeaderEdit> downstream_edits;
  std::string detail;
  absl::Duration latency;
  // The provider as the waypoint applies it.
  std::string waypoint_pod;
  std::string provider_kind;
  bool fail_open = false;
  uint32_t status_on_error = 403;
  absl::Duration timeout;
  std::string unresolved;
};

ambit::dataplane::v1::ExtAuthzProbeRequest ExtAuthzProbeQueryToProto(
    const ExtAuthzProbeQuery& query);

// The answer, checked. FailedPrecondition with the waypoint's words when the probe did not run
// (`error`); DataLoss for a malformed answer: an unspecified or unknown outcome or edit op, a
// status outside 100..599 on a deny.
absl::StatusOr<ExtAuthzProbeAnswer> ExtAuthzProbeAnswerFromProto(
    const ambit::dataplane::v1::ExtAuthzProbeResponse& response);

}  // namespace ambit::supervisor
