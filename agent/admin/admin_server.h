#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ambit/admin/v1/admin.grpc.pb.h"
#include "ambit/admin/v1/admin.pb.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace grpc {
class Server;
}

namespace ambit::admin {

// Answers `ambitctl check` on a gRPC thread, against the configuration it was built from: an
// immutable snapshot, replaced whole by the control thread when the configuration or the
// enrollment changes. Implementations must be thread-safe (they are read-only after construction).
class CheckEvaluator {
 public:
  virtual ~CheckEvaluator() = default;
  virtual absl::StatusOr<ambit::admin::v1::CheckResponse> Check(
      const ambit::admin::v1::CheckRequest& request) const = 0;
};

// Reads what only the kernel knows at the moment of asking (map fill), into a response that
// already holds the published part. Must be thread-safe: it runs on gRPC threads.
using BpfReader = std::function<void(ambit::admin::v1::GetBpfResponse*)>;

// Reads or changes ambitd's log levels; runs on gRPC threads (log levels are atomics).
using LogLevelHandler = std::function<absl::StatusOr<ambit::admin::v1::LogLevelResponse>(
    const ambit::admin::v1::LogLevelRequest&)>;

// Asks the data plane for its live connections and/or counters (see DataPlane::FetchStats).
// Thread-safe.
using StatsFetcher = std::function<absl::StatusOr<ambit::dataplane::v1::StatsResponse>(
    bool connections, bool metrics)>;

// Rolls a data-plane process (ambitctl dataplane roll): blocks until the roll ends (the
// successor serves, or it was abandoned) or a bound passes. Thread-safe: runs on gRPC threads
// and posts the work to the control thread.
using RollHandler = std::function<absl::StatusOr<ambit::admin::v1::RollDataPlaneResponse>(
    const ambit::admin::v1::RollDataPlaneRequest&)>;
// Builds the configuration dump (ambitctl config-dump) from what is in force; the format is
// checked before. Thread-safe: runs on gRPC threads and may wait for the control thread.
using ConfigDumpHandler = std::function<absl::StatusOr<ambit::admin::v1::GetConfigDumpResponse>(
    const ambit::admin::v1::GetConfigDumpRequest&)>;

// Answers `ambitctl strict-readiness` from the data plane's plaintext clients and the
// configuration in force (the request is checked before). Thread-safe: runs on gRPC threads and
// may wait for the control thread.
using StrictReadinessHandler =
    std::function<absl::StatusOr<ambit::admin::v1::StrictReadinessResponse>(
        const ambit::admin::v1::StrictReadinessRequest&)>;

// Answers `ambitctl policy diff`; checks the request's bounds (policy_diff_limits.h) itself.
// Thread-safe, as above.
using PolicyDiffHandler = std::function<absl::StatusOr<ambit::admin::v1::PolicyDiffResponse>(
    const ambit::admin::v1::PolicyDiffRequest&)>;
// Answers `ambitctl verify mtls` from the wire-accounting map (agent/node/verify_mtls.cc); the
// request is checked before. Thread-safe: runs on gRPC threads and waits for the control thread.
using VerifyMtlsHandler = std::function<absl::StatusOr<ambit::admin::v1::VerifyMtlsResponse>(
    const ambit::admin::v1::VerifyMtlsRequest&)>;

// istiod's xDS source in NodeHealth (outside it: clang cannot default-construct a nested class
// with member initializers inside std::optional while the enclosing class is incomplete).
struct XdsTypeHealth {
  std::string type_url;
  uint64_t resources = 0, acks = 0, nacks = 0;
};
struct XdsHealth {
  bool connected = false;
  uint64_t reconnects = 0;
  std::vector<XdsTypeHealth> types;
};

// What readiness and ambitd's own metrics need, published by the control thread.
struct NodeHealth {
  bool bpf_attached = false;
  bool dataplane_connected = false;
  // While not connected: which process is missing and why, as readiness and `ambitctl status`
  // say it (the binary, how it is started, the socket nothing serves, the last error).
  std::string dataplane_missing;
  uint64_t dataplane_restarts = 0;
  // How the data planes are run: "spawn" (started and restarted by ambitd) or "external"
  // (started apart from ambitd; it only connects), and the control sockets they serve.
  std::string dataplane_mode = "spawn";
  std::string dataplane_socket;
  int dataplane_pid = 0;       // as the data plane reports it (its own PID namespace when external)
  std::string dataplane_roll;  // DataPlaneStatus.roll
  std::vector<int> dataplane_draining;  // DataPlaneStatus.draining_pids
  // Every enrolled pod (namespace/name) and the identity it needs a certificate for.
  std::vector<std::pair<std::string, std::string>> enrolled;
  int enroll_failures = 0;  // pods this node should enroll but could not
  bool config_loaded = false;
  // The configuration generation ambitd built last and the one the data plane acknowledged.
  uint64_t desired_generation = 0;
  uint64_t applied_generation = 0;
  absl::Time pending_since = absl::InfiniteFuture();  // when desired last moved past applied
  std::string generation_error;  // why desired is not applied (refused or not delivered)
  bool fail_closed = false;      // the data plane refuses new connections meanwhile
  // When the data plane's unanswered heartbeat was sent (InfiniteFuture: none outstanding),
  // and how long an answer may take before the data plane counts as hung.
  absl::Time heartbeat_waiting_since = absl::InfiniteFuture();
  absl::Duration heartbeat_deadline = absl::Seconds(3);
  // Pods this node should enroll but could not yet, since when, and why.
  struct EnrollFailure {
    std::string pod, error;
    absl::Time since;
  };
  std::vector<EnrollFailure> enroll_failing;
  // Capture programs, links or pins no longer where ambitd put them (checked about once a
  // second), and enrolled pods whose listeners the data plane's last heartbeat answer lacks.
  std::vector<std::string> capture_problems;
  std::vector<std::string> listener_problems;
  // The waypoint data plane (ambit-waypoint), judged only while `needed`: a pod of a waypoint
  // is enrolled here. The generation fields are as above, for its own session.
  struct WaypointProcess {
    bool needed = false;
    bool connected = false;
    std::string missing;  // as dataplane_missing, for this process
    std::string socket;
    int pid = 0;
    std::string roll;
    std::vector<int> draining;
    uint64_t restarts = 0;
    absl::Time heartbeat_waiting_since = absl::InfiniteFuture();
    uint64_t desired_generation = 0;
    uint64_t applied_generation = 0;
    absl::Time pending_since = absl::InfiniteFuture();
    std::string generation_error;
    bool fail_closed = false;
  };
  WaypointProcess waypoint;
  // A remote configuration source's resources (--kube-api; empty otherwise), and why it has no
  // complete configuration yet (readiness fails while that is not empty).
  struct SourceResource {
    std::string resource;
    bool synced = false;
    uint64_t lists = 0, watch_restarts = 0, errors = 0;
    absl::Time last_sync = absl::InfinitePast();
  };
  std::vector<SourceResource> config_source;
  // istiod's xDS source (--xds-address); nullopt with another source.
  using XdsType = XdsTypeHealth;
  using Xds = XdsHealth;
  std::optional<Xds> xds;
  // ZDS (--zds-listen, --zds-connect): sessions open by source (both sources listed when
  // enabled), requests answered by (type, outcome).
  std::map<std::string, uint64_t> zds_sessions;
  std::map<std::pair<std::string, std::string>, uint64_t> zds_requests;
  std::vector<std::string> config_pending;
  // ambitd --ca-only: the cluster CA, no node agent. Readiness and metrics then speak of the CA
  // alone: its API serving, the pods' placement (which node may obtain which identity) loaded.
  bool ca_only = false;
  std::vector<std::string> ca_pending;          // why the placement is not loaded yet
  std::map<std::string, uint64_t> ca_requests;  // CreateCertificate answers by outcome
  uint64_t ca_token_reviews = 0;
};

// True while the data plane's heartbeat answer is overdue as of `now`.
inline bool DataPlaneUnresponsive(const NodeHealth& health, absl::Time now) {
  return health.dataplane_connected &&
         now - health.heartbeat_waiting_since > health.heartbeat_deadline;
}

// How long a new configuration may go unapplied before readiness turns false. Applying takes
// milliseconds for ordinary sizes and about a second at 100 000 peer pods.
inline constexpr absl::Duration kGenerationGrace = absl::Seconds(5);

// The generation part of an admin answer, as of `now`.
ambit::admin::v1::ConfigGeneration GenerationOf(const NodeHealth& health, absl::Time now);

// What the admin API reports, published by ambitd's control thread and read by gRPC threads.
// Holds finished answer messages: this is the API's edge, so Protobuf is the right type here.
// Thread-safe.
class AdminState {
 public:
  void SetCertificates(ambit::admin::v1::ListCertificatesResponse certs);
  ambit::admin::v1::ListCertificatesResponse Certificates() const;
  // Every identity's chain as the data planes present it (certs --pem), ordered by identity.
  void SetCertificateChains(ambit::admin::v1::CertificatePemResponse chains);
  ambit::admin::v1::CertificatePemResponse CertificateChains() const;
  // The workloads view is built when asked for, by a builder the control thread publishes over
  // its immutable state: held prebuilt, one message per pod of the cluster stayed resident
  // (about 1 KiB a pod). The builder runs on the asking thread.
  using WorkloadsBuilder = std::function<ambit::admin::v1::ListWorkloadsResponse()>;
  void SetWorkloads(WorkloadsBuilder builder);
  ambit::admin::v1::ListWorkloadsResponse Workloads() const;
  void SetPolicies(ambit::admin::v1::ListPoliciesResponse policies);
  ambit::admin::v1::ListPoliciesResponse Policies() const;
  void SetServices(ambit::admin::v1::ListServicesResponse services);
  ambit::admin::v1::ListServicesResponse Services() const;
  // The programs and the pin root; maps are read live by the BpfReader.
  void SetBpf(ambit::admin::v1::GetBpfResponse bpf, BpfReader reader);
  ambit::admin::v1::GetBpfResponse Bpf() const;
  void SetCheckEvaluator(std::shared_ptr<const CheckEvaluator> evaluator);
  std::shared_ptr<const CheckEvaluator> checker() const;
  void SetLogLevelHandler(LogLevelHandler handler);
  LogLevelHandler log_level_handler() const;
  void SetRollHandler(RollHandler handler);
  RollHandler roll_handler() const;
  void SetConfigDumpHandler(ConfigDumpHandler handler);
  ConfigDumpHandler config_dump_handler() const;
  void SetStrictReadinessHandler(StrictReadinessHandler handler);
  StrictReadinessHandler strict_readiness_handler() const;
  void SetPolicyDiffHandler(PolicyDiffHandler handler);
  PolicyDiffHandler policy_diff_handler() const;
  void SetVerifyMtlsHandler(VerifyMtlsHandler handler);
  VerifyMtlsHandler verify_mtls_handler() const;
  void SetStatsFetcher(StatsFetcher fetcher);
  StatsFetcher stats_fetcher() const;
  void SetHealth(NodeHealth health);
  NodeHealth Health() const;
  // Readiness's reasons as of a time (ReadinessProblems, in ambit_telemetry, which builds on this
  // library): set once by ambitd, for `ambitctl status`.
  using ReadinessChecker = std::function<std::vector<std::string>(absl::Time)>;
  void SetReadinessChecker(ReadinessChecker checker);
  ReadinessChecker readiness_checker() const;

