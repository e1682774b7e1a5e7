#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/admin/admin_server.h"
#include "agent/admin/telemetry_server.h"
#include "agent/authz/engine.h"
#include "agent/bpf/redirector.h"
#include "agent/common/epoll_loop.h"
#include "agent/common/instance_paths.h"
#include "agent/common/ip_address.h"
#include "agent/common/socket_mark.h"
#include "agent/common/task_queue.h"
#include "agent/common/unique_fd.h"
#include "agent/config/error.h"
#include "agent/config/lint.h"
#include "agent/config/source.h"
#include "agent/enroll/netns_finder.h"
#include "agent/enroll/node_netns.h"
#include "agent/enroll/pod_net.h"
#include "agent/issuance/ca_server.h"
#include "agent/issuance/rate_limit.h"
#include "agent/issuance/signer.h"
#include "agent/issuance/signing_queue.h"
#include "agent/mesh/model.h"
#include "agent/node/crl_watch.h"
#include "agent/node/dataplane_state.h"
#include "agent/node/enrollment.h"
#include "agent/node/enrollment_pass.h"
#include "agent/node/handoff.h"
#include "agent/node/instance_lock.h"
#include "agent/node/wire_report.h"
#include "agent/node/zds_workloads.h"
#include "agent/state/model.h"
#include "agent/supervisor/dataplane.h"
#include "agent/supervisor/heartbeat.h"
#include "agent/zds/endpoint.h"

namespace ambit::node {

struct AgentOptions {
  std::string node_name;
  std::string config_dir;
  // The Kubernetes API server as a second configuration source (empty: off): "in-cluster" or an
  // https URL; token and CA files default to the service account's (kube::KubeConfig).
  std::string kube_api, kube_token_file, kube_ca_file;
  // istiod's xDS as the configuration source instead (empty: off): host:port, the PEM roots its
  // certificate must chain to, a bearer token file (audience istio-ca), and the
  // node identity ztunnel reports (xds::XdsSource::Options).
  std::string xds_address, xds_root_cert, xds_token_file;
  std::string xds_pod_name, xds_pod_namespace, xds_instance_ip;
  std::string instance = "default";
  std::string cgroup_path;  // attach point; empty: the cgroup-v2 root
  // The namespace whose connections to enrolled pods are kubelet probes; empty: ambitd's own.
  std::string node_netns;
  std::string bpffs = "/sys/fs/bpf";
  // The procfs pod sysctls are written through (enroll::PodNetOptions::proc_root).
  std::string host_proc = "/proc";
  // Where the container runtime keeps pod network namespace files; a pod that does not name its
  // netns (ambit.dev/netns) is found among them by its IP (enroll::NetnsFinder).
  std::string netns_dir = "/var/run/netns";
  std::string run_dir;        // empty: /run/ambit/<instance>
  std::string tunnel_binary;  // empty: ambit-tunnel next to ambitd
  // Started for the pods of waypoints enrolled here, with tunnel_args and its own control
  // socket. Empty: ambit-waypoint next to ambitd.
  std::string waypoint_binary;
  // --dataplane=external: ambit-tunnel and ambit-waypoint are started apart from ambitd (their
  // own containers, as the kubelet runs them) and listen on the control sockets below. ambitd
  // connects whenever they listen, never starts, stops or restarts them, and cannot watch them
  // by PID (another PID namespace): the control session and the heartbeat say whether they live.
  bool external_dataplane = false;
  std::vector<std::string> tunnel_args;
  std::vector<std::string> waypoint_args;  // after tunnel_args, for ambit-waypoint only
  uint32_t socket_mark = kDefaultSocketMark;
  std::vector<uint16_t> outbound_bypass_ports;
  std::vector<uint16_t> inbound_bypass_ports;
  std::vector<Cidr> outbound_bypass_cidrs;

