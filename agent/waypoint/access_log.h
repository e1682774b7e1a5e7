#pragma once

// One access-log line per HTTP request the waypoint finished (answered locally or forwarded), in
// the node tunnel's key=value text form: every field present, "-" when empty, values with spaces
// quoted.

#include <cstdint>
#include <string>

#include "absl/time/time.h"

namespace ambit::waypoint {

struct RequestLogEntry {
  absl::Time start;
  std::string protocol;  // "HTTP/1.1", "HTTP/2", "tcp"
  std::string method;
  std::string authority;
  std::string path;
  int status = 0;  // 0: no response (connection ended first)
  // Envoy's response flags, where Envoy has one for the case: UF upstream connect failure, UC
  // upstream closed early, UR upstream reset, UPE upstream protocol error, DC downstream closed
  // early, DR downstream reset (HTTP/2), DPE downstream protocol error, SI stream idle timeout,
  // UT request timeout. A policy denial has no flag (as in Envoy); `details` says why.
  std::string flags;
  std::string details;  // why a local answer was given
  absl::Duration duration;
  uint64_t bytes_received = 0;  // request bytes from downstream (head and body)
  uint64_t bytes_sent = 0;      // response bytes to downstream (head and body)
  std::string source;           // peer address
  std::string source_identity;  // SPIFFE ID of the peer, empty for plaintext
  std::string jwt_principal;
  std::string policy;  // the deciding AuthorizationPolicy
  // The external authorizer's part: `<provider>:<allow|deny|error|failure_mode_allowed>:<ms>`.
  std::string ext_authz;
  std::string upstream;
};

std::string AccessLogLine(const RequestLogEntry& e);

}  // namespace ambit::waypoint
