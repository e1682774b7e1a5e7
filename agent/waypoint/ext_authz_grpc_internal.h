#pragma once

// The pure halves of the gRPC ext_authz client (ext_authz_grpc.cc), apart from its connection
// handling so that unit tests and the fuzz target reach them: the Envoy CheckRequest built from an
// AuthzCheckRequest, gRPC's framing and timeout header, and the answer (HTTP/2 status, gRPC
// status, message frames) mapped to an AuthzCheckResponse.
//
// Thread-safety: plain functions over their arguments.

#include <cstddef>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/authz/ext_authz.h"
#include "agent/waypoint/ext_authz_client.h"
#include "envoy/service/auth/v3/external_auth.pb.h"

namespace ambit::waypoint::grpc_internal {

inline constexpr absl::string_view kCheckPath = "/envoy.service.auth.v3.Authorization/Check";
// The largest CheckResponse accepted; a bigger answer is an error, not a memory sink.
inline constexpr size_t kMaxResponseMessage = 1 << 20;

// The CheckRequest as Envoy's ext_authz filter fills it for an HTTP request.
envoy::service::auth::v3::CheckRequest BuildCheckRequest(const AuthzCheckRequest& request,
                                                         const authz::ExtAuthzProvider& provider);

// One gRPC message: the 5-byte prefix (uncompressed, big-endian length) and `message`.
std::string FrameMessage(absl::string_view message);

// The grpc-timeout header value for `timeout`: at most 8 digits, the finest unit that fits,
// rounded up so that the server never gives up before the client does.
std::string GrpcTimeoutHeader(absl::Duration timeout);

// What came back on one stream.
struct GrpcAnswer {
  int http_status = 0;  // :status; 0 when no response head arrived
  std::string content_type;
  std::optional<std::string> grpc_status;  // from the trailers, or the head of a trailers-only
  std::string grpc_message;                // percent-encoded, as sent
  std::string data;                        // the DATA bytes: length-prefixed messages
  bool data_too_large = false;             // more than kMaxResponseMessage + 5 bytes arrived
};

// The verdict from a complete answer: kAllow / kDeny from a CheckResponse, kError with a detail
// for anything else (HTTP status, gRPC status, framing, an unparsable or oversized message).
// `latency` is left for the caller. `request_headers` (the checked request's, when known) decide
// the ok_response headers whose append_action depends on what is there already (ADD_IF_ABSENT,
// OVERWRITE_IF_EXISTS); without them those act as an overwrite.
AuthzCheckResponse MapAnswer(const GrpcAnswer& answer, const HeaderList* request_headers = nullptr);

// The verdict from a parsed CheckResponse, as Envoy's gRPC ext_authz client reads it.
AuthzCheckResponse MapCheckResponse(const envoy::service::auth::v3::CheckResponse& response,
                                    const HeaderList* request_headers = nullptr);

// Percent-decodes a grpc-message value (invalid escapes are kept as they are).
std::string DecodeGrpcMessage(absl::string_view value);

// "OK", "PERMISSION_DENIED", ... for gRPC status codes 0-16, else "code N".
std::string GrpcCodeName(int code);

}  // namespace ambit::waypoint::grpc_internal