  // Certificates. The built-in CA keeps its root under ca_state_dir (default
  // /var/lib/ambit/<instance>), or signs with an operator's intermediate from cacerts_dir;
  // ca_address switches to an external Istio-compatible CA instead.
  std::string ca_state_dir;
  std::string cacerts_dir;
  std::string ca_address, ca_root_cert, ca_token_file;
  std::string ca_listen, ca_tokens;  // serve the CA API to other nodes
  // ambitd --ca-only (CaOnly, ca_only.h): the cluster CA alone, no BPF, pods or data plane.
  bool ca_only = false;
  // CA callers' bearer tokens checked by a TokenReview against the API server instead of the
  // ca_tokens file: for this audience, from one of these users (service accounts).
  bool ca_token_review = false;
  std::string ca_token_audience = "ambit-ca";
  std::vector<std::string> ca_token_users;
  // Istio's cluster name (--cluster-id): sent to an external CA as "clusterid", the cluster the
  // CA API serves (issuance/impersonation.h), and the cluster in telemetry labels and the config
  // dump.
  std::string cluster_id = "Kubernetes";
  // The external CA's roots from a ConfigMap through kube_api ("NAMESPACE/NAME", key
  // root-cert.pem; istiod's istio-ca-root-cert), instead of the ca_root_cert file.
  std::string ca_root_configmap;
  absl::Duration cert_ttl = absl::Hours(24);
  // The built-in or cluster CA's signing rate for each node: a burst, then so many a second
  // (--ca-node-burst, --ca-node-rate). A node's own data planes wait for it (back-pressure).
  double ca_node_burst = 100;
  double ca_node_rate = 5;
  // --crl-file: PEM CRLs for the trust bundle, followed as it changes (CrlWatch); empty: none.
  std::string crl_file;
  std::string admin_socket;                         // empty: <run dir>/admin.sock
  std::string metrics_address = "0.0.0.0:15020";    // Prometheus /metrics; empty: off
  std::string readiness_address = "0.0.0.0:15021";  // /healthz/ready; empty: off
  // The heartbeat to the data plane (a ping answered through every worker thread), and how
  // long an answer may take before readiness reports the data plane as stalled. The same tick
  // re-checks that the capture programs and pins are in place.
  absl::Duration heartbeat_interval = absl::Seconds(1);
  absl::Duration heartbeat_deadline = absl::Seconds(3);
  // --take-over: when another agent holds the instance lock, ask it over its hand-off socket
  // to step aside (an upgrade with both pods on the node) instead of refusing to start; wait
  // this long for its answer.
  bool take_over = false;
  absl::Duration take_over_timeout = absl::Seconds(30);
  // A roll (docs/ARCHITECTURE.md#restarts): how long the drained predecessor may keep its
  // connections (Drain.grace_seconds), and how long a standby may take to serve every pod
  // before it is abandoned (the predecessor keeps serving throughout).
  absl::Duration drain_grace = absl::Seconds(30);
  absl::Duration standby_timeout = absl::Seconds(30);

  // ZDS (docs/ARCHITECTURE.md#zds), ambitd in ztunnel's role. zds_listen: the SOCK_SEQPACKET
  // socket ambit-cni connects to for each CNI call (nullopt: <run dir>/zds.sock; empty: off).
  // zds_connect: istio-cni's node agent's socket, connected to as ztunnel does (empty: off).
  std::optional<std::string> zds_listen;
  std::string zds_connect;
  // How long an add waits for its pod to be captured (or to appear in the configuration)
  // before it is acked with the reason it is not.
  absl::Duration zds_ack_timeout = absl::Seconds(10);

