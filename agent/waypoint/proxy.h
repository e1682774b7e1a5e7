#pragma once

// The waypoint's HTTP engine: one `ProxyConnection` per downstream byte stream. It sniffs the
// protocol (the HTTP/2 connection preface means h2c with prior knowledge, anything else HTTP/1.x),
// parses requests, runs the filter chain on each (JWT authentication, then L7 authorization),
// answers denied requests itself and forwards allowed ones to the upstream, then writes one
// access-log line and the Istio HTTP metrics per request. A port declared TCP skips HTTP
// entirely: the connection is authorized at L4 and its bytes are passed through.
//
// Upstream protocol: HTTP/1.1 whatever the downstream spoke. Each HTTP/1 downstream connection
// keeps one upstream connection for its sequential requests; each HTTP/2 stream gets its own
// upstream connection. Why: an h2 upstream would need the peer's h2 support to be known (ALPN or
// a declared appProtocol, which arrive with the HBONE step), HTTP/1.1 is what every workload
// speaks, and one upstream connection per stream keeps a slow stream from blocking others
// (head-of-line) without a pool. The cost is a connect per h2 stream, which the HBONE step
// replaces with pooled CONNECT streams.
//
// Limits are Envoy's defaults (see ProxyOptions) and are answered the way Envoy answers them:
// 431 for too large or too many request headers, 408 when a request stalls longer than the
// stream idle timeout before its response started, 400 for malformed or ambiguous requests.
//
// Thread-safety: a connection and its ProxyContext belong to one event-loop thread.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "agent/authz/engine.h"
#include "agent/common/clock.h"
#include "agent/common/event_loop.h"
#include "agent/common/ip_address.h"
#include "agent/waypoint/byte_stream.h"
#include "agent/waypoint/filter.h"
#include "agent/waypoint/http1_codec.h"
#include "agent/waypoint/metrics.h"

namespace ambit::waypoint {

struct ProxyOptions {
  Http1Limits limits;  // request headers: 60 KiB, 100 headers (Envoy's defaults)
  // Envoy's idle_timeout: a connection without requests is closed after this.
  absl::Duration idle_timeout = absl::Hours(1);
  // Envoy's stream_idle_timeout: a request with no bytes either way for this long is ended (408
  // before the response started).
  absl::Duration stream_idle_timeout = absl::Minutes(5);
  // Envoy's request_timeout (whole request received, from its first byte) is off by default,
  // which lets a slow-loris client hold a stream for up to the idle timeout per byte. We bound
  // only the head: a request's headers must arrive within `request_headers_timeout` (Envoy's
  // request_headers_timeout, also off there; 60 s here, generous for any real client). A
  // non-zero `request_timeout` bounds the whole exchange until its response starts.
  absl::Duration request_headers_timeout = absl::Seconds(60);
  absl::Duration request_timeout = absl::ZeroDuration();
  // HTTP/2: SETTINGS_MAX_CONCURRENT_STREAMS (Envoy: 2^31-1; 100 is what nghttp2 clients and
  // ztunnel use), and the rapid-reset limiter of agent/hbone: a stream takes a token, a
  // stream answered in full gives it back; a client that runs dry gets GOAWAY.
  uint32_t h2_max_concurrent_streams = 100;
  uint32_t h2_stream_window = 64 << 10;
  uint32_t h2_connection_window = 1 << 20;
  uint32_t stream_open_burst = 200;
  double stream_open_rate = 100;
  // The port is declared TCP (Service port protocol / appProtocol): no HTTP parsing; L4 policy.
  bool tcp_only = false;
  // The port's protocol is not declared: bytes that start neither an h2c preface nor an HTTP/1.x
  // request line are passed through at L4, as TCP (Istio's protocol detection). Otherwise they
  // are parsed as HTTP/1.x and answered 400 when they are not.
  bool detect_protocol = false;
};

// What the engine needs, per worker; outlives every connection.
struct ProxyContext {
  EventLoop* loop = nullptr;
  ProxyOptions options;
  FilterChain filters;
  // L4 policy for TCP ports (the filter chain is L7-only).
  std::shared_ptr<const authz::Engine> engine;
  authz::Workload target;
  UpstreamConnector* upstream = nullptr;
  // The destination the requests address (for policy and logs).
  std::optional<SocketAddress> destination;
  HttpMetrics* metrics = nullptr;
  // Istio's labels of this connection's requests in `metrics`.
  HttpMetrics::RequestLabels request_labels;
  const Clock* clock = &RealClock::Get();
  // Receives every access-log line; default: the "access" log component.
  std::function<void(const std::string&)> access_log;
};

struct DownstreamInfo {
  std::optional<SocketAddress> peer;
  std::string identity;  // the peer's SPIFFE ID (HBONE); empty for plaintext
};

class ProxyConnection;

// Starts serving `downstream`. The connection owns itself and ends when both sides are done;
// `on_closed` (may be empty) runs then, from the loop.
void ServeConnection(ProxyContext* ctx, std::unique_ptr<ByteStream> downstream, DownstreamInfo info,
                     std::function<void()> on_closed);

}  // namespace ambit::waypoint
