#pragma once

#include <sys/epoll.h>

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agent/common/epoll_loop.h"
#include "agent/common/event_loop.h"
#include "agent/common/task_queue.h"
#include "agent/common/unique_fd.h"
#include "agent/hbone/session.h"
#include "agent/tunnel/flow_stats.h"
#include "agent/tunnel/mesh_snapshot.h"
#include "agent/tunnel/plaintext_clients.h"
#include "agent/tunnel/pod_table.h"
#include "agent/tunnel/tls_contexts.h"

namespace ambit::tunnel {

// A unit of work a worker owns: a relayed connection, a tunnel stream. Re-decided when policy
// changes; deleted through Worker::Retire after the batch of events that ended it.
class Flow {
 public:
  explicit Flow(std::string description) : description_(std::move(description)) {}
  virtual ~Flow() = default;
  // A policy check the worker repeats whenever the configuration changes; a failing check
  // closes the flow with resets (Worker::SetSnapshot).
  void SetRecheck(std::function<absl::Status(const MeshSnapshot&)> check) {
    recheck_ = std::move(check);
  }
  // Closes both sides with a reset; `reason` in words. Idempotent.
  virtual void Reset(const std::string& reason) = 0;
  // Who and what, for log lines.
  const std::string& description() const { return description_; }
  // Bytes relayed so far from the client toward the server, and back to the client.
  virtual void Bytes(uint64_t* from_client, uint64_t* to_client) const = 0;

  // Who talks to whom and what allowed it; filled before Worker::Adopt.
  FlowRecord& record() { return record_; }
  const FlowRecord& record() const { return record_; }
  // Why the flow is ending, for its access-log line and metrics; the first reason given wins.
  void SetEnd(std::string flags, std::string reason, bool denied = false) {
    if (!end_.reason.empty() || end_.denied) return;
    end_.flags = std::move(flags);
    end_.reason = std::move(reason);
    end_.denied = denied;
  }
  const FlowEnd& end() const { return end_; }

 private:
  friend class Worker;
  std::string description_;
  std::function<absl::Status(const MeshSnapshot&)> recheck_;
  FlowRecord record_;
  FlowEnd end_;
  bool retired_ = false;
};

struct TlsContexts;
class HbonePool;
class InboundSessions;

// One data-plane thread with its own event loop. Every connection lives on exactly one worker and
// is touched only by it; the only cross-thread entry is Post(), used for configuration changes.
class Worker {
 public:
  static absl::StatusOr<std::unique_ptr<Worker>> Create(int index,
                                                        std::shared_ptr<const DataPlaneSettings>);
  ~Worker();

  void Start();
  // Asks the loop to finish; Join() waits for it.
  void Stop();
  void Join();

  // Runs fn on the worker's thread. Thread-safe. Lifetime: ~Worker stops and joins the thread
  // before any member is destroyed, so a task that runs finds the worker whole; tasks still
  // queued then are destroyed unrun. Whatever `fn` captures must outlive the worker's Join.
  void Post(std::function<void(Worker&)> fn);