  // The instance's BPF directory; each ABI version pins in its own v<N> below it.
  std::string pin_root() const { return bpffs + "/ambit/" + instance; }
  std::string resolved_run_dir() const {
    if (!run_dir.empty()) return run_dir;
    return InstanceRunDir(instance);
  }
  std::string resolved_admin_socket() const {
    return admin_socket.empty() ? AdminSocketIn(resolved_run_dir()) : admin_socket;
  }
  std::string resolved_ca_state_dir() const {
    return ca_state_dir.empty() ? "/var/lib/ambit/" + instance : ca_state_dir;
  }
  std::string control_socket() const { return resolved_run_dir() + "/dataplane.sock"; }
  std::string resolved_zds_listen() const {
    return zds_listen.has_value() ? *zds_listen : resolved_run_dir() + "/zds.sock";
  }
  // In a directory of its own: the data plane's stats socket sits next to its control socket.
  std::string waypoint_dir() const { return resolved_run_dir() + "/waypoint"; }
  std::string waypoint_control_socket() const { return waypoint_dir() + "/dataplane.sock"; }
  std::string handoff_socket() const { return HandOffSocketFor(resolved_run_dir()); }
};

// ambitd's control loop: one thread running an EpollLoop. Watches the configuration, enrolls and
// removes pods (listeners, routing, BPF), and supervises the data plane, restarting it with
// back-off when it dies. What to do is decided by the reconcilers (EnrollmentReconciler,
// GenerationTracker, RestartBackoff, DecideCsr); Agent carries their answers out on the kernel,
// the data plane and the CA. Not thread-safe: everything runs on the thread calling Run().
//
// Lifetime: the signing threads, the CA API server and the admin and telemetry servers post
// into the agent or read what it publishes. The destructor stops and joins them first, then
// drops the loop with its pending timers, and only then are the members they touch destroyed,
// whatever order the members are declared in.
class Agent final : private PodHost, private zds::WorkloadSink {
 public:
  static absl::StatusOr<std::unique_ptr<Agent>> Create(AgentOptions options);
  ~Agent() override;
  // Runs until SIGTERM/SIGINT. The data plane and the BPF programs stay in place on exit, so a
  // restarted agent picks up where this one left off.
  absl::Status Run();
  // Stops the data plane, detaches and unpins every BPF object of the instance, and logs what
  // it found to remove. Refused while an agent of the instance runs, unless force.
  static absl::Status Cleanup(const AgentOptions& options, bool force);

  // A new agent of the instance asked this one to step aside (ambitd --take-over): Run returned,
  // and this is what the answer needs once the agent is destroyed, which is the stepping aside
  // itself (threads joined, listeners and data-plane sessions closed, nothing of the instance
  // touched). Empty when Run ended on a signal.
  struct HandOff {
    UniqueFd conn;  // to the new agent, to answer on
    TakeOverRequest request;
    std::optional<InstanceLock> lock;  // handed over with the answer
  };
  std::optional<HandOff> TakeHandOff();
  // After the agent that made `handoff` is gone: answers the new agent, handing it the instance
  // lock, logs to which PID the instance went, and idles until SIGTERM or SIGINT, touching
  // nothing (the data planes, pins and pods are the new agent's). Returns the exit code, 0.
  static int StepAside(HandOff handoff);

 private:
  // The kernel objects of an enrolled pod; what the reconciler decides with is in
  // EnrollmentReconciler::enrolled().
  struct EnrolledPod {
    state::Pod pod;
    UniqueFd netns;
    std::string netns_path;  // the annotation's, the file found by IP, or a ZDS marker
    // How the namespace was found, for ambitctl workloads: "annotation", "by IP", or
    // ZdsNetnsSource ("ZDS from ambit-cni", "ZDS from istio-cni").
    std::string netns_source;
    uint64_t netns_cookie = 0;
    uint32_t slot = 0;
    enroll::PodListeners listeners;
    // The heartbeat sequence number current when the pod was last sent to the data plane: an
    // answer to that ping or a later one must list it.
    uint64_t sent_at_seq = 0;
    // The process that was last sent the pod and holds it (kNone: none does).
    DataPlaneKind served_by = DataPlaneKind::kNone;
  };

