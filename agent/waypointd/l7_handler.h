#pragma once

// ambit-waypoint's part of the data-plane shell (tunnel::InboundHandler, agent/tunnel/l7_hook.h):
// on a waypoint pod's 15008, each CONNECT a node tunnel sends is checked (the destination must use
// this waypoint), answered 200 and handed to the HTTP engine (agent/waypoint) as its downstream;
// each request the engine forwards goes upstream over HBONE, from the waypoint's pod with the
// waypoint's own certificate, to the destination's tunnel (a cluster IP is resolved to one of the
// service's endpoints). The engine decides per request: JWT authentication, then L7
// AuthorizationPolicy attached to the waypoint (targetRefs to its Gateway or the addressed
// Service). The pod's outbound and plaintext listeners take nothing: a waypoint is reached only
// over HBONE, and its own connections carry the socket mark the redirect skips.
//
// Thread-safety: OnConnect and OnAccepted run on the accepting worker; per-worker state (the HTTP
// metrics) is indexed by Worker::index().

#include <memory>
#include <string>
#include <utility>

#include "agent/tunnel/l7_hook.h"
#include "agent/waypoint/metrics.h"
#include "agent/waypoint/proxy.h"

namespace ambit::waypointd {

struct WaypointOptions {
  waypoint::ProxyOptions proxy;  // Envoy's default limits and timeouts
};

class L7Handler final : public tunnel::InboundHandler {
 public:
  explicit L7Handler(WaypointOptions options) : options_(std::move(options)) {}

  hbone::StreamObserver* OnConnect(tunnel::Worker& worker, hbone::HboneSession& session,
                                   hbone::StreamId stream, const hbone::ConnectRequest& request,
                                   const std::shared_ptr<const tunnel::Pod>& pod,
                                   const SocketAddress& peer, tunnel::FlowRecord record) override;
  void OnAccepted(tunnel::Worker& worker, const std::shared_ptr<const tunnel::Pod>& pod,
                  tunnel::ListenerKind kind, UniqueFd client) override;

  std::string RenderMetrics() const override { return metrics_.RenderPrometheus(); }

 private:
  WaypointOptions options_;
  waypoint::HttpMetrics metrics_;  // every worker's requests
};

}  // namespace ambit::waypointd
