#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/common/unique_fd.h"
#include "agent/mesh/model.h"
#include "agent/supervisor/ext_authz_probe.h"
#include "agent/supervisor/heartbeat.h"

namespace ambit::dataplane::v1 {
class StatsRequest;
class StatsResponse;
}  // namespace ambit::dataplane::v1

namespace ambit::supervisor {

// A pod the running data plane already serves, handed back with its descriptors when the agent
// (re)connects. The workload is what the data plane serves the pod as (mesh::PodFromProto:
// enrolled_here set, identity empty when it serves the pod without one).
struct HandedBackPod {
  mesh::Workload workload;
  uint64_t netns_cookie = 0;
  UniqueFd netns, outbound_v4, outbound_v6, plain_v4, plain_v6, hbone_v4, hbone_v6;
};

// What the agent tells the data plane about one enrolled pod: its workload (mesh::PodToProto maps
// it; the key is its uid) and its descriptors, which are borrowed (-1: not sent).
struct PodDescriptor {
  mesh::Workload workload;
  uint64_t netns_cookie = 0;
  int netns = -1, outbound_v4 = -1, outbound_v6 = -1;
  int plain_v4 = -1, plain_v6 = -1, hbone_v4 = -1, hbone_v6 = -1;
};

// A CSR the data plane asks the agent to get signed.
struct CsrRequest {
  uint64_t request_id = 0;
  std::string identity;
  std::string csr_pem;
};

// One certificate as the data plane reports it.
struct CertificateState {
  std::string identity, state, serial_hex, issuer, last_error;
  int64_t not_before_unix = 0, not_after_unix = 0;
  int refs = 0;
  std::string chain_pem = {};  // leaf first, as presented on 15008
};

// A data plane found serving a control socket (DataPlane::Probe).
struct RunningDataPlane {
  pid_t pid = 0;  // as it reports it: in its own PID namespace, which may not be ours
  uint32_t pod_count = 0;
};

// ambitd's side of one data-plane process (ambit-tunnel, or ambit-waypoint, which speaks the
// same protocol): starts it in its own session (so it
// outlives an agent restart), re-attaches to one that is already running, watches it through a
// pidfd, and speaks the control protocol. A data plane started apart from ambitd (its own
// container: another PID namespace) is only connected to (watch_pid false): its PID means nothing
// here, so the session alone says whether it lives. Not thread-safe; owned by the control thread.
class DataPlane {
 public:
  struct Options {
    std::string binary;          // path of ambit-tunnel (or ambit-waypoint)
    std::string control_socket;  // where the data plane listens for the agent
    std::vector<std::string> extra_args;
    std::string name = "data plane";  // in log lines and errors: which process
    // Watch the process through a pidfd of the PID its hello names. False for a data plane in
    // another PID namespace, where that PID may be some other process of ours.
    bool watch_pid = true;
    // Where to connect, when not control_socket: a roll's successor is started with the same
    // --control-socket and stands by on <control socket>.next until it is promoted.
    std::string connect_socket = {};
    // The owner's number for this object: an answer computed later goes to it only if the
    // session it was asked on is still this object's.
    uint64_t tag = 0;
  };
  explicit DataPlane(Options options) : options_(std::move(options)) {}
  ~DataPlane();

  // Attaches to a data plane already serving control_socket, or starts one. Returns the pods a
  // running data plane handed back (empty for a fresh one); one that does not map is an error
  // naming the pod and the field, and the session is not used.
  // With `spawn` false, only attaches: NotFound when nothing serves control_socket.
  absl::StatusOr<std::vector<HandedBackPod>> Connect(bool spawn = true);
  // Which data plane serves control_socket, without stopping it; nullopt when nothing answers
  // there (no socket file, or one nobody listens on). Connecting ends the session of an agent
  // connected to it (the data plane keeps serving), so only for when no agent runs.
  static absl::StatusOr<std::optional<RunningDataPlane>> Probe(const std::string& control_socket);
  // Sends SIGTERM to a running data plane found through control_socket, and waits for it.
  // Returns its PID, or 0 when nothing answered on control_socket.
  static absl::StatusOr<pid_t> StopRunning(const std::string& control_socket);
  // Asks the data plane serving control_socket for its live connections and counters, through
  // its stats socket. Thread-safe (its own connection per call); bounded by a few seconds.
  static absl::StatusOr<ambit::dataplane::v1::StatsResponse> FetchStats(
      const std::string& control_socket, const ambit::dataplane::v1::StatsRequest& request);
  // The same, from a stats socket path as is (a draining data plane's, moved aside).
  static absl::StatusOr<ambit::dataplane::v1::StatsResponse> FetchStatsAt(
      const std::string& stats_socket, const ambit::dataplane::v1::StatsRequest& request);
  // Sets the log level of `component` ("" = the default) in the data plane serving
  // control_socket, through its stats socket. InvalidArgument when the data plane refuses the
  // level. Thread-safe; bounded by a few seconds.
  static absl::Status SetLogLevel(const std::string& control_socket, const std::string& component,
                                  const std::string& level);