  // One supervised data-plane process and its session: ambit-tunnel, or ambit-waypoint for the
  // pods of waypoints. Both get the same configuration generations under the same versions.
  struct Process {
    explicit Process(DataPlaneKind k) : kind(k) {}
    bool connected() const { return dp != nullptr && dp->connected(); }
    const char* name() const { return DataPlaneName(kind); }

    const DataPlaneKind kind;
    // Null for the waypoint process until its first pod is to be sent (or one is re-attached).
    std::unique_ptr<supervisor::DataPlane> dp;
    RestartBackoff restart;
    GenerationTracker generation;
    std::unique_ptr<supervisor::HeartbeatMonitor> heartbeat;
    std::optional<supervisor::PongReport> last_pong;  // of the current session
    std::vector<supervisor::CertificateState> certs;  // as it last reported them
    uint64_t health_acked = 0, health_nacked = 0;     // as last published
    // Bumped by each arming of its restart timer (see ArmRestart).
    uint64_t restart_timer = 0;
    // Why the last connection attempt failed, while not connected (readiness names it).
    std::string connect_error;

    // A roll under way: the successor standing by on <control socket>.next, given everything
    // the primary has; promoted once it serves every pod (roll.cc).
    struct Standby {
      std::unique_ptr<supervisor::DataPlane> dp;
      std::unique_ptr<supervisor::HeartbeatMonitor> heartbeat;
      std::optional<supervisor::PongReport> last_pong;
      std::vector<supervisor::CertificateState> certs;
      std::map<std::string, uint64_t> sent_at_seq;  // pods sent to it: the heartbeat seq then
      uint64_t sent_version = 0;                    // the generation it was sent
      absl::Time since;
      bool spawned = false;    // started by ambitd for `ambitctl dataplane roll`
      bool promoting = false;  // serves: promoted after the current batch of events
    };
    std::unique_ptr<Standby> standby;
    // Predecessors still draining: reaped through their pidfd when started by ambitd; started
    // apart, forgotten after the grace.
    struct Draining {
      std::unique_ptr<supervisor::DataPlane> dp;
      pid_t pid = 0;
      absl::Time until;
    };
    std::vector<Draining> draining;
    std::string roll;  // what the current or last roll did (ambitctl status)
    // A standby started apart that was abandoned is not connected to again before this.
    absl::Time standby_retry_after = absl::InfinitePast();
    // `ambitctl dataplane roll` callers waiting for the roll to end.
    std::vector<std::function<void(absl::StatusOr<admin::v1::RollDataPlaneResponse>)>> roll_waiters;
  };

