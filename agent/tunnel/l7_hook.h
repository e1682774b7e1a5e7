#pragma once

// The seam between this data-plane shell and the L7 waypoint. ambit-waypoint is built on the
// same shell as ambit-tunnel (control channel, reconciler, certificates, workers, HBONE server
// and pool): ambitd gives it the waypoints' pods as it gives ambit-tunnel the others. What runs
// on those pods' listeners is the one difference, and it plugs in here
// (DataPlaneSettings::l7). Kept to an interface so the tunnel links none of the HTTP engine.
//
// Thread-safety: called on the worker that accepted the connection or stream; an implementation
// keeps per-worker state apart (Worker::index()).

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "agent/common/ip_address.h"
#include "agent/common/unique_fd.h"
#include "agent/hbone/session.h"
#include "agent/tunnel/flow_stats.h"
#include "agent/tunnel/pod_table.h"

namespace ambit::tunnel {

class Worker;

// `ambitctl check` asking what an external authorizer answers the waypoint for one request (the
// stats socket's ext_authz_probe, checked by DecodeStatsSocketRequest).
struct ExtAuthzProbe {
  std::string waypoint_pod;  // namespace/name of a pod this process serves; or
  std::string waypoint;      // namespace/name of its waypoint (any of its pods served here)
  std::string provider;
  std::string method;
  std::string path;
  std::string host;
  std::vector<std::pair<std::string, std::string>> headers;  // lower-case names, in order
  std::optional<SocketAddress> source;
  std::optional<SocketAddress> destination;
  std::string source_principal;
  std::optional<std::string> body;
};

// What the provider answered, or why it was not asked (`error`: the probe did not run, nothing
// else is set).
struct ExtAuthzProbeResult {
  enum class Outcome { kAllow, kDeny, kError };
  struct HeaderEdit {
    enum class Op { kSet, kAppend, kRemove };
    Op op = Op::kSet;
    std::string name;
    std::string value;
  };
  std::string error;
  Outcome outcome = Outcome::kError;
  int status = 0;
  std::vector<std::pair<std::string, std::string>> deny_headers;
  std::string deny_body;
  std::vector<HeaderEdit> upstream_edits;
  std::vector<HeaderEdit> downstream_edits;
  std::string detail;
  absl::Duration latency;
  // The provider as the waypoint applies it.
  std::string waypoint_pod;
  std::string provider_kind;  // http, grpc
  bool fail_open = false;
  uint32_t status_on_error = 403;
  absl::Duration timeout;
  std::string unresolved;  // non-empty: denied 403 without asking (Outcome::kError)
};

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

  // Asks `probe.provider` about the probe's request from one of `pods` (those this process
  // serves), with the client the waypoint's requests use, on `worker`'s thread; gives up after
  // `bound`. `done` runs exactly once on that thread, unless the worker stops first.
  virtual void ProbeExtAuthz(Worker& worker, const std::vector<std::shared_ptr<const Pod>>& pods,
                             const ExtAuthzProbe& probe, absl::Duration bound,
                             std::function<void(ExtAuthzProbeResult)> done) {
    (void)worker, (void)pods, (void)probe, (void)bound;
    ExtAuthzProbeResult r;
    r.error = "this data plane serves no waypoint";
    done(std::move(r));
  }
};

}  // namespace ambit::tunnel