  // Asks the waypoint data plane serving control_socket what an ext_authz provider answers for
  // `query` (an ambit-tunnel, or a waypoint without that pod or provider, says why: the
  // FailedPrecondition of ExtAuthzProbeAnswerFromProto). Unavailable when nothing serves the
  // socket or no answer came in time. Thread-safe; bounded by kProbeWait.
  static absl::StatusOr<ExtAuthzProbeAnswer> ProbeExtAuthz(const std::string& control_socket,
                                                           const ExtAuthzProbeQuery& query);
  // The data plane gives up on the authorizer after min(timeout, 5 s) and answers within 1 s
  // more; this adds what the exchange itself may take.
  static constexpr absl::Duration kProbeWait = absl::Seconds(8);

  // The agent's sends never wait on the data plane: a message the control socket cannot take now
  // is queued (whole, in order, its descriptors duplicated) and written once the socket is
  // writable, while the agent keeps reading. The data plane sends too (CSRs, reports), and both
  // sides blocking in sendmsg() on full buffers was a deadlock: with ~120 pods asking for
  // certificates at once, the agent's answers and the data plane's requests filled both
  // directions and neither read again. The queue is bounded: a data plane that stops reading
  // must not grow the agent without limit; past either bound nothing more is queued, every send
  // fails, and on_overflow runs once so the owner ends the session.
  static constexpr size_t kMaxQueuedBytes = 64 << 20;
  static constexpr size_t kMaxQueuedMessages = 1 << 16;
  // Called with true when messages start waiting for the socket to become writable and with
  // false when the queue is empty again (written, or dropped with the session): the owner then
  // watches the control fd for EPOLLOUT and calls OnControlReadable on it.
  std::function<void(bool)> on_write_interest;
  // The queue went past a bound (once per session; see above).
  std::function<void()> on_overflow;
  bool wants_write() const { return !out_.empty(); }
  size_t queued_messages() const { return out_.size(); }
  size_t queued_bytes() const { return out_bytes_; }
  // Sends SIGKILL to a data plane watched through its pidfd (no-op otherwise): one that stopped
  // reading its control channel cannot be asked to drain. Its exit (pidfd) drives the restart.
  void Kill();

