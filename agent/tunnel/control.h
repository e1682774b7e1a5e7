#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/common/epoll_loop.h"
#include "agent/common/socket_mark.h"
#include "agent/common/task_queue.h"
#include "agent/common/unique_fd.h"
#include "agent/tunnel/l7_hook.h"
#include "agent/tunnel/pod_sockets.h"
#include "agent/tunnel/pod_table.h"
#include "agent/tunnel/reconciler.h"
#include "agent/tunnel/tls_contexts.h"
#include "agent/tunnel/worker.h"

namespace ambit::dataplane::v1 {
class Envelope;
class Snapshot;
}  // namespace ambit::dataplane::v1

namespace ambit::tunnel {

struct TunnelOptions {
  std::string control_socket;  // unix SOCK_SEQPACKET path ambitd connects to
  int workers = 2;
  uint32_t socket_mark = kDefaultSocketMark;
  // Plaintext from exactly one of these addresses, arriving from outside the pod's network
  // namespace, is a kubelet probe (istio-cni SNATs probes to 169.254.7.127 on the node).
  // Empty unless the operator says so: it trusts an address (docs/ARCHITECTURE.md#istio-cni-rules).
  std::vector<IpAddress> kubelet_probe_sources;
  AccessLogFormat access_log_format = AccessLogFormat::kText;
  absl::Duration idle_timeout = absl::Seconds(30);  // pooled HBONE connections without streams
  // The largest configuration snapshot mapped; above it the snapshot is refused (fail closed).
  // The default is about 100 times what 100 000 peer pods and 10 000 policies take.
  uint64_t max_snapshot_bytes = uint64_t{1} << 30;
  // hbone::SessionOptions::stream_open_burst / stream_open_rate of inbound HBONE connections.
  uint32_t failed_stream_burst = 200;
  double failed_stream_rate = 100;
  // Every time the data plane reads (certificate lifetimes, grace periods, idle timers, flow
  // start times) comes from this clock, so tests can move it by hand. Must outlive the Tunnel.
  const Clock* clock = &RealClock::Get();
  // Sockets in pod network namespaces, listener probes and shutdowns. Must outlive the Tunnel.
  const PodSockets* sockets = &KernelPodSockets::Get();
  // Set by ambit-waypoint (l7_hook.h): its pods' listeners run the waypoint instead of delivery.
  std::shared_ptr<InboundHandler> l7;
};

// The data plane's control thread: a thin shell around Reconciler (reconciler.h). It serves the
// control socket and the stats socket on an EpollLoop, turns what arrives into reconciler events,
// and carries out the actions that come back on the sockets and the workers. A controller
// (ambitd) that goes away leaves the data plane serving its last configuration; the next
// controller to connect is handed back every pod with its descriptors.
//
// Thread-safety: Run and everything it calls run on one thread. Workers post back to it only
// through worker_replies_, drained by its loop. Lifetime across threads: ~Tunnel stops and joins
// every worker before any member is destroyed, so a worker task that names this Tunnel (the
// heartbeat) has either run or been dropped by then; replies it queued are discarded unrun.
class Tunnel {
 public:
  static absl::StatusOr<std::unique_ptr<Tunnel>> Create(const TunnelOptions& options);
  ~Tunnel();
  // Runs until SIGTERM/SIGINT or Stop().
  absl::Status Run();
  // Makes Run return. Thread-safe.
  void Stop() { loop_->Stop(); }