 private:
  mutable absl::Mutex mu_;
  ambit::admin::v1::ListCertificatesResponse certs_ ABSL_GUARDED_BY(mu_);
  ambit::admin::v1::CertificatePemResponse chains_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const WorkloadsBuilder> workloads_ ABSL_GUARDED_BY(mu_);
  ambit::admin::v1::ListPoliciesResponse policies_ ABSL_GUARDED_BY(mu_);
  ambit::admin::v1::ListServicesResponse services_ ABSL_GUARDED_BY(mu_);
  ambit::admin::v1::GetBpfResponse bpf_ ABSL_GUARDED_BY(mu_);
  BpfReader bpf_reader_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const CheckEvaluator> checker_ ABSL_GUARDED_BY(mu_);
  LogLevelHandler log_level_handler_ ABSL_GUARDED_BY(mu_);
  StatsFetcher stats_fetcher_ ABSL_GUARDED_BY(mu_);
  RollHandler roll_handler_ ABSL_GUARDED_BY(mu_);
  ConfigDumpHandler config_dump_handler_ ABSL_GUARDED_BY(mu_);
  StrictReadinessHandler strict_readiness_handler_ ABSL_GUARDED_BY(mu_);
  PolicyDiffHandler policy_diff_handler_ ABSL_GUARDED_BY(mu_);
  VerifyMtlsHandler verify_mtls_handler_ ABSL_GUARDED_BY(mu_);
  NodeHealth health_ ABSL_GUARDED_BY(mu_);
  ReadinessChecker readiness_checker_ ABSL_GUARDED_BY(mu_);
};

// The connections a stats answer lists, as `ambitctl connections` shows them; `pod` (namespace/
// name) keeps only that local pod's.
ambit::admin::v1::ListConnectionsResponse ConnectionsFromStats(
    const ambit::dataplane::v1::StatsResponse& stats, const std::string& pod, absl::Time now);

// A VerifyMtls request's own checks, before any state is read: `pod` is "" or namespace/name
// (each a DNS label or subdomain, as Kubernetes allows), since_seconds is 0..86400 (a day; the
// history kept is shorter, and the agent says so). InvalidArgument naming the field otherwise.
absl::Status CheckVerifyMtlsRequest(const ambit::admin::v1::VerifyMtlsRequest& req);

// ambitd's admin API on a unix socket only root can open (mode 0600). No TCP listener.
class AdminServer {
 public:
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(const std::string& socket_path,
                                                            std::shared_ptr<AdminState> state);
  ~AdminServer();

  // The request handlers Start serves, over `state`; for callers that drive them without a
  // socket (tests/fuzz/admin_api).
  static std::unique_ptr<ambit::admin::v1::Admin::Service> NewService(
      std::shared_ptr<AdminState> state);

 private:
  class Service;
  AdminServer() = default;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string path_;
};

}  // namespace ambit::admin
