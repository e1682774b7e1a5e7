#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/common/socket_mark.h"
#include "agent/common/task_queue.h"
#include "agent/common/unique_fd.h"
#include "agent/tls/cert_manager.h"
#include "agent/tunnel/pod_table.h"
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
  bool access_log_json = false;
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
};

// The data plane's main thread: serves the control socket, keeps the pod table, and owns the
// workers. A controller (ambitd) that goes away leaves the data plane serving its last
// configuration; the next controller to connect is handed back every pod with its descriptors.
class Tunnel : public tls::CsrSigner {
 public:
  static absl::StatusOr<std::unique_ptr<Tunnel>> Create(const TunnelOptions& options);
  ~Tunnel();
  // Runs until SIGTERM/SIGINT.
  absl::Status Run();

 private:
  explicit Tunnel(TunnelOptions options) : options_(std::move(options)) {}
  absl::Status OnControllerConnected(UniqueFd fd);
  absl::Status OnControlMessage();
  absl::Status HandleEnvelope(const dataplane::v1::Envelope& env, std::vector<UniqueFd> fds);
  absl::Status Send(const dataplane::v1::Envelope& env, const std::vector<int>& fds);
  absl::Status StartWorkers(UniqueFd orig_dst_map, UniqueFd deliver_map);
  // Stops serving the pod on every worker, releases its listeners, and answers pod_removed.
  absl::Status RemovePod(const std::string& uid);
  // Installs a configuration on every worker and acks it; lifts a fail-closed state it supersedes.
  absl::Status ApplySnapshot(uint64_t version,
                             absl::StatusOr<std::shared_ptr<const MeshSnapshot>> mapped);
  // Nacks a configuration that cannot be applied, and fails closed.
  absl::Status RefuseSnapshot(uint64_t version, const std::string& error);
  // Generation `version` exists but is not in force: every worker refuses new connections until
  // a generation at least as new applies. Stale enforcement would let a DENY written since go
  // unenforced and send traffic for pods the old configuration does not know in plaintext.
  void FailClosed(uint64_t version, const std::string& why);
  // tls::CsrSigner: CSRs go up the control channel; answers come back as csr_response.
  void RequestSigning(uint64_t request_id, const std::string& identity,
                      const std::string& csr_pem) override;
  // Runs certificate work that is due and tells the agent when any certificate changed.
  void AfterEvent();
  void OnControllerGone();
  // Rebuilds the workers' TLS contexts when a certificate or the trust bundle changed.
  void UpdateTlsContexts();
  void ServePendingPods();
  // Answers one request on the stats socket (see StatsSocketRequest in dataplane.proto).
  void ServeStats(UniqueFd client);
  // One heartbeat: every worker runs a task, then the answer goes up. Never waits here, so a
  // hung worker delays only the answer, and the control thread keeps serving the agent.
  struct HeartbeatRound;
  void OnPing(uint64_t seq);
  void SendPong(const HeartbeatRound& round);

  TunnelOptions options_;
  UniqueFd stats_fd_;   // <run dir>/dataplane-stats.sock
  absl::Time started_;  // read from options_.clock by Create
  UniqueFd listen_fd_, controller_, epoll_, signal_fd_, host_netns_, orig_dst_map_, deliver_map_;
  std::shared_ptr<const DataPlaneSettings> settings_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::map<std::string, std::shared_ptr<const Pod>> pods_;
  uint64_t snapshot_version_ = 0;
  uint64_t failed_version_ = 0;  // newest generation that could not be applied; 0 if none
  std::string failed_reason_;
  uint64_t snapshots_rejected_ = 0;
  std::shared_ptr<const MeshSnapshot> snapshot_ = std::make_shared<const MeshSnapshot>();
  std::unique_ptr<tls::CertManager> certs_;
  UniqueFd cert_timer_;
  std::set<uint64_t> outstanding_csrs_;
  // Requests that could not be sent: failed from the event loop, never re-entrantly.
  std::vector<std::pair<uint64_t, absl::Status>> failed_csrs_;
  std::string last_report_;
  std::vector<std::string> trust_bundle_;
  std::string tls_signature_;  // what the current TLS contexts were built from
  std::shared_ptr<const TlsContexts> tls_for_new_workers_;
  std::map<std::string, absl::Time> waiting_for_cert_;  // pod uid -> since
  uint64_t session_ = 0;      // counts agent sessions: an answer is for the session that asked
  TaskQueue worker_replies_;  // heartbeat replies from the workers, run on this thread
};

}  // namespace ambit::tunnel