  explicit Agent(AgentOptions options);
  absl::Status Init();
  // After Init failed: removes what this start created (the data plane, pins, run directory)
  // when the instance had nothing in place before, so a failed start leaves no capture that no
  // agent manages. An instance that was running keeps its pins and data plane.
  void RollBackFailedStart();
  absl::Status InitCertificates();
  // `dp` is the process's primary or its standby: the answer goes to that one, if still there.
  void OnCsrRequest(Process& process, supervisor::DataPlane& dp, supervisor::CsrRequest request);
  // Signs an entitled request (the rate already admitted it); the answer goes to the asker with
  // `tag`, if it is still there.
  // `asked`: when the data plane asked (a request waits at most kMaxCsrWait for a CA's rate).
  void SignCsr(Process& process, uint64_t tag, supervisor::CsrRequest request, absl::Time asked);
  // Requests that a CA's rate limit held back (the built-in CA's, before signing, or a remote
  // CA's RESOURCE_EXHAUSTED), in arrival order, taken up as the rate allows: back-pressure, so
  // the data plane keeps waiting instead of backing off per identity.
  struct DeferredCsr {
    Process* process;
    uint64_t tag;  // of the asking session (primary or standby)
    supervisor::CsrRequest request;
    absl::Time queued;      // first deferred
    absl::Time not_before;  // a remote CA's wait
    absl::Status refusal;   // the answer if it waits too long
  };
  // The process's primary or standby session with this tag (DataPlane::tag), or null: a request
  // is answered by the session that asked, whichever role it has by then.
  static supervisor::DataPlane* SessionWithTag(const Process& process, uint64_t tag);
  void DeferCsr(DeferredCsr csr, absl::Duration wait);
  void ArmDeferredCsrs(absl::Duration wait);
  void DrainDeferredCsrs();
  void OnCertificateReport(Process& process, std::vector<supervisor::CertificateState> certs);
  void PublishCertificates();
  // An external CA's roots changed (a rotation) or the --crl-file did: every connected data plane
  // gets the new trust bundle with the CRLs, and the admin API shows the roots. Called every
  // heartbeat tick.
  void ResendTrustBundleIfChanged();
  // The admin API's views of pods, policies and services, and the `check` snapshot
  // (admin_views.cc). Called whenever the configuration or the enrollment changes.
  void PublishViews();
  void InitAdminHandlers();
  void PublishBpf();  // the programs and where they are attached, for ambitctl bpf
  // Readiness inputs and ambitd's own metrics (admin::NodeHealth).
  void PublishHealth();
  // Readiness's words for a process that is not connected ("" when it is).
  std::string MissingDataPlane(const Process& process) const;
  Process& ProcessOf(DataPlaneKind kind) {
    return kind == DataPlaneKind::kWaypoint ? waypoint_ : tunnel_;
  }
  // A standby (a roll's successor) is started like the primary and connected to on
  // <control socket>.next.
  std::unique_ptr<supervisor::DataPlane> NewDataPlane(Process& process, bool standby = false);
  // Attaches to the process's running data plane or (with `spawn`) starts one, then sends it
  // the maps, the trust bundle, its pods and the current generation.
  absl::Status ConnectProcess(Process& process, bool spawn);
  // A previous agent's waypoint process: re-attached with its pods, or none running.
  absl::Status AttachWaypoint();
  // Starts the waypoint process when it was never started (its first pod is to be sent).
  void EnsureWaypointStarted();
  // The enrolled pods not held by the process they belong to (ProcessFor).
  std::vector<PodMove> PlannedMoves() const;
  // Removes those the other process holds, to be enrolled again for theirs. True if any.
  bool StartMoves();
  // Sends those no process holds to theirs.
  void PlacePods();
  void Apply(config::LoadResult result);
  // After the first configuration is applied: a pin migration that waited for it ends.
  absl::Status FinishMigration();
  bool applied_once_ = false;
  void Reconcile();
  // Tells the BPF programs which network namespace is the node's (--node-netns): its
  // connections to enrolled pods are kubelet probes.
  absl::Status SetNodeNetns();
  // PodHost, for RunEnrollmentPass.
  absl::StatusOr<uint64_t> OpenNetns(const state::Pod& pod) override;
  absl::StatusOr<std::string> SetUp(const state::Pod& pod,
                                    const EnrollmentReconciler::Decision& decision,
                                    bool send) override;
  absl::StatusOr<std::string> Resend(const std::string& uid) override;
  bool Remove(const std::string& uid) override;
  void RemoveStale(uint64_t netns_cookie, uint32_t slot) override;
  void ReleaseHandedBack(const std::string& uid) override;
  void DropHandedBack() override;
  bool DataPlaneConnected() const override;
  void OnPodRemoved(const std::string& uid);
  // The instance lock: taken, or with --take-over handed over by the running agent.
  absl::StatusOr<InstanceLock> TakeInstanceLock();
  absl::Status ServeHandOff();
  void OnHandOffConnection();
  void OnHandOffRequest(int fd);
  void CloseHandOffConnection(int fd);
  // ZDS (zds::WorkloadSink): workloads handed over by ambit-cni or istio-cni.
  void OnAdd(zds::Source source, zds::Request request, zds::Answer answer) override;
  std::string OnKeep(zds::Source source, const std::string& uid) override;
  std::string OnDel(zds::Source source, const std::string& uid) override;
  void OnSnapshotSent(zds::Source source, const std::vector<std::string>& remove) override;
  std::set<std::string> Known(zds::Source source) const override;
  absl::Status StartZds();
  // Applies the ZDS workloads to `state` (the configuration as loaded) in place
  // (ZdsWorkloads::ApplyInPlace, the configuration's versions of changed pods into *originals);
  // adds waiting for a pod that is gone are answered.
  void ApplyZds(state::ClusterState* state, std::map<std::string, state::Pod>* originals);
  // The pod as the configuration has it, before the ZDS workloads were applied; nullptr if the
  // configuration has no such pod.
  const state::Pod* ConfigPod(const std::string& key) const;
  // After the ZDS workloads changed: the state is rebuilt and enrollment runs.
  void ZdsChanged();
  // Answers the adds whose pod is now captured, refused, not in the mesh, or past its deadline.
  void ResolveZdsAcks();
  // Why a waiting add's pod is not captured yet ("" when it is captured or needs no capture);
  // sets *final when the answer cannot change (acked at once).
  std::string ZdsAckError(const std::string& uid, bool* final) const;
  void OnRetryTimer();
  void OnRestartTimer(Process& process);
  void OnControlReadable(Process& process);
  // Watches a data plane's control socket: readable, and writable while sends wait (see
  // supervisor::DataPlane::kMaxQueuedBytes).
  absl::Status WatchControl(supervisor::DataPlane& dp, std::function<void()> fn);
  void SetWriteInterest(supervisor::DataPlane& dp, bool want);
  // The data plane with this tag stopped reading its control channel: its session ends.
  void OnControlOverflow(Process& process, uint64_t tag);
  // Watches `fd` on the loop, calling `fn` when it is readable.
  absl::Status Watch(int fd, std::function<void()> fn);
  void Unwatch(int fd);
  // Re-arms the one pending timer of its kind: an earlier arming no longer fires.
  void ArmRetry(absl::Duration d);
  void ArmRestart(Process& process, absl::Duration d);
  void ArmHeartbeat();
  absl::Status SendPod(EnrolledPod& pod);
  // Every heartbeat_interval: a ping if none is outstanding, a log line when the data plane
  // turns late or answers again, and a fresh capture check for readiness.
  void OnHeartbeatTick();
  // --crl-file: re-read on each heartbeat tick; a changed good file goes to the data planes.
  const std::vector<std::string>& Crls() const;
  void OnPong(Process& process, supervisor::PongReport report);
  void LogHeartbeatChange(Process& process);
  std::vector<std::string> CheckCapture() const;
  // Enrolled pods whose listeners the last heartbeat answer shows missing or unserved.
  std::vector<std::string> ListenerProblems(const Process& process) const;
  // The configuration the data plane gets as generation `version`: every pod without an address
  // conflict, every service, every AuthorizationPolicy, and mTLS for the pods enrolled here.
  absl::StatusOr<mesh::Snapshot> BuildSnapshot(uint64_t version) const;
  void SendSnapshot();
  void OnDataPlaneExit(Process& process);
  // Rolls (roll.cc). StartRoll connects to (or, with `spawn`, starts) a standby and sends it
  // what the primary has; the standby's pongs and certificate reports drive CheckStandby, which
  // promotes it once it serves; AbandonStandby gives up on it with the primary untouched.
  absl::Status StartRoll(Process& process, bool spawn);
  void CheckStandby(Process& process);
  void PromoteStandby(Process& process);
  void AbandonStandby(Process& process, const std::string& why);
  void OnStandbyReadable(Process& process);
  void OnDrainedExit(Process& process, int pidfd);
  // Every heartbeat tick: pings standbys, abandons late ones, notices one that appeared on
  // <control socket>.next by itself, forgets predecessors past their grace.
  void RollTick(Process& process);
  void FinishRoll(Process& process, absl::StatusOr<admin::v1::RollDataPlaneResponse> result);
  // Sends the pod with its descriptors to `dp` (a primary or a standby); returns what it was
  // sent as.
  absl::StatusOr<mesh::Workload> SendPodTo(supervisor::DataPlane& dp, const EnrolledPod& e);
  std::string ControlSocketOf(const Process& process) const {
    return process.kind == DataPlaneKind::kWaypoint ? options_.waypoint_control_socket()
                                                    : options_.control_socket();
  }
  void InitRollHandler();
  // Answers GetConfigDump (agent/node/config_dump.cc).
  void InitConfigDumpHandler();
  void InitPlanHandlers();  // plan_handlers.cc: StrictReadiness, PolicyDiff
  // Answers VerifyMtls, and folds the wire-accounting map into wire_ledger_ every kWireBucket
  // (agent/node/verify_mtls.cc).
  void InitVerifyMtlsHandler();
  void FoldWire(bool force);
  absl::StatusOr<admin::v1::VerifyMtlsResponse> VerifyMtls(const admin::v1::VerifyMtlsRequest& req);
  // What the end of a data-plane session undoes, however it ended: the watches, the heartbeat,
  // and which pods the process held (resent on the next session).
  void EndSession(Process& process);
  // --dataplane=external: a connection attempt failed (nothing listens yet, or the session
  // could not start); tries again after the back-off.
  void OnConnectFailed(Process& process, const absl::Status& status);