  // Worker-thread only.
  void AddPod(std::shared_ptr<const Pod> pod);
  // Installs a new configuration and re-decides every live connection under it.
  void SetSnapshot(std::shared_ptr<const MeshSnapshot> snapshot);
  // Non-empty: the newest configuration is not in force, so every new connection is refused
  // with this reason (live ones keep running under the last snapshot).
  void SetFailClosed(std::string reason) { fail_closed_ = std::move(reason); }
  const std::string& fail_closed() const { return fail_closed_; }
  // TLS contexts of the local identities; null until certificates exist. HBONE sessions
  // established with a context peers would no longer accept are drained (CheckSessionCredentials).
  void SetTls(std::shared_ptr<const TlsContexts> tls);
  const std::shared_ptr<const TlsContexts>& tls() const { return tls_; }
  HbonePool& pool() { return *pool_; }
  InboundSessions& inbound() { return *inbound_; }
  hbone::HboneStats& hbone_stats() { return hbone_stats_; }
  // Drains every HBONE session (pooled outbound and inbound) whose own or peer certificate
  // expired, or whose own was replaced by one peers would not accept (session_drain.h): GOAWAY,
  // open streams finish, new streams refused. Logged and counted once per session. Then arms a
  // timer for the next certificate expiry among the sessions left.
  // `recheck_peers` (new contexts arrived): also verify again the peer of each session whose
  // context was replaced; a peer no longer accepted is cut off at once. Only then: nothing else
  // changes that verdict, and a chain verification is too dear for every pass.
  void CheckSessionCredentials(bool recheck_peers = false);
  // A session was established: its certificates' expiry may come before the armed timer.
  void WatchSessionExpiry(const hbone::HboneSession& session);
  absl::Time Now() const { return settings_->clock->Now(); }
  // Per-worker counters; summed by whoever reports them. Worker-thread only.
  struct Counters {
    uint64_t plaintext_refused = 0;
    uint64_t closed_by_policy = 0;
    uint64_t denied = 0;
    uint64_t refused_fail_closed = 0;  // new connections refused while fail_closed() is set
    uint64_t kubelet_probes = 0;       // node connections delivered as kubelet probes
    // Connections whose destination came from SO_ORIGINAL_DST (netfilter REDIRECTed them to a
    // listener, original_dst.h), inbound (15006) and outbound (15001).
    uint64_t nat_original_dst_inbound = 0;
    uint64_t nat_original_dst_outbound = 0;
    uint64_t connect_retries = 0;  // refused CONNECTs opened again on another session
  };
  Counters& counters() { return counters_; }
  FlowMetrics& metrics() { return metrics_; }
  // Plaintext clients of this worker's pods (STRICT readiness). Worker-thread only.
  PlaintextClients& plaintext_clients() { return plaintext_clients_; }
  // A connection refused before any byte was relayed: counted and access-logged.
  void Refuse(FlowRecord record, FlowEnd end);
  // Fills the parts of a stats answer this worker holds. Worker-thread only.
  void CollectStats(bool connections, bool metrics, ambit::dataplane::v1::StatsResponse* out);
  // Adds this worker's plaintext clients (and, with `metrics`, their counters). Worker-thread only.
  void CollectPlaintextClients(bool metrics, ambit::dataplane::v1::StatsResponse* out) const {
    plaintext_clients_.AppendTo(metrics, out);
  }
  // Never null: an empty snapshot until the first configuration arrives.
  const std::shared_ptr<const MeshSnapshot>& snapshot() const { return snapshot_; }
  // Drops everything this worker holds for the pod: stops accepting on its listeners, resets
  // its live connections (either direction) and closes its pooled outbound and its inbound HBONE
  // connections. Their last references to the pod, and so to its listener descriptors, go after
  // the current batch of events; `done` (if set) runs after that.
  void RemovePod(const std::string& uid, std::function<void()> done = nullptr);
  // A successor serves every pod (a data-plane roll): stops accepting on every pod listener
  // (takes what is already queued first, so no connection is left waiting for a wake-up that
  // went to this worker), sends GOAWAY on every HBONE session (reason upgrade) and ignores pods
  // added from now on. Live flows run on to their end. Worker-thread only.
  void Drain();
  bool draining() const { return draining_; }
  // The listeners this worker watches, by pod uid (a heartbeat reports them). Worker-thread only.
  std::unordered_map<std::string, uint32_t> WatchedListeners() const;
  EventLoop& loop() { return *loop_; }
  absl::Status Watch(int fd, uint32_t events, EventHandler* handler) {
    return loop_->Watch(fd, events, handler);
  }
  void Unwatch(int fd) { loop_->Unwatch(fd); }
  // Ends the flow's accounting (metrics, access log) and deletes it after the current batch of
  // events. Idempotent.
  void Retire(Flow* flow);
  const DataPlaneSettings& settings() const { return *settings_; }
  int index() const { return index_; }
  size_t connection_count() const { return connections_.size(); }
  // HBONE sessions not yet closed, outbound (pooled) and inbound: a draining process waits for
  // them too, so a session still in its shutdown notice is not cut off by the exit.
  size_t session_count() const;
  // Takes ownership of a flow whose record() is filled: gives it an id and counts it opened.
  void Adopt(std::unique_ptr<Flow> flow);
  // The snapshot's cluster, and an inbound flow's service guessed from its port.
  void NameInboundService(FlowRecord& record) const;

 private:
  class ListenerHandler;
  class TaskHandler;
  // Stops watching the pod's listeners (replaced or removed); its connections are untouched.
  void DropListeners(const std::string& uid);
  // GOAWAY on every live session for `reason`, counted once per session.
  void DrainSessions(DrainReason reason, const std::string& detail);
  Worker(int index, std::shared_ptr<const DataPlaneSettings> settings,
         std::unique_ptr<EpollLoop> loop);

  const int index_;
  std::shared_ptr<const DataPlaneSettings> settings_;
  std::shared_ptr<const MeshSnapshot> snapshot_ = std::make_shared<const MeshSnapshot>();
  std::unique_ptr<EpollLoop> loop_;
  TaskQueue tasks_;  // Post() from other threads; drained on the loop
  std::unique_ptr<TaskHandler> task_handler_;
  std::thread thread_;
  std::unordered_map<std::string, std::vector<std::unique_ptr<ListenerHandler>>> listeners_;
  std::unordered_map<Flow*, std::unique_ptr<Flow>> connections_;
  Counters counters_;
  FlowMetrics metrics_;
  PlaintextClients plaintext_clients_;
  uint64_t next_flow_ = 1;
  std::shared_ptr<const TlsContexts> tls_;
  std::string fail_closed_;
  bool draining_ = false;
  hbone::HboneStats hbone_stats_;
  // Sessions drained for their certificates, by DrainReason.
  std::map<DrainReason, uint64_t> drained_;
  absl::Time expiry_timer_at_ = absl::InfiniteFuture();  // when the armed expiry timer fires
  bool check_deferred_ = false;  // a CheckSessionCredentials is queued for this batch
  bool recheck_peers_ = false;   // ... and a session of this batch has a replaced context
  std::unique_ptr<HbonePool> pool_;
  std::unique_ptr<InboundSessions> inbound_;
};

}  // namespace ambit::tunnel
