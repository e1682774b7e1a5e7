#pragma once

// The waypoint's clients of external authorizers (CUSTOM AuthorizationPolicy, Istio's
// envoyExtAuthzHttp and envoyExtAuthzGrpc providers), asynchronous on the worker's event loop.
// One client per provider, per worker and per waypoint pod (the check leaves from the waypoint's
// pod, with its identity, like any upstream connection); it keeps its connections for the next
// checks (HTTP/1.1 keep-alive, one multiplexed HTTP/2 connection for gRPC).
//
// A client only asks and reports what the authorizer answered; what the waypoint does with the
// answer (failOpen, statusOnError, which headers go where) is the authorization filter's, from
// the provider's settings, so both kinds behave the same way.
//
// Thread-safety: a client belongs to its loop's thread.

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/authz/ext_authz.h"
#include "agent/common/clock.h"
#include "agent/common/event_loop.h"
#include "agent/common/ip_address.h"
#include "agent/waypoint/byte_stream.h"
#include "agent/waypoint/filter.h"
#include "agent/waypoint/http1_codec.h"

namespace ambit::waypoint {

// What the waypoint tells an authorizer about one request: Envoy's CheckRequest attributes (the
// gRPC client sends them all; the HTTP client sends method, path, the provider's headers and the
// body, as Envoy's HTTP ext_authz does).
struct AuthzCheckRequest {
  std::string method;
  std::string path;  // as the client sent it, query included
  std::string host;  // :authority / Host
  std::string scheme = "http";
  std::string protocol;  // "HTTP/1.1", "HTTP/2"
  HeaderList headers;    // every request header as received (after JWT authentication's edits)
  std::optional<SocketAddress> source;
  std::optional<SocketAddress> destination;
  std::string source_principal;       // the downstream peer's SPIFFE ID
  std::string destination_principal;  // the waypoint's own SPIFFE ID (Envoy: the local cert)
  std::string request_id;             // x-request-id, when there is one
  absl::Time time;
  // Set when the provider includes the body (BodyWanted collected it).
  std::optional<std::string> body;
  bool body_truncated = false;
};

// What the authorizer answered.
struct AuthzCheckResponse {
  enum class Outcome {
    kAllow,  // HTTP: 200; gRPC: status OK
    kDeny,   // HTTP: any other status below 500 (and 5xx... see the client); gRPC: status not OK
    kError,  // could not be asked or the answer made no sense: timeout, refused, malformed
  };
  Outcome outcome = Outcome::kError;
  // kDeny: what the client gets (HTTP: the authorizer's status, headers and body; gRPC:
  // denied_response). kError: unused.
  int status = 403;
  HeaderList deny_headers;
  std::string deny_body;
  // kAllow: changes to the request sent upstream (HTTP: headersToUpstreamOnAllow picked from the
  // answer as kSet; gRPC: ok_response headers as kSet/kAppend, headers_to_remove as kRemove).
  std::vector<HeaderEdit> upstream_edits;
  // kAllow: headers added to the response sent to the client (HTTP: headersToDownstreamOnAllow;
  // gRPC: ok_response.response_headers_to_add).
  std::vector<HeaderEdit> downstream_edits;
  // kError: why, for the log ("timeout after 200ms", "connection refused", "malformed answer:
  // ..."); kAllow/kDeny: a short summary of the answer for explanations ("HTTP 403", "gRPC
  // PERMISSION_DENIED (7)").
  std::string detail;
  absl::Duration latency;  // from the start of the check to the answer or the error
};

class AuthorizerClient {
 public:
  virtual ~AuthorizerClient() = default;
  // Starts one check. `done` runs exactly once on the loop thread (never from inside Check),
  // unless the returned handle is destroyed first. The provider's timeout bounds the whole check.
  virtual std::unique_ptr<AsyncCheck> Check(const AuthzCheckRequest& request,
                                            std::function<void(AuthzCheckResponse)> done) = 0;
  virtual const authz::ExtAuthzProvider& provider() const = 0;
};

// Clients over `connector` (each Connect opens one connection to the authorizer; not owned, it
// outlives the client). `loop` and `clock` likewise.
std::unique_ptr<AuthorizerClient> NewHttpAuthorizerClient(authz::ExtAuthzProvider provider,
                                                          UpstreamConnector* connector,
                                                          EventLoop* loop, const Clock* clock);
std::unique_ptr<AuthorizerClient> NewGrpcAuthorizerClient(authz::ExtAuthzProvider provider,
                                                          UpstreamConnector* connector,
                                                          EventLoop* loop, const Clock* clock);

// The clients the authorization filter may use, by provider name. A name that is missing (or
// whose provider is unresolved) fails closed.
class AuthorizerSet {
 public:
  virtual ~AuthorizerSet() = default;
  virtual AuthorizerClient* Find(const std::string& provider) = 0;
};

}  // namespace ambit::waypoint
