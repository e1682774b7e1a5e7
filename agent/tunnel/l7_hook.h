#pragma once

// The seam between this data-plane shell and the L7 waypoint. ambit-waypoint is built on the
// same shell as ambit-tunnel (control channel, reconciler, certificates, workers, HBONE server
// and pool): ambitd gives it the waypoints' pods as it gives ambit-tunnel the others. What runs
// on those pods' listeners is the one difference, and it plugs in here
// (DataPlaneSettings::l7). Kept to an interface so the tunnel links none of the HTTP engine.
//
// Thread-safety: called on the worker that accepted the connection or stream; an implementation
// keeps per-worker state apart (Worker::index()).

#include <memory>
#include <string>

#include "agent/common/ip_address.h"
#include "agent/common/unique_fd.h"
#include "agent/hbone/session.h"
#include "agent/tunnel/flow_stats.h"
#include "agent/tunnel/pod_table.h"

namespace ambit::tunnel {

class Worker;

class InboundHandler {
 public:
  virtual ~InboundHandler() = default;
  // A CONNECT on a served pod's 15008, after TLS verified the client and the fail-closed check
  // passed. `peer` is the client's address, `record` the flow's who-and-what so far (direction,
  // pod, mode, source, destination). Respond(200) and return the stream's observer, or respond
  // with an error (and Worker::Refuse the record) and return null.
  virtual hbone::StreamObserver* OnConnect(Worker& worker, hbone::HboneSession& session,
                                           hbone::StreamId stream,
                                           const hbone::ConnectRequest& request,
                                           const std::shared_ptr<const Pod>& pod,
                                           const SocketAddress& peer, FlowRecord record) = 0;
  // A connection accepted on a served pod's outbound (15001) or plaintext inbound (15006)
  // listener.
  virtual void OnAccepted(Worker& worker, const std::shared_ptr<const Pod>& pod, ListenerKind kind,
                          UniqueFd client) = 0;
  // Prometheus text of the handler's own metrics (the waypoint's HTTP metrics), for the stats
  // socket. Called on the control thread.
  virtual std::string RenderMetrics() const { return ""; }
  // The worker is going: its loop thread has ended, its loop still exists. What the handler
  // keeps on that loop (the waypoint's authorizer clients) must go now, not when the handler,
  // which outlives the workers, is destroyed. Called on the thread destroying the worker.
  virtual void OnWorkerStopped(Worker& /*worker*/) {}
};

}  // namespace ambit::tunnel