  bool connected() const { return control_.valid(); }
  const std::string& control_socket() const { return options_.control_socket; }
  // Its PID (in its own PID namespace when started apart); -1 when not connected.
  pid_t pid() const { return pid_; }
  int pidfd() const { return pidfd_.get(); }
  int control_fd() const { return control_.get(); }
  // Reaps the exited process; returns a description of how it ended.
  std::string Reap();
  // Ends the session with a data plane it does not watch by PID (its control socket closed or
  // failed): nothing to reap, it is gone from here.
  void Disconnect();
  // Ends the data plane this object connected to (SIGTERM, SIGKILL after 5s) and reaps it if
  // it is our child; returns its PID, or 0 when none was connected.
  pid_t Stop();
  // What the data plane asks of or tells the agent, delivered from OnControlReadable.
  std::function<void(CsrRequest)> on_csr_request;
  std::function<void(std::vector<CertificateState>)> on_certificate_report;
  // The data plane has released everything it held for the pod (the answer to SendRemovePod).
  std::function<void(const std::string& uid)> on_pod_removed;
  // The answer to SendPing.
  std::function<void(PongReport)> on_pong;
  // The data plane of this session answers pings (its hello said so).
  bool heartbeat_supported() const { return heartbeat_supported_; }
  // It drains on Drain (its hello said so): a roll can hand its pods to a successor.
  bool drain_supported() const { return drain_supported_; }
  // Tells the data plane that its successor serves: it drains (see Drain in dataplane.proto).
  absl::Status SendDrain(absl::Duration grace);
  // After SendDrain: ends the session, keeping the pidfd (if any) to reap the process when it
  // exits. Nothing is signalled.
  // Ends the control session so that the data plane still reads what was sent last (a Drain):
  // a unix socket closed with unread messages fails the peer's next recv with ECONNRESET, which
  // drops what is queued for it. So reading stops first (nothing more can arrive), what arrived
  // is discarded, and only then the socket closes.
  void CloseSession();
  uint64_t tag() const { return options_.tag; }
  // A promoted standby is the primary from now on: it took <control socket> over when its
  // predecessor drained, and a standby's .next path is gone with the promotion. So a reconnect
  // or a restart after it exits goes to control_socket, as for a primary started normally; left
  // on .next, a restart would spawn a primary on control_socket and wait for it on .next in vain.
  void BecomePrimary(std::string name) {
    options_.connect_socket.clear();
    options_.name = std::move(name);
  }
  // The path this object connects to.
  const std::string& connect_socket() const {
    return options_.connect_socket.empty() ? options_.control_socket : options_.connect_socket;
  }
  absl::Status SendPing(uint64_t seq);
  // Writes what is queued, as far as the socket takes it, then reads one message if one is
  // there (so it serves EPOLLOUT as well as EPOLLIN); an error means the session is over.
  absl::Status OnControlReadable();

  absl::Status SendMaps(int orig_dst_map_fd, int deliver_map_fd, int probes_map_fd);
  // An error that the workload does not map (agent/mesh/wire.h) means nothing was sent.
  absl::Status SendAddPod(const PodDescriptor& pod);
  absl::Status SendRemovePod(const std::string& uid);
  // Sends one configuration generation (in a sealed file). An error that the snapshot does not
  // map (agent/mesh/wire.h) or could not be written means the data plane did not get it.
  absl::Status SendSnapshot(const mesh::Snapshot& snapshot);
  // Tells the data plane that configuration generation `version` exists but could not be sent:
  // it then refuses new connections until a later generation applies (fail closed).
  absl::Status SendSnapshotFailed(uint64_t version, const std::string& error);
  absl::Status SendCsrResponse(uint64_t request_id,
                               const absl::StatusOr<std::vector<std::string>>& chain);
  // `crls`: PEM CRLs of --crl-file, enforced with the roots.
  absl::Status SendTrustBundle(const std::vector<std::string>& roots,
                               const std::vector<std::string>& crls = {});
  // The newest configuration generation the data plane acknowledged in this session; 0 if none.
  uint64_t acked_version() const { return acked_version_; }
  // The newest generation it refused, while no later one has been acknowledged; 0 if none.
  uint64_t nacked_version() const { return nacked_version_; }
  const std::string& nack_error() const { return nack_error_; }

 private:
  absl::StatusOr<UniqueFd> TryConnect();
  absl::Status Spawn();
  // Sends at once or queues (see kMaxQueuedBytes); the fds are borrowed.
  absl::Status Send(const std::string& bytes, const std::vector<int>& fds);
  // Writes queued messages until the socket is full or the queue is empty.
  absl::Status Flush();
  // Forgets what is queued (the session is over).
  void DropQueue();

  struct Outgoing {
    std::string bytes;
    std::vector<UniqueFd> fds;  // duplicates: the caller's may be closed before this is sent
  };
  std::deque<Outgoing> out_;
  size_t out_bytes_ = 0;
  bool overflowed_ = false;

  Options options_;
  UniqueFd control_;
  UniqueFd pidfd_;
  pid_t pid_ = -1;
  bool is_child_ = false;
  uint64_t acked_version_ = 0;
  bool heartbeat_supported_ = false;
  bool drain_supported_ = false;
  uint64_t nacked_version_ = 0;
  std::string nack_error_;
};

}  // namespace ambit::supervisor