  AgentOptions options_;
  // Held for the agent's lifetime; first, so that it is released last.
  std::optional<InstanceLock> lock_;
  bool fresh_pins_ = false;     // no programs were attached for the instance when Init began
  bool fresh_run_dir_ = false;  // Init created the run directory
  std::unique_ptr<bpf::Redirector> redirector_;
  std::unique_ptr<config::ConfigSource> source_;
  Process tunnel_{DataPlaneKind::kTunnel};
  Process waypoint_{DataPlaneKind::kWaypoint};
  // The last configuration generation built (sent to every connected process).
  uint64_t last_version_ = 0;
  // A configuration was loaded (Apply ran): a data plane connecting from now on gets a generation
  // even when none was built yet.
  bool config_applied_ = false;
  // The ext_authz provider warnings last logged: logged again only when they change (a snapshot
  // is built on every change of anything, the warnings would repeat).
  mutable std::vector<std::string> ext_authz_warnings_;
  // Pod::Key() of the waypoints' pods (state::WaypointResolution::instance_of), as last loaded.
  std::set<std::string> waypoint_pods_;
  // The built-in CA (null with an external one): its trust domain follows mesh.yaml.
  std::shared_ptr<ca::CertificateAuthority> ca_;
  // Shared by the data plane's CSRs and other nodes' requests to the CA API.
  std::shared_ptr<issuance::SigningRateLimiter> sign_rate_;
  std::unique_ptr<issuance::Signer> signer_;
  std::vector<std::string> trust_bundle_;  // as last sent to the data planes
  std::unique_ptr<CrlWatch> crl_watch_;    // --crl-file; null without it
  std::shared_ptr<issuance::Entitlements> entitlements_;
  std::unique_ptr<issuance::CaServer> ca_server_;
  std::shared_ptr<admin::AdminState> admin_state_;
  std::unique_ptr<admin::AdminServer> admin_server_;
  std::unique_ptr<admin::TelemetryServer> telemetry_;
  // Run-time log levels, for a new data plane serving the given control socket.
  std::function<void(const std::string&)> reapply_log_levels_;
  TaskQueue completions_;  // results of background work, run on the control thread
  // Its threads post onto completions_ and call signer_: ~Agent joins them first.
  std::unique_ptr<issuance::SigningQueue> signing_;
  enroll::PodNetOptions pod_net_;
  std::shared_ptr<const state::ClusterState> state_ = std::make_shared<const state::ClusterState>();
  // state_ is the configuration as loaded with the ZDS workloads applied to it in place: a large
  // cluster's pods are held once. This keeps the configuration's version of each pod the ZDS
  // workloads changed (by namespace/name), a few per node, so the overlay can be applied anew.
  std::map<std::string, state::Pod> zds_originals_;
  // ZDS (docs/ARCHITECTURE.md#zds): the workloads handed over, the sockets, and the adds waiting
  // for their pod to be captured (by uid; one per uid, a newer add answers the older one).
  ZdsWorkloads zds_;
  zds::Stats zds_stats_;
  std::unique_ptr<zds::ZdsServer> zds_server_;
  std::unique_ptr<zds::ZdsClient> zds_client_;
  struct PendingAck {
    zds::Answer answer;
    absl::Time deadline;
  };
  std::map<std::string, PendingAck> zds_pending_;
  // Reads a handed namespace's addresses (a pod whose object has none yet).
  std::unique_ptr<enroll::NetnsProbe> netns_probe_;
  config::SecurityConfig security_;
  std::shared_ptr<const authz::Engine> engine_;   // for the admin API; the last one that built
  std::vector<config::ConfigError> load_errors_;  // of the last load, for the admin API
  std::set<std::string> logged_authz_warnings_;
  // Configuration warnings are logged once while they last, not on every load.
  config::RepeatFilter config_warnings_;
  // config::Lint's findings of the last load by object ("Pod ns/name"), for the admin views.
  std::map<std::string, std::vector<std::string>> object_warnings_;
  // Files the last load reported an error in, to say so once one is fixed.
  std::set<std::string> files_with_errors_;
  const Clock* clock_ = &RealClock::Get();
  std::map<std::string, EnrolledPod> enrolled_;
  std::optional<EnrolledPod> opened_;  // between OpenNetns and SetUp of a pass
  // Listeners of pods the data plane handed back, until the enrollment pass adopts or drops them.
  std::map<uint64_t, supervisor::HandedBackPod> handed_back_;
  std::map<std::string, DataPlaneKind> handed_back_from_;  // uid -> the process that did
  EnrollmentReconciler enrollment_;
  std::optional<enroll::NodeNetnsGuard> node_netns_;
  // Finds the namespace of a pod that names none, by its IP under --netns-dir.
  std::unique_ptr<enroll::NetnsFinder> netns_finder_;
  std::vector<std::string> capture_problems_;  // as last checked
  std::unique_ptr<EpollLoop> loop_;
  UniqueFd signal_fd_;
  // One per watched fd; an entry outlives its Watch (EventLoop's rule) until Unwatch.
  std::map<int, std::unique_ptr<EventHandler>> handlers_;
  // Bumped by each arming; a timer that finds its number stale was re-armed and does nothing.
  uint64_t retry_timer_ = 0;
  std::deque<DeferredCsr> deferred_csrs_;
  bool deferred_csr_timer_ = false;  // a drain is scheduled
  // <run dir>/agent-handoff.sock, and the connections on it that sent no request yet.
  UniqueFd handoff_listener_;
  struct HandOffConn {
    UniqueFd fd;
    uint64_t id = 0;
  };
  std::map<int, HandOffConn> handoff_conns_;
  uint64_t handoff_conn_ids_ = 0;
  // Set when a new agent asked this one to step aside; Run returns.
  std::optional<HandOff> handoff_;
  uint64_t next_dataplane_tag_ = 0;  // supervisor::DataPlane::Options::tag
  // ambitctl verify mtls: the wire-accounting history, and when the map was last read.
  WireLedger wire_ledger_;
  absl::Time wire_read_at_ = absl::InfinitePast();
};

}  // namespace ambit::node