 private:
  class FdWatch;
  explicit Tunnel(TunnelOptions options);
  void OnControllerReadable();
  void OnControllerConnected(UniqueFd fd);
  absl::Status OnControlMessage();
  absl::Status HandleEnvelope(const dataplane::v1::Envelope& env, std::vector<UniqueFd> fds);
  absl::Status Send(const dataplane::v1::Envelope& env, const std::vector<int>& fds);
  void DropController(const std::string& why);
  absl::Status StartWorkers(UniqueFd orig_dst_map, UniqueFd deliver_map, UniqueFd probes_map);
  // Carries out the reconciler's actions in order. Fails only on a control-channel send that
  // must end the session.
  absl::Status Execute(Actions actions);
  absl::Status ExecuteOne(Action& action);
  void PostToWorkers(std::function<void(Worker&)> fn);
  // Stops serving the pod on every worker (bounded wait), takes its listeners out of the
  // listening state, and answers pod_removed.
  absl::Status RemovePod(const action::RemovePod& remove);
  void AskWorkers(const action::AskWorkers& ask);
  // After every event: the reconciler's Tick, then the timer for its next deadline.
  void AfterEvent();
  void ArmTimer();
  // Answers one request on the stats socket (see StatsSocketRequest in dataplane.proto).
  void ServeStats(UniqueFd client);
  // An ext_authz probe: handed to one worker's L7 handler; answered on this thread when the
  // worker's result arrives or the wait bound passes, whichever is first. The control loop never
  // blocks on it (a hung authorizer must not stall heartbeats).
  void StartProbe(UniqueFd client, const ExtAuthzProbe& probe);
  void AnswerProbe(uint64_t id, const ExtAuthzProbeResult& result);
  void StopWorkers();
  // The data-plane roll (docs/ARCHITECTURE.md#restarts). A standby serves its agent on
  // <control socket>.next; once the primary's lock frees, it takes the lock and the path.
  void TryPromote();
  absl::Status Promote();
  // Drain{grace}: stop accepting, GOAWAY, hand the socket paths and the lock to the successor,
  // and exit when the last connection and HBONE session end or at the deadline.
  void Drain(absl::Duration grace);
  void CheckDrained();
  // Binds `path` as the control socket (or the stats socket) and watches it; the previous one,
  // if any, is unwatched and closed (its path is the caller's to unlink).
  absl::Status ServeControlPath(const std::string& path);
  absl::Status ServeStatsPath(const std::string& path);

  // Declared first, destroyed last: every member below may be named by work still queued.
  TunnelOptions options_;
  // <control socket>.lock, locked for the process's life: one data plane per control socket.
  // Released after the destructor unlinked the sockets, so a successor never loses its own.
  UniqueFd socket_lock_;
  // A standby's: <control socket>.lock, open but not locked (polled until the primary frees
  // it), and <control socket>.next.lock, locked while this process serves <control socket>.next.
  UniqueFd primary_lock_, next_lock_;
  bool standby_ = false;
  std::string listen_path_;  // where listen_fd_ is bound: the control socket, or its .next
  std::string stats_path_;   // where stats_fd_ is bound (moved aside while draining)
  bool draining_ = false;
  absl::Time drain_deadline_ = absl::InfiniteFuture();
  bool drain_check_pending_ = false;
  bool pong_in_file_logged_ = false;  // the first heartbeat answer sent in a sealed file
  std::unique_ptr<EpollLoop> loop_;
  Reconciler reconciler_;
  UniqueFd stats_fd_;   // <run dir>/dataplane-stats.sock
  absl::Time started_;  // read from options_.clock by Create
  UniqueFd listen_fd_, controller_, signal_fd_, host_netns_, orig_dst_map_, deliver_map_,
      probes_map_;
  std::vector<std::unique_ptr<FdWatch>> watches_;  // signal, worker replies
  std::unique_ptr<FdWatch> listen_watch_, stats_watch_;
  std::unique_ptr<FdWatch> controller_watch_;
  std::shared_ptr<const DataPlaneSettings> settings_;
  std::vector<std::unique_ptr<Worker>> workers_;
  absl::Time timer_at_ = absl::InfiniteFuture();  // the reconciler deadline a timer is armed for
  TaskQueue worker_replies_;             // heartbeat replies and probe results from the workers
  std::map<uint64_t, UniqueFd> probes_;  // outstanding ext_authz probes: their askers
  uint64_t next_probe_ = 0;
};

}  // namespace ambit::tunnel
