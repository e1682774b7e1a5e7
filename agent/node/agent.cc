#include "agent/node/agent.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/authz/peer_authentication.h"
#include "agent/bpf/kernel.h"
#include "agent/bpf/wire.h"
#include "agent/ca/certificate_authority.h"
#include "agent/common/capabilities.h"
#include "agent/common/framed.h"
#include "agent/common/log.h"
#include "agent/common/netns.h"
#include "agent/common/seqpacket.h"
#include "agent/common/socket_util.h"
#include "agent/common/status.h"
#include "agent/config/change_summary.h"
#include "agent/identity/spiffe_id.h"
#include "agent/issuance/pem_info.h"
#include "agent/kube/api_source.h"
#include "agent/kube/client.h"
#include "agent/mesh/model.h"
#include "agent/node/admin_views.h"
#include "agent/node/ca_only.h"
#include "agent/node/ca_root_configmap.h"
#include "agent/node/enrollment_pass.h"
#include "agent/node/ext_authz_providers.h"
#include "agent/node/waypoints.h"
#include "agent/state/waypoint.h"
#include "agent/state/workload_meta.h"
#include "agent/xds/xds_source.h"
#include "bpf/abi/redirect.h"

namespace ambit::node {
namespace {

// What ambitd needs for as long as it runs, not only at start: every pod enrolled later gets
// listeners, an ip rule and route and sysctls inside its namespace (setns: CAP_SYS_ADMIN;
// netlink: CAP_NET_ADMIN) and its own sk_lookup program, loaded, attached to its namespace and
// given its listeners in the sockmap. The data plane ambitd spawns can hold no more than ambitd's
// permitted set once no_new_privs is set, and needs these two itself. No CAP_BPF or CAP_PERFMON:
// the kernel lets CAP_SYS_ADMIN do everything they allow (bpf_capable(), kept for backward
// compatibility), and CAP_SYS_ADMIN is needed for setns anyway; granted, they are dropped with
// the rest. Measured (tests/e2e/test_caps.py): without either of the two, pods cannot be set up
// ("setns ... Operation not permitted", "add fwmark rule ... Operation not permitted").
const std::vector<caps::Need>& AgentNeeds() {
  static const auto* needs = new std::vector<caps::Need>{
      {CAP_NET_ADMIN,
       "routing rules and sysctls in pod network namespaces, network BPF programs (cgroup, "
       "sk_lookup)"},
      {CAP_SYS_ADMIN, "enter pod network namespaces (setns) to set them up; BPF maps and programs"},
  };
  return *needs;
}

constexpr const char* kComponent = "agent";
// Between attempts to send a generation that could not be sent.
constexpr absl::Duration kRetryInterval = absl::Seconds(2);
// Sign calls at once: a CA that hangs holds up this many identities at most, not all of them.
constexpr int kMaxSigningInFlight = 4;
// The data planes' requests that may wait for the built-in CA's rate at once (each data plane
// keeps at most 16 in flight; a roll doubles that).
constexpr size_t kMaxDeferredCsrs = 1024;
// How long a request may wait for a CA's rate before it is answered with the refusal: under the
// data plane's own 1-minute deadline for an answer.
constexpr absl::Duration kMaxCsrWait = absl::Seconds(45);

// How long a CA that refused for its rate asks to wait: the "retry in <duration>" of ambit's
// cluster CA when the message has one (within 100 ms to 30 s), else 1 s.
absl::Duration RetryHint(absl::string_view message) {
  constexpr absl::string_view kMarker = "retry in ";
  size_t at = message.find(kMarker);
  absl::Duration d;
  if (at != absl::string_view::npos) {
    absl::string_view rest = message.substr(at + kMarker.size());
    rest = rest.substr(0, rest.find_first_of(" ;,)"));
    if (absl::ParseDuration(rest, &d)) {
      return std::clamp(d, absl::Milliseconds(100), absl::Seconds(30));
    }
  }
  return absl::Seconds(1);
}

// Runs a function when its fd is readable.
class FnHandler final : public EventHandler {
 public:
  explicit FnHandler(std::function<void()> fn) : fn_(std::move(fn)) {}
  void OnEvents(uint32_t) override { fn_(); }

 private:
  std::function<void()> fn_;
};

std::vector<std::string> IpStrings(const state::Pod& pod) {
  std::vector<std::string> out;
  for (const auto& ip : pod.ips) out.push_back(ip.ToString());
  return out;
}

// The workload fields ambitd knows of every pod from the cluster state: the part add_pod carries
// and the base of the snapshot's record. InvalidArgument when the pod's SPIFFE ID does not parse:
// neither record can describe it, so it is not served (fail closed).
absl::StatusOr<mesh::Workload> PodWorkload(const state::MeshConfig& mesh, const state::Pod& pod) {
  mesh::Workload w;
  w.namespace_name = pod.namespace_name;
  w.name = pod.name;
  w.service_account = pod.service_account;
  w.node = pod.node_name;
  // A source that left them empty (a pod known only by name) gets Istio's defaults.
  w.workload_name = pod.workload_name.empty() ? pod.name : pod.workload_name;
  w.canonical_service = pod.canonical_service.empty()
                            ? state::CanonicalService(pod.labels, w.workload_name)
                            : pod.canonical_service;
  w.canonical_revision = pod.canonical_revision.empty() ? state::CanonicalRevision(pod.labels)
                                                        : pod.canonical_revision;
  auto id = identity::ParseSpiffeId(state::SpiffeId(mesh, pod));
  if (!id.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("pod ", pod.Key(), " has no valid SPIFFE identity: ", id.status().message()));
  }
  w.identity = *std::move(id);
  w.ips = pod.ips;
  return w;
}

// The identity a data plane serves a pod with, as the enrollment reconciler compares it: the
// SPIFFE ID, or "" for a pod served without one.
std::string ServedIdentity(const mesh::Workload& workload) {
  return workload.identity.trust_domain.empty() ? std::string() : workload.identity.ToString();
}

// The ports of ambit's own HTTP endpoints ("ip:port" or "[ip]:port"; empty: off), which the data
// plane must never deliver a connection to. The data plane knows 15001/15006/15008 itself.
std::vector<uint16_t> OwnEndpointPorts(const AgentOptions& options) {
  std::vector<uint16_t> out;
  for (const std::string& address : {options.metrics_address, options.readiness_address}) {
    size_t colon = address.rfind(':');
    uint32_t port = 0;
    if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
        port == 0 || port > 65535) {
      continue;
    }
    out.push_back(static_cast<uint16_t>(port));
  }
  return out;
}

}  // namespace

Agent::Agent(AgentOptions options)
    : options_(std::move(options)), enrollment_(EnrollmentReconciler::Options{options_.node_name}) {
  pod_net_.delivery_mark = DeliveryMark(options_.socket_mark);
  pod_net_.previous_delivery_mark = PreviousDeliveryMark(options_.socket_mark);
  pod_net_.proc_root = options_.host_proc;
  if (options_.external_dataplane) {
    // A connect() to a unix socket is cheap, and a data plane the kubelet just restarted should
    // get its pods back within seconds: the attempts back off to 2 s, not to a restart's 10 s.
    for (Process* p : {&tunnel_, &waypoint_}) {
      p->restart = RestartBackoff(
          RestartBackoff::Options{absl::Milliseconds(100), absl::Seconds(2), absl::Seconds(30)});
    }
  }
}

Agent::~Agent() {
  // Threads first: a signing thread's result posts a task naming this agent onto completions_,
  // the CA API server reads ca_, entitlements_ and sign_rate_, the admin and telemetry servers
  // read admin_state_. Joined here, nothing runs on another thread when the members go.
  signing_.reset();
  ca_server_.reset();
  admin_server_.reset();
  telemetry_.reset();
  // Their sessions unwatch their sockets on the loop.
  zds_server_.reset();
  zds_client_.reset();
  // Pending timers name this agent; they are dropped unrun with the loop, before the handlers
  // and state they would touch.
  loop_.reset();
  handlers_.clear();
  // Only the holder of the instance lock serves the hand-off socket, and it is still held here
  // (or about to be handed over with the answer): the path is ours to remove.
  if (handoff_listener_) unlink(options_.handoff_socket().c_str());
}

absl::StatusOr<std::unique_ptr<Agent>> Agent::Create(AgentOptions options) {
  auto agent = std::unique_ptr<Agent>(new Agent(std::move(options)));
  if (auto status = agent->Init(); !status.ok()) {
    agent->RollBackFailedStart();
    return status;
  }
  return agent;
}

absl::Status Agent::Init() {
  AMBIT_RETURN_IF_ERROR(issuance::CheckCertTtl(options_.cert_ttl));
  if (geteuid() != 0) {
    return absl::PermissionDeniedError(
        "ambitd must run as root: it loads BPF programs and enters pod network namespaces");
  }
  AMBIT_ASSIGN_OR_RETURN(const caps::CapState granted, caps::Current());
  AMBIT_RETURN_IF_ERROR(caps::CheckNeeds("ambitd", granted.effective, AgentNeeds()));
  // Before anything of the instance is looked at: a second agent must not re-open the first
  // one's links or remove its enrollments.
  AMBIT_ASSIGN_OR_RETURN(lock_, TakeInstanceLock());
  fresh_pins_ = !bpf::Redirector::HasPinnedLinks(options_.pin_root());
  fresh_run_dir_ = !std::filesystem::exists(options_.resolved_run_dir());
  std::vector<std::string> missing = bpf::MissingKernelFeatures();
  if (!missing.empty()) {
    for (const auto& m : missing) AMBIT_LOG(kComponent, Error) << m;
    return absl::FailedPreconditionError(
        absl::StrCat(missing.size(), " kernel feature(s) missing (listed above); not starting"));
  }
  AMBIT_ASSIGN_OR_RETURN(node_netns_, enroll::NodeNetnsGuard::ForThisProcess());
  if (!node_netns_->unchecked().empty()) {
    AMBIT_LOG(kComponent, Warning) << node_netns_->unchecked();
  }
  enroll::NetnsFinder::Options finder;
  finder.dir = options_.netns_dir;
  netns_finder_ = std::make_unique<enroll::NetnsFinder>(
      std::move(finder), enroll::MakeKernelNetnsProbe(), &*node_netns_, clock_);
  netns_probe_ = enroll::MakeKernelNetnsProbe();
  AMBIT_RETURN_IF_ERROR(bpf::EnsureBpffs(options_.bpffs, options_.host_proc));
  if (options_.cgroup_path.empty()) {
    AMBIT_ASSIGN_OR_RETURN(options_.cgroup_path, bpf::FindCgroup2Mount());
  }
  std::error_code ec;
  std::filesystem::create_directories(options_.resolved_run_dir(), ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("create ", options_.resolved_run_dir(), ": ", ec.message()));
  }
  chmod(options_.resolved_run_dir().c_str(), 0700);

  bpf::RedirectConfig rc;
  rc.instance_dir = options_.pin_root();
  rc.cgroup_path = options_.cgroup_path;
  rc.socket_mark = options_.socket_mark;
  rc.delivery_mark = DeliveryMark(options_.socket_mark);
  rc.previous_delivery_mark = PreviousDeliveryMark(options_.socket_mark);
  // Processes directly in the agent's own cgroup are the agent; never when that is the root,
  // which would exempt every process placed there.
  auto mount = bpf::FindCgroup2Mount();
  if (mount.ok()) {
    auto own = bpf::OwnCgroupPath(*mount);
    if (own.ok() && *own != *mount && *own != *mount + "/") {
      auto id = bpf::CgroupId(*own);
      if (id.ok()) rc.agent_cgroup_id = *id;
    }
  }
  AMBIT_ASSIGN_OR_RETURN(redirector_, bpf::Redirector::Open(rc));
  AMBIT_LOG(kComponent, Info) << (redirector_->reused_links() ? "re-opened pinned" : "attached")
                              << " redirect programs at cgroup " << options_.cgroup_path
                              << " (pins under " << redirector_->pin_root() << ")";
  if (redirector_->migrated_from() != 0) {
    AMBIT_LOG(kComponent, Info) << "migrating BPF pins from ABI v" << redirector_->migrated_from()
                                << " to v" << AMBIT_ABI_VERSION << ": maps adopted as they are: "
                                << absl::StrJoin(redirector_->adopted_maps(), ",")
                                << "; maps started empty: "
                                << (redirector_->fresh_maps().empty()
                                        ? "none"
                                        : absl::StrJoin(redirector_->fresh_maps(), ","));
  }
  for (const auto& p : redirector_->Programs()) {
    AMBIT_LOG(kComponent, Info) << "bpf program " << p.name << " id=" << p.id
                                << " verified_insns=" << p.verified_insns;
  }
  AMBIT_RETURN_IF_ERROR(SetNodeNetns());
  std::map<uint16_t, uint8_t> ports;
  for (uint16_t p : options_.outbound_bypass_ports) ports[p] |= AMBIT_PORT_BYPASS_OUT;
  for (uint16_t p : options_.inbound_bypass_ports) ports[p] |= AMBIT_PORT_BYPASS_IN;
  for (const auto& [port, flags] : ports) {
    AMBIT_RETURN_IF_ERROR(redirector_->SetPortFlags(port, flags));
  }
  for (const auto& c : options_.outbound_bypass_cidrs) {
    AMBIT_RETURN_IF_ERROR(redirector_->AddBypassCidr(c));
  }
  AMBIT_ASSIGN_OR_RETURN(auto pinned_slots, redirector_->EnrolledPods());
  enrollment_.SetPinnedSlots(std::move(pinned_slots), redirector_->migrating());

  // Set-up that only the start needs is done (bpffs, PID 1's namespace for the guard, the cgroup
  // programs): keep only what later enrollments need, before any thread starts (capabilities
  // are per thread; the signing, gRPC and HTTP threads start below and inherit the reduced sets).
  AMBIT_RETURN_IF_ERROR(caps::DropAllExcept(caps::MaskOf(AgentNeeds())));
  if (auto now = caps::Current(); now.ok()) {
    AMBIT_LOG(kComponent, Info) << "capabilities after set-up: " << caps::Names(now->effective)
                                << " (dropped " << caps::Names(granted.effective & ~now->effective)
                                << "; no_new_privs)";
  }

  if (!options_.xds_address.empty()) {
    xds::XdsSource::Options xds_options;
    xds_options.config_dir = options_.config_dir;
    xds_options.address = options_.xds_address;
    xds_options.root_cert_file = options_.xds_root_cert;
    xds_options.token_file = options_.xds_token_file;
    xds_options.cluster_id = options_.cluster_id;
    xds_options.node_name = options_.node_name;
    xds_options.pod_name = options_.xds_pod_name;
    xds_options.pod_namespace = options_.xds_pod_namespace;
    xds_options.instance_ip = options_.xds_instance_ip;
    AMBIT_ASSIGN_OR_RETURN(source_, xds::XdsSource::Create(std::move(xds_options)));
    AMBIT_LOG(kComponent, Info) << "reading the configuration from istiod's xDS at "
                                << options_.xds_address << " and from " << options_.config_dir;
  } else if (options_.kube_api.empty()) {
    AMBIT_ASSIGN_OR_RETURN(source_, config::MakeDirectorySource(options_.config_dir));
  } else {
    AMBIT_ASSIGN_OR_RETURN(kube::KubeConfig kube_config,
                           kube::KubeConfig::FromFlags(options_.kube_api, options_.kube_token_file,
                                                       options_.kube_ca_file));
    AMBIT_ASSIGN_OR_RETURN(std::unique_ptr<kube::KubeClient> client,
                           kube::KubeClient::Create(kube_config));
    kube::KubeApiSource::Options source_options;
    source_options.config_dir = options_.config_dir;
    AMBIT_ASSIGN_OR_RETURN(source_, kube::KubeApiSource::Create(std::move(client), source_options));
    AMBIT_LOG(kComponent, Info) << "reading the configuration from the API server at "
                                << kube_config.server << " and from " << options_.config_dir;
  }

  AMBIT_ASSIGN_OR_RETURN(loop_, EpollLoop::Create());
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);
  signal_fd_ = UniqueFd(signalfd(-1, &mask, SFD_CLOEXEC));
  if (!signal_fd_) return absl::ErrnoToStatus(errno, "signalfd(SIGTERM, SIGINT)");
  AMBIT_RETURN_IF_ERROR(
      Watch(signal_fd_.get(), [this] {
        AMBIT_LOG(kComponent, Info)
            << "agent stopping; data plane pid=" << tunnel_.dp->pid()
            << (waypoint_.dp != nullptr
                    ? absl::StrCat(", waypoint data plane pid=", waypoint_.dp->pid())
                    : std::string())
            << " and BPF programs stay in place for the next agent (ambitd --cleanup removes)";
        loop_->Stop();
      }));
  if (source_->fd() >= 0) {
    AMBIT_RETURN_IF_ERROR(Watch(source_->fd(), [this] {
      if (auto result = source_->Poll()) {
        Apply(std::move(*result));
        // glibc keeps the heap a large configuration used; hand it back, so a node whose
        // configuration shrank shrinks too.
        malloc_trim(0);
        if (absl::Status s = FinishMigration(); !s.ok()) {
          AMBIT_LOG(kComponent, Error) << "finishing the BPF pin migration: " << s;
        }
      }
      PublishHealth();  // the source's sync state and counters
    }));
  }
  AMBIT_RETURN_IF_ERROR(Watch(completions_.fd(), [this] { completions_.Drain(); }));
  ArmHeartbeat();
  for (Process* p : {&tunnel_, &waypoint_}) {
    p->heartbeat = std::make_unique<supervisor::HeartbeatMonitor>(RealClock::Get(),
                                                                  options_.heartbeat_deadline);
  }
  AMBIT_RETURN_IF_ERROR(InitCertificates());

  tunnel_.dp = NewDataPlane(tunnel_);
  if (options_.external_dataplane) {
    // Started apart (its own container): it may come up before or after ambitd. Pods are
    // enrolled meanwhile; their connections wait in the listeners' backlogs until it does.
    if (absl::Status s = ConnectProcess(tunnel_, /*spawn=*/false); !s.ok()) {
      OnConnectFailed(tunnel_, s);
    }
  } else {
    AMBIT_RETURN_IF_ERROR(ConnectProcess(tunnel_, /*spawn=*/true));
  }
  // Before the first pass, so that its pods are adopted like the tunnel's.
  AMBIT_RETURN_IF_ERROR(AttachWaypoint());
  if (std::vector<std::string> pending = source_->Pending(); pending.empty()) {
    Apply(source_->Current());  // publishes the views and the health readiness reads
    // As after every later load: the parse of a large first configuration peaks at several
    // times what it leaves in use.
    malloc_trim(0);
    AMBIT_RETURN_IF_ERROR(FinishMigration());
  } else {
    // A partial configuration would remove every pod it lacks: nothing is applied (and enrolled
    // pods stay as they are) until the source has all of it; readiness says what is missing.
    for (const std::string& p : pending) AMBIT_LOG(kComponent, Info) << p;
    PublishHealth();
  }
  // After the first configuration (when the source had it), so an add finds its pod at once.
  AMBIT_RETURN_IF_ERROR(StartZds());
  AMBIT_ASSIGN_OR_RETURN(telemetry_,
                         admin::TelemetryServer::Start(options_.metrics_address,
                                                       options_.readiness_address, admin_state_));
  // Last: a new agent that asks this one to step aside finds it fully started.
  AMBIT_RETURN_IF_ERROR(ServeHandOff());
  return absl::OkStatus();
}

absl::Status Agent::FinishMigration() {
  if (applied_once_) return absl::OkStatus();
  applied_once_ = true;
  if (uint32_t from = redirector_->migrated_from(); from != 0) {
    // Every pod is in this ABI's maps now (or reported as failing): the cgroup hooks can switch.
    AMBIT_RETURN_IF_ERROR(redirector_->FinishMigration());
    AMBIT_LOG(kComponent, Info) << "migrated BPF pins from ABI v" << from << " to v"
                                << AMBIT_ABI_VERSION << "; removed the old pins";
  }
  return absl::OkStatus();
}

std::unique_ptr<supervisor::DataPlane> Agent::NewDataPlane(Process& process, bool standby) {
  const bool waypoint = process.kind == DataPlaneKind::kWaypoint;
  std::string binary = waypoint ? options_.waypoint_binary : options_.tunnel_binary;
  if (binary.empty()) {
    binary = (std::filesystem::read_symlink("/proc/self/exe").parent_path() /
              (waypoint ? "ambit-waypoint" : "ambit-tunnel"));
  }
  std::vector<std::string> args = options_.tunnel_args;
  if (waypoint)
    args.insert(args.end(), options_.waypoint_args.begin(), options_.waypoint_args.end());
  const std::string socket = ControlSocketOf(process);
  auto dp = std::make_unique<supervisor::DataPlane>(supervisor::DataPlane::Options{
      binary, socket, std::move(args),
      standby ? absl::StrCat(process.name(), " (standby)") : std::string(process.name()),
      /*watch_pid=*/!options_.external_dataplane,
      /*connect_socket=*/standby ? socket + ".next" : "", /*tag=*/++next_dataplane_tag_});
  // The process objects live as long as the agent; these run on its control thread.
  Process* p = &process;
  supervisor::DataPlane* raw = dp.get();
  dp->on_csr_request = [this, p, raw](supervisor::CsrRequest r) {
    OnCsrRequest(*p, *raw, std::move(r));
  };
  dp->on_certificate_report = [this, p](std::vector<supervisor::CertificateState> c) {
    OnCertificateReport(*p, std::move(c));
  };
  dp->on_pod_removed = [this](const std::string& uid) { OnPodRemoved(uid); };
  dp->on_pong = [this, p](supervisor::PongReport r) { OnPong(*p, std::move(r)); };
  // The data plane object owns these, so `raw` outlives every call.
  dp->on_write_interest = [this, raw](bool want) { SetWriteInterest(*raw, want); };
  dp->on_overflow = [this, p, tag = raw->tag()] {
    // Runs inside a send, which its caller may make while iterating pods: handled after it.
    if (loop_ != nullptr) loop_->Defer([this, p, tag] { OnControlOverflow(*p, tag); });
  };
  return dp;
}

absl::Status Agent::ConnectProcess(Process& process, bool spawn) {
  AMBIT_ASSIGN_OR_RETURN(auto handed_back, process.dp->Connect(spawn));
  process.restart.OnStarted(clock_->Now());
  process.connect_error.clear();
  process.heartbeat->Reset(process.dp->heartbeat_supported());
  process.last_pong.reset();
  std::vector<HandedBackInfo> infos;
  for (auto& pod : handed_back) {
    const uint64_t cookie = pod.netns_cookie;
    infos.push_back({pod.workload.Key(), ServedIdentity(pod.workload), cookie,
                     pod.outbound_v4 && pod.plain_v4 && pod.hbone_v4});
    handed_back_from_[pod.workload.Key()] = process.kind;
    handed_back_.emplace(cookie, std::move(pod));
  }
  std::vector<std::string> enrolled;
  if (process.kind == DataPlaneKind::kTunnel) {
    enrolled = enrollment_.OnSessionStart(std::move(infos));
  } else {
    enrollment_.OnHandedBack(std::move(infos));
    for (const auto& [uid, e] : enrolled_) enrolled.push_back(uid);
  }
  // A fresh process knows nothing: every enrolled pod that belongs to it is sent.
  const std::vector<std::string> resend = SessionPods(process.kind, enrolled, waypoint_pods_);
  Process* p = &process;
  // Started apart, it has no pidfd here: the control socket closing is its exit.
  if (process.dp->pidfd() >= 0) {
    AMBIT_RETURN_IF_ERROR(Watch(process.dp->pidfd(), [this, p] { OnDataPlaneExit(*p); }));
  }
  AMBIT_RETURN_IF_ERROR(WatchControl(*process.dp, [this, p] { OnControlReadable(*p); }));
  AMBIT_RETURN_IF_ERROR(process.dp->SendMaps(
      redirector_->orig_dst_map_fd(), redirector_->deliver_map_fd(), redirector_->probes_map_fd()));
  AMBIT_RETURN_IF_ERROR(process.dp->SendTrustBundle(trust_bundle_, Crls()));
  for (const auto& uid : resend) {
    if (auto it = enrolled_.find(uid); it != enrolled_.end()) {
      AMBIT_RETURN_IF_ERROR(SendPod(it->second));
    }
  }
  // Before the configuration is first loaded nothing is sent: no generation at all is served.
  // After, even when no generation was built yet (no process was connected to take one: a data
  // plane started apart may come up after ambitd), this session gets one.
  if (config_applied_) {
    if (last_version_ > 0) {
      process.generation.OnSessionStart(clock_->Now());  // a new session has applied nothing yet
    }
    SendSnapshot();
  }
  if (reapply_log_levels_) {
    reapply_log_levels_(process.kind == DataPlaneKind::kWaypoint
                            ? options_.waypoint_control_socket()
                            : options_.control_socket());
  }
  PublishHealth();
  return absl::OkStatus();
}

absl::Status Agent::AttachWaypoint() {
  waypoint_.dp = NewDataPlane(waypoint_);
  absl::Status status = ConnectProcess(waypoint_, /*spawn=*/false);
  if (status.ok()) return status;
  if (options_.external_dataplane && !absl::IsNotFound(status)) {
    // Not ours to stop: keep trying, as for a session that ended.
    OnConnectFailed(waypoint_, status);
    return absl::OkStatus();
  }
  if (!absl::IsNotFound(status)) {
    // A process that cannot be taken over would hold its pods' listeners unsupervised: it is
    // stopped, and a fresh one starts for the first waypoint pod.
    AMBIT_LOG(kComponent, Error) << "re-attach waypoint data plane: " << status.message()
                                 << "; stopping it";
    Unwatch(waypoint_.dp->pidfd());
    Unwatch(waypoint_.dp->control_fd());
    if (waypoint_.dp->pidfd() >= 0) {
      waypoint_.dp->Stop();
    } else {
      (void)supervisor::DataPlane::StopRunning(options_.waypoint_control_socket());
    }
  }
  waypoint_.dp.reset();
  return absl::OkStatus();
}

void Agent::EnsureWaypointStarted() {
  if (waypoint_.dp != nullptr) return;  // running, starting or waiting for its restart
  if (options_.external_dataplane) {
    waypoint_.dp = NewDataPlane(waypoint_);
    AMBIT_LOG(kComponent, Info) << "waypoint pods are enrolled here: connecting to the waypoint "
                                   "data plane (started apart from ambitd) on "
                                << options_.waypoint_control_socket();
    if (absl::Status status = ConnectProcess(waypoint_, /*spawn=*/false); !status.ok()) {
      OnConnectFailed(waypoint_, status);
    }
    return;
  }
  std::error_code ec;
  std::filesystem::create_directories(options_.waypoint_dir(), ec);
  if (ec) {
    AMBIT_LOG(kComponent, Error) << "create " << options_.waypoint_dir() << ": " << ec.message();
  }
  chmod(options_.waypoint_dir().c_str(), 0700);
  waypoint_.dp = NewDataPlane(waypoint_);
  AMBIT_LOG(kComponent, Info) << "starting the waypoint data plane for the waypoint pods "
                                 "enrolled here";
  if (absl::Status status = ConnectProcess(waypoint_, /*spawn=*/true); !status.ok()) {
    AMBIT_LOG(kComponent, Error) << "start waypoint data plane: " << status.message();
    if (waypoint_.dp->pidfd() >= 0) {
      OnDataPlaneExit(waypoint_);
    } else {
      ArmRestart(waypoint_, waypoint_.restart.OnStartFailed());
    }
  }
}

std::vector<PodMove> Agent::PlannedMoves() const {
  std::map<std::string, DataPlaneKind> served;
  for (const auto& [uid, e] : enrolled_) served[uid] = e.served_by;
  const std::map<DataPlaneKind, bool> reachable = {
      {DataPlaneKind::kTunnel, tunnel_.connected()},
      {DataPlaneKind::kWaypoint, waypoint_.dp == nullptr || waypoint_.connected()}};
  return PlanMoves(served, waypoint_pods_, reachable);
}

bool Agent::StartMoves() {
  bool any = false;
  for (const PodMove& move : PlannedMoves()) {
    if (move.from == DataPlaneKind::kNone) continue;  // PlacePods sends it
    // The old process shuts the pod's listeners down when it lets go of them, and a shut-down
    // listening socket stops listening for every process that holds it: the pod is removed
    // and enrolled again, with new listeners, once the old process released it.
    AMBIT_LOG(kComponent, Info) << "pod " << move.uid << " moves from the "
                                << DataPlaneName(move.from) << " to the " << DataPlaneName(move.to)
                                << " (enrolled again with new listeners once released)";
    const bool told = Remove(move.uid);
    enrollment_.OnRemoved(move.uid, told, clock_->Now());
    any = true;
  }
  return any;
}

void Agent::PlacePods() {
  for (const PodMove& move : PlannedMoves()) {
    if (move.from != DataPlaneKind::kNone) continue;  // StartMoves' work
    auto it = enrolled_.find(move.uid);
    if (it == enrolled_.end()) continue;
    if (absl::Status s = SendPod(it->second); !s.ok()) {
      AMBIT_LOG(kComponent, Error)
          << "send pod " << move.uid << " to the " << DataPlaneName(move.to) << ": " << s.message();
    }
  }
}

void Agent::Apply(config::LoadResult result) {
  // What the node tunnel cannot enforce (HTTP attributes at L4), said once per policy.
  auto engine = config::BuildAuthzEngine(result);
  if (engine.ok()) {
    for (const auto& w : (*engine)->LoadWarnings()) {
      if (logged_authz_warnings_.insert(w).second) {
        AMBIT_LOG("authz", Warning) << w;
      }
    }
    engine_ = std::move(*engine);
  }
  load_errors_ = result.errors;
  config_applied_ = true;
  std::set<std::string> error_files;
  for (const auto& e : result.errors) {
    if (e.warning) {
      if (const std::string text = e.ToString(); config_warnings_.First(text)) {
        AMBIT_LOG("config", Warning) << text;
      }
    } else {
      error_files.insert(e.file);
      // An address conflict leaves the pod listed but not enrolled, as its message says.
      const bool conflict = e.field == "status.podIPs" && e.object.starts_with("Pod ") &&
                            result.state.HasIpConflict(e.object.substr(4));
      AMBIT_LOG("config", Error) << e.ToString()
                                 << (conflict ? "" : " (object skipped; last good version kept)");
    }
  }
  // After fixing a typo, the last word about a file must not stay the old error.
  for (const std::string& file : files_with_errors_) {
    if (!error_files.contains(file)) {
      AMBIT_LOG("config", Info) << file << ": no error now (the last one reported is resolved)";
    }
  }
  files_with_errors_ = std::move(error_files);
  const size_t error_count = std::count_if(result.errors.begin(), result.errors.end(),
                                           [](const config::ConfigError& e) { return !e.warning; });
  const std::shared_ptr<const state::ClusterState> before = state_;
  const config::SecurityConfig before_security = std::move(security_);
  // The ZDS workloads applied in place, then shared with the admin API's checker instead of
  // copied: a large cluster's pods are held once.
  zds_originals_.clear();
  ApplyZds(&result.state, &zds_originals_);
  state_ = std::make_shared<const state::ClusterState>(std::move(result.state));
  security_ = std::move(result.security);
  // Valid, but probably not what was meant (config/lint.h): with the pods as enrolled (ZDS gives
  // a handed-over pod its addresses).
  config::Findings findings = config::Lint(*state_, security_, options_.node_name);
  for (const auto* list : {&findings.workloads, &findings.policies}) {
    for (const auto& e : *list) {
      if (const std::string text = e.ToString(); config_warnings_.First(text)) {
        AMBIT_LOG("config", Warning) << text;
      }
    }
  }
  config_warnings_.EndLoad();
  object_warnings_ = config::Findings::ByObject(findings.workloads);
  object_warnings_.merge(config::Findings::ByObject(findings.policies));
  load_errors_.insert(load_errors_.end(), findings.workloads.begin(), findings.workloads.end());
  const config::ChangeSummary changes =
      config::SummarizeChanges(*before, before_security, *state_, security_);
  waypoint_pods_.clear();
  for (const auto& [pod, gateway] : state::ResolveWaypoints(*state_).instance_of) {
    waypoint_pods_.insert(pod);
  }
  if (ca_ != nullptr && ca_->trust_domain() != state_->mesh.trust_domain) {
    const std::string previous = ca_->trust_domain();
    if (absl::Status s = ca_->SetTrustDomain(state_->mesh.trust_domain); !s.ok()) {
      AMBIT_LOG(kComponent, Error)
          << "built-in CA keeps trust domain " << previous << ": " << s.message();
    } else {
      AMBIT_LOG(kComponent, Info) << "built-in CA signs in trust domain "
                                  << state_->mesh.trust_domain << " (was " << previous << ")";
    }
  }
  entitlements_->Update(IdentitiesByNode(*state_));
  const uint64_t version_before = last_version_;
  Reconcile();
  AMBIT_LOG("config", Info) << "configuration applied"
                            << (last_version_ != version_before
                                    ? absl::StrCat(" as generation ", last_version_)
                                    : std::string(" (sent to the data plane once it connects)"))
                            << ": " << changes.text
                            << (error_count == 0
                                    ? std::string()
                                    : absl::StrCat("; ", error_count,
                                                   error_count == 1 ? " error" : " errors",
                                                   " above (objects skipped or kept at their "
                                                   "last good version)"));
  ResolveZdsAcks();
}

void Agent::Reconcile() {
  StartMoves();
  std::optional<absl::Time> retry_at = RunEnrollmentPass(enrollment_, *state_, *this, *clock_);
  // A pod the pass adopted from the process it no longer belongs to (handed back after an agent
  // restart) moves too: the second pass waits for its release and retries.
  if (StartMoves()) retry_at = RunEnrollmentPass(enrollment_, *state_, *this, *clock_);
  // Enrolled pods keep their kernel objects and take the configuration's view of the pod.
  for (auto& [uid, e] : enrolled_) {
    auto it = state_->pods.find(uid);
    if (it == state_->pods.end()) continue;
    // A pod handed over by ZDS before its object had addresses was enrolled with its
    // namespace's; the object's replace them (the pod keeps its listeners and connections).
    const bool new_ips = e.pod.ips != it->second.ips && e.netns_path.starts_with("zds:");
    e.pod = it->second;
    if (new_ips) {
      absl::Status st = redirector_->SetPodAddresses(e.netns_cookie, e.pod.ips);
      if (st.ok() && e.served_by != DataPlaneKind::kNone) st = SendPod(e);
      if (!st.ok()) {
        AMBIT_LOG(kComponent, Error)
            << "pod " << uid << " addresses " << absl::StrJoin(IpStrings(e.pod), ",") << ": "
            << st.message();
      }
    }
  }
  if (retry_at.has_value()) ArmRetry(*retry_at - clock_->Now());
  PlacePods();
  SendSnapshot();
  PublishViews();
}

absl::StatusOr<uint64_t> Agent::OpenNetns(const state::Pod& pod) {
  opened_.reset();
  EnrolledPod e;
  e.pod = pod;
  const ZdsWorkload* handed = zds_.ByMarker(pod.netns_path);
  if (handed != nullptr) {
    // Handed over by the CNI side: its descriptor, never a path (the pod may have none).
    UniqueFd dup(fcntl(handed->netns.get(), F_DUPFD_CLOEXEC, 0));
    if (!dup) return absl::ErrnoToStatus(errno, absl::StrCat("dup the netns of pod ", pod.Key()));
    e.netns = std::move(dup);
    e.netns_path = pod.netns_path;
    e.netns_source = ZdsNetnsSource(handed->source);
  } else if (pod.netns_path.empty()) {
    e.netns_source = "by IP";
    // Enrolled by label: the namespace is the one holding the pod's IP. A miss, or two
    // namespaces holding it, is retried; the node's own namespace is refused.
    auto found = netns_finder_->Find(pod.ips);
    if (!found.ok()) {
      return absl::Status(
          absl::IsPermissionDenied(found.status()) ? absl::StatusCode::kPermissionDenied
                                                   : absl::StatusCode::kUnavailable,
          absl::StrCat(pod.source_file, ": Pod ", pod.Key(), ": ", found.status().message()));
    }
    e.netns = std::move(found->fd);
    e.netns_path = std::move(found->path);
  } else {
    auto netns = ambit::OpenNetns(pod.netns_path);
    if (!netns.ok()) {
      // Refusal is the guard's verdict alone: a path that cannot be opened now is retried.
      return absl::UnavailableError(netns.status().message());
    }
    e.netns = *std::move(netns);
    e.netns_path = pod.netns_path;
    e.netns_source = "annotation";
  }
  // Checked on the descriptor that is used from here on, so no path trick can swap it.
  if (absl::Status s = node_netns_->Check(e.netns.get()); !s.ok()) {
    if (handed != nullptr) {
      return absl::Status(s.code(),
                          absl::StrCat(pod.source_file, ": Pod ", pod.Key(),
                                       ": the "
                                       "network namespace handed over by ",
                                       zds::SourceName(handed->source), ": ", s.message()));
    }
    return absl::Status(s.code(), pod.netns_path.empty()
                                      ? absl::StrCat(pod.source_file, ": Pod ", pod.Key(), ": ",
                                                     e.netns_path, " (found by IP): ", s.message())
                                      : absl::StrCat(pod.source_file, ": Pod ", pod.Key(),
                                                     ": field metadata.annotations[",
                                                     std::string(state::kNetnsAnnotation),
                                                     "]: ", pod.netns_path, ": ", s.message()));
  }
  AMBIT_ASSIGN_OR_RETURN(e.netns_cookie, NetnsCookie(e.netns.get()));
  const uint64_t cookie = e.netns_cookie;
  opened_ = std::move(e);
  return cookie;
}

absl::Status Agent::SetNodeNetns() {
  const std::string path =
      options_.node_netns.empty() ? std::string("/proc/self/ns/net") : options_.node_netns;
  auto netns = ambit::OpenNetns(path);
  if (!netns.ok()) {
    return absl::Status(netns.status().code(),
                        absl::StrCat("--node-netns: ", netns.status().message()));
  }
  AMBIT_ASSIGN_OR_RETURN(uint64_t cookie, NetnsCookie(netns->get()));
  AMBIT_RETURN_IF_ERROR(redirector_->SetNodeNetns(cookie));
  AMBIT_LOG(kComponent, Info) << "kubelet probes: connections from network namespace " << path
                              << " (netns_cookie=" << cookie
                              << ") to enrolled pods pass STRICT mTLS and authorization";
  return absl::OkStatus();
}

absl::StatusOr<std::string> Agent::SetUp(const state::Pod& pod,
                                         const EnrollmentReconciler::Decision& d, bool send) {
  if (!opened_.has_value() || opened_->pod.Key() != pod.Key()) {
    return absl::InternalError(absl::StrCat("pod ", pod.Key(), " was not opened for set-up"));
  }
  EnrolledPod e = std::move(*opened_);
  opened_.reset();
  e.slot = d.slot;
  const bool adopted = d.kind == EnrollmentReconciler::Decision::kAdopt;
  auto hb = handed_back_.find(e.netns_cookie);
  if (adopted && hb != handed_back_.end()) {
    // The running data plane still holds this pod's listeners: keep them, so connections
    // waiting in their backlogs and live connections are untouched.
    e.listeners.outbound_v4 = std::move(hb->second.outbound_v4);
    e.listeners.outbound_v6 = std::move(hb->second.outbound_v6);
    e.listeners.plain_v4 = std::move(hb->second.plain_v4);
    e.listeners.plain_v6 = std::move(hb->second.plain_v6);
    e.listeners.hbone_v4 = std::move(hb->second.hbone_v4);
    e.listeners.hbone_v6 = std::move(hb->second.hbone_v6);
  } else {
    AMBIT_ASSIGN_OR_RETURN(e.listeners, enroll::CreatePodListeners(e.netns.get(), pod_net_));
  }
  if (adopted) {
    auto from = handed_back_from_.find(pod.Key());
    e.served_by = from != handed_back_from_.end() ? from->second : DataPlaneKind::kTunnel;
  }
  if (hb != handed_back_.end()) handed_back_.erase(hb);
  AMBIT_RETURN_IF_ERROR(enroll::ConfigurePodRouting(e.netns.get(), pod_net_));
  bpf::InboundListenerFds inbound;
  inbound.plain_v4 = e.listeners.plain_v4.get();
  inbound.plain_v6 = e.listeners.plain_v6.get();
  inbound.hbone_v4 = e.listeners.hbone_v4.get();
  inbound.hbone_v6 = e.listeners.hbone_v6.get();
  AMBIT_RETURN_IF_ERROR(redirector_->EnrollPod(e.netns_cookie, e.slot, e.netns.get(), inbound));
  AMBIT_RETURN_IF_ERROR(redirector_->SetPodAddresses(e.netns_cookie, pod.ips));
  // A send that fails leaves the BPF entry in place: its listeners close with `e`, and the
  // sk_lookup program drops what finds none (closed, not open) until the retry.
  std::string told;
  if (send) {
    AMBIT_RETURN_IF_ERROR(SendPod(e));
    told = state::SpiffeId(state_->mesh, pod);
  }
  AMBIT_LOG(kComponent, Info) << (adopted ? "adopted" : "enrolled") << " pod " << pod.Key()
                              << " netns=" << e.netns_path
                              << (e.netns_source == "annotation" ? std::string()
                                  : e.netns_source == "by IP"    ? std::string(" (found by IP)")
                                                                 : " (" + e.netns_source + ")")
                              << " netns_cookie=" << e.netns_cookie << " slot=" << e.slot
                              << " ips=" << absl::StrJoin(IpStrings(pod), ",");
  enrolled_.insert_or_assign(pod.Key(), std::move(e));
  return told;
}

absl::StatusOr<std::string> Agent::Resend(const std::string& uid) {
  EnrolledPod& e = enrolled_.at(uid);
  e.pod = state_->pods.at(uid);
  AMBIT_RETURN_IF_ERROR(redirector_->SetPodAddresses(e.netns_cookie, e.pod.ips));
  AMBIT_RETURN_IF_ERROR(SendPod(e));
  return state::SpiffeId(state_->mesh, e.pod);
}

bool Agent::Remove(const std::string& uid) {
  auto it = enrolled_.find(uid);
  if (it == enrolled_.end()) return false;
  auto status =
      redirector_->RemovePod(it->second.netns_cookie, it->second.slot, it->second.netns.get());
  if (!status.ok()) {
    AMBIT_LOG(kComponent, Warning) << "remove pod " << uid << ": " << status.message();
  }
  const DataPlaneKind served_by = it->second.served_by;
  const bool told = served_by != DataPlaneKind::kNone && ProcessOf(served_by).connected() &&
                    ProcessOf(served_by).dp->SendRemovePod(uid).ok();
  if (served_by != DataPlaneKind::kNone && ProcessOf(served_by).standby != nullptr) {
    Process& p = ProcessOf(served_by);
    p.standby->sent_at_seq.erase(uid);
    (void)p.standby->dp->SendRemovePod(uid);
  }
  wire_ledger_.ForgetPod(it->second.netns_cookie);
  enrolled_.erase(it);
  return told;
}

void Agent::RemoveStale(uint64_t netns_cookie, uint32_t slot) {
  (void)redirector_->RemovePod(netns_cookie, slot);
  wire_ledger_.ForgetPod(netns_cookie);
}

void Agent::ReleaseHandedBack(const std::string& uid) {
  auto from = handed_back_from_.find(uid);
  Process& p = ProcessOf(from != handed_back_from_.end() ? from->second : DataPlaneKind::kTunnel);
  if (p.connected()) (void)p.dp->SendRemovePod(uid);
}

void Agent::DropHandedBack() {
  handed_back_.clear();
  handed_back_from_.clear();
}

bool Agent::DataPlaneConnected() const { return tunnel_.connected(); }

void Agent::OnPodRemoved(const std::string& uid) {
  // A pod waiting for this netns is enrolled now, not at the next retry.
  if (enrollment_.OnPodRemoved(uid)) ArmRetry(absl::ZeroDuration());
}

absl::Status Agent::SendPod(EnrolledPod& e) {
  const std::string uid = e.pod.Key();
  const DataPlaneKind to = ProcessFor(uid, waypoint_pods_);
  // Held by the other process: it moves with new listeners (StartMoves), never shared.
  if (e.served_by != DataPlaneKind::kNone && e.served_by != to) return absl::OkStatus();
  if (to == DataPlaneKind::kWaypoint && waypoint_.dp == nullptr) {
    EnsureWaypointStarted();
    if (e.served_by == to) return absl::OkStatus();  // its first session sent it
  }
  Process& p = ProcessOf(to);
  if (!p.connected()) return absl::OkStatus();  // its next session sends it
  e.sent_at_seq = p.heartbeat->next_seq();
  AMBIT_ASSIGN_OR_RETURN(mesh::Workload workload, SendPodTo(*p.dp, e));
  if (p.standby != nullptr) {
    // A roll under way: the successor serves what the primary does.
    p.standby->sent_at_seq[uid] = p.standby->heartbeat->next_seq();
    if (auto s = SendPodTo(*p.standby->dp, e); !s.ok()) {
      AbandonStandby(p, absl::StrCat("pod ", uid, " not sent: ", s.status().message()));
    }
  }
  e.served_by = to;
  enrollment_.OnSent(workload.Key(), ServedIdentity(workload));
  return absl::OkStatus();
}

absl::StatusOr<mesh::Workload> Agent::SendPodTo(supervisor::DataPlane& dp, const EnrolledPod& e) {
  supervisor::PodDescriptor d;
  AMBIT_ASSIGN_OR_RETURN(d.workload, PodWorkload(state_->mesh, e.pod));
  d.workload.enrolled_here = true;
  d.netns_cookie = e.netns_cookie;
  d.netns = e.netns.get();
  d.outbound_v4 = e.listeners.outbound_v4.get();
  d.outbound_v6 = e.listeners.outbound_v6.get();
  d.plain_v4 = e.listeners.plain_v4.get();
  d.plain_v6 = e.listeners.plain_v6.get();
  d.hbone_v4 = e.listeners.hbone_v4.get();
  d.hbone_v6 = e.listeners.hbone_v6.get();
  AMBIT_RETURN_IF_ERROR(dp.SendAddPod(d));
  return d.workload;
}

absl::StatusOr<mesh::Snapshot> Agent::BuildSnapshot(uint64_t version) const {
  mesh::Snapshot snapshot;
  snapshot.version = version;
  snapshot.trust_domain = state_->mesh.trust_domain;
  for (const std::string& alias : state_->mesh.trust_domain_aliases) {
    // trustDomain may name one of its aliases (mid-migration): it is the trust domain then.
    if (alias != snapshot.trust_domain) snapshot.trust_domain_aliases.push_back(alias);
  }
  snapshot.root_namespace = state_->mesh.root_namespace;
  snapshot.cluster_id = options_.cluster_id;
  snapshot.reserved_ports = OwnEndpointPorts(options_);
  const auto peer_authentications = security_.PeerAuthenticationList();
  snapshot.workloads.reserve(state_->pods.size());
  for (const auto& [key, pod] : state_->pods) {
    // The data plane indexes workloads by address: a pod that lost its address to an older one
    // must not be there, or connections to the address would expect the wrong identity.
    if (state_->HasIpConflict(key)) continue;
    AMBIT_ASSIGN_OR_RETURN(mesh::Workload w, PodWorkload(state_->mesh, pod));
    w.enrolled_here = enrolled_.count(pod.Key()) > 0;
    // Captured by the ambit agent on its own node (named netns, or enrolled by label).
    w.in_mesh = state::InMesh(pod, *state_);
    if (w.enrolled_here) {
      // Labels select the destination of a policy, always a pod of this node: a peer's would
      // only make the snapshot and the data plane's memory grow with the cluster.
      w.labels = pod.labels;
      auto base = authz::ResolveMtlsMode(peer_authentications, state_->mesh.root_namespace,
                                         pod.namespace_name, pod.labels, 0);
      mesh::MtlsPolicy mtls;
      mtls.workload = {base.mode, base.policy};
      // Only ports some portLevelMtls names can differ from the workload's mode.
      for (const auto& policy : peer_authentications) {
        for (const auto& [port, mode] : policy.port_level) {
          if (port == 0 || port > 65535) continue;
          auto d = authz::ResolveMtlsMode(peer_authentications, state_->mesh.root_namespace,
                                          pod.namespace_name, pod.labels, port);
          if (d.mode != base.mode) mtls.ports[static_cast<uint16_t>(port)] = {d.mode, d.policy};
        }
      }
      w.mtls = std::move(mtls);
    }
    snapshot.workloads.push_back(std::move(w));
  }
  for (const auto& [key, svc] : state_->services) {
    mesh::Service d;
    d.namespace_name = svc.namespace_name;
    d.name = svc.name;
    d.cluster_ips = svc.cluster_ips;
    for (const auto& p : svc.ports) {
      uint32_t target = 0;
      // Named target ports would need container port names, which pods here do not carry.
      if (!absl::SimpleAtoi(p.target_port, &target)) target = p.target_port.empty() ? p.port : 0;
      if (target > 65535) target = 0;
      auto protocol = mesh::ParseProtocol(p.protocol);
      if (!protocol.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat("service ", key, " port ", p.port,
                                                       ": protocol '", p.protocol,
                                                       "' is not TCP, UDP or SCTP"));
      }
      d.ports.push_back({p.port, static_cast<uint16_t>(target), *protocol,
                         mesh::SelectAppProtocol(p.app_protocol, p.name)});
    }
    for (const auto& [pk, pod] : state_->pods) {
      if (state::Selects(svc, pod) && !state_->HasIpConflict(pk)) d.endpoints.push_back(pod.Key());
    }
    snapshot.services.push_back(std::move(d));
  }
  for (const auto& [key, policy] : security_.authorization_policies) {
    snapshot.authorization_policies.push_back(policy);
  }
  // All of them, whatever namespace: a waypoint serves workloads of many namespaces.
  snapshot.request_authentications = security_.RequestAuthenticationList();
  // Every Service is in the snapshot already (with its cluster IPs, ports and endpoints), so the
  // one a provider names is there for the waypoint to dial.
  ExtAuthzProviders ext_authz = ConvertExtAuthzProviders(*state_);
  snapshot.ext_authz_providers = std::move(ext_authz.providers);
  if (ext_authz.warnings != ext_authz_warnings_) {
    for (const auto& w : ext_authz.warnings) AMBIT_LOG(kComponent, Warning) << "mesh config " << w;
    ext_authz_warnings_ = std::move(ext_authz.warnings);
  }
  AddWaypoints(*state_, &snapshot);
  return snapshot;
}

void Agent::SendSnapshot() {
  if (!tunnel_.connected() && !waypoint_.connected()) return;
  // Built once for both processes, under one version.
  const uint64_t version = ++last_version_;
  auto snapshot = BuildSnapshot(version);
  bool failed = false;
  for (Process* p : {&tunnel_, &waypoint_}) {
    if (!p->connected()) continue;
    p->generation.Track(version, p->dp->acked_version(), clock_->Now());
    auto status = snapshot.ok() ? p->dp->SendSnapshot(*snapshot) : snapshot.status();
    p->generation.OnSent(status.ok() ? "" : std::string(status.message()));
    if (status.ok()) continue;
    // The process would go on enforcing the previous generation while the admin API shows
    // this one: tell it to refuse new connections instead, and try again shortly.
    failed = true;
    AMBIT_LOG(kComponent, Error) << "configuration generation " << version
                                 << " could not be sent to the " << p->name() << ": "
                                 << p->generation.delivery_error() << "; the " << p->name()
                                 << " fails closed until it is";
    auto told = p->dp->SendSnapshotFailed(version, p->generation.delivery_error());
    if (!told.ok()) {
      AMBIT_LOG(kComponent, Error)
          << "tell the " << p->name() << " to fail closed: " << told.message();
    }
  }
  for (Process* p : {&tunnel_, &waypoint_}) {
    if (p->standby == nullptr || !snapshot.ok()) continue;
    if (absl::Status s = p->standby->dp->SendSnapshot(*snapshot); !s.ok()) {
      AbandonStandby(*p, absl::StrCat("generation ", version, " not sent: ", s.message()));
    } else {
      p->standby->sent_version = version;
    }
  }
  if (failed) ArmRetry(kRetryInterval);
  PublishHealth();
}

absl::Status Agent::Watch(int fd, std::function<void()> fn) {
  // A number still listed belongs to a descriptor closed without Unwatch (the kernel dropped it
  // from the epoll set): the new descriptor replaces it.
  if (handlers_.contains(fd)) Unwatch(fd);
  auto handler = std::make_unique<FnHandler>(std::move(fn));
  AMBIT_RETURN_IF_ERROR(loop_->Watch(fd, EPOLLIN, handler.get()));
  handlers_[fd] = std::move(handler);
  return absl::OkStatus();
}

absl::Status Agent::WatchControl(supervisor::DataPlane& dp, std::function<void()> fn) {
  AMBIT_RETURN_IF_ERROR(Watch(dp.control_fd(), std::move(fn)));
  // Re-watched with messages still queued (a promoted standby): they still wait for EPOLLOUT.
  if (dp.wants_write()) SetWriteInterest(dp, true);
  return absl::OkStatus();
}

void Agent::SetWriteInterest(supervisor::DataPlane& dp, bool want) {
  // Not watched (yet, or any more): WatchControl applies it, or the session is over.
  auto it = handlers_.find(dp.control_fd());
  if (loop_ == nullptr || dp.control_fd() < 0 || it == handlers_.end()) return;
  if (absl::Status s =
          loop_->Modify(dp.control_fd(), EPOLLIN | (want ? EPOLLOUT : 0u), it->second.get());
      !s.ok()) {
    AMBIT_LOG(kComponent, Error) << "control channel write watch: " << s.message();
  }
}

void Agent::OnControlOverflow(Process& process, uint64_t tag) {
  if (process.standby != nullptr && process.standby->dp->tag() == tag) {
    AbandonStandby(process, "it stopped reading its control channel");
    return;
  }
  if (process.dp == nullptr || process.dp->tag() != tag || !process.connected()) return;
  if (process.dp->pidfd() < 0) {
    // Started apart: ending the session is all there is; it is reconnected to as always.
    OnDataPlaneExit(process);
    return;
  }
  // Ours: its exit (pidfd) restarts it as any data plane that died, backed off and counted.
  AMBIT_LOG(kComponent, Error) << process.name() << " pid=" << process.dp->pid()
                               << " is killed to be restarted: it stopped reading its control "
                                  "channel";
  Unwatch(process.dp->control_fd());
  process.dp->Kill();
}

void Agent::Unwatch(int fd) {
  if (fd < 0) return;
  loop_->Unwatch(fd);
  // The handler may be the one running now: freed after this batch of events.
  auto it = handlers_.find(fd);
  if (it == handlers_.end()) return;
  std::shared_ptr<EventHandler> handler = std::move(it->second);
  handlers_.erase(it);
  loop_->Defer([handler] {});
}

// Timers run on the loop thread, which only runs inside Run(); the loop, and with it every
// pending timer, is destroyed before the members these read (see ~Agent).
void Agent::ArmRetry(absl::Duration d) {
  loop_->RunAfter(d, [this, token = ++retry_timer_] {
    if (token == retry_timer_) OnRetryTimer();
  });
}

void Agent::ArmRestart(Process& process, absl::Duration d) {
  Process* p = &process;
  loop_->RunAfter(d, [this, p, token = ++process.restart_timer] {
    if (token == p->restart_timer) OnRestartTimer(*p);
  });
}

void Agent::ArmHeartbeat() {
  loop_->RunAfter(options_.heartbeat_interval, [this] {
    ArmHeartbeat();
    OnHeartbeatTick();
  });
}

void Agent::OnRetryTimer() {
  if (enrollment_.has_failures()) {
    Reconcile();  // sends a snapshot too
  } else if (tunnel_.generation.needs_resend() || waypoint_.generation.needs_resend()) {
    SendSnapshot();
  }
}

void Agent::OnRestartTimer(Process& process) {
  auto status = ConnectProcess(process, /*spawn=*/!options_.external_dataplane);
  if (status.ok()) {
    // A pod that waited for this process may now move to it.
    if (!PlannedMoves().empty()) Reconcile();
    return;
  }
  if (options_.external_dataplane) {
    OnConnectFailed(process, status);
    return;
  }
  process.connect_error = std::string(status.message());
  AMBIT_LOG(kComponent, Error) << "restart " << process.name() << ": " << status.message();
  if (process.dp->pidfd() >= 0) {
    OnDataPlaneExit(process);
  } else {
    ArmRestart(process, process.restart.OnStartFailed());
  }
}

void Agent::OnControlReadable(Process& process) {
  if (!process.connected()) return;
  if (auto status = process.dp->OnControlReadable(); !status.ok()) {
    if (process.dp->pidfd() < 0) {
      // Not watched by PID (started apart): the session ending is all there is to see.
      AMBIT_LOG(kComponent, Debug) << process.name() << " session: " << status.message();
      OnDataPlaneExit(process);
      return;
    }
    // The process exit (pidfd) drives the restart; here just stop reading.
    Unwatch(process.dp->control_fd());
  }
  process.generation.OnAcked(process.dp->acked_version());
  if (process.dp->acked_version() != process.health_acked ||
      process.dp->nacked_version() != process.health_nacked) {
    PublishHealth();
  }
}

void Agent::OnDataPlaneExit(Process& process) {
  // The primary gone mid-roll: the restart takes its place as always. A standby of ours goes (it
  // could not be promoted without the primary's drain); one started apart takes the socket over
  // once the lock is free and is connected to as the restarted process.
  AbandonStandby(process, "was left: the primary it was to replace ended");
  const bool watched = process.dp->pidfd() >= 0;
  pid_t pid = process.dp->pid();
  EndSession(process);
  std::string how = watched ? process.dp->Reap() : std::string();
  if (!watched) process.dp->Disconnect();
  const absl::Duration delay = process.restart.OnExit(clock_->Now());
  if (watched) {
    AMBIT_LOG(kComponent, Error) << process.name() << " pid=" << pid << " " << how << "; restart #"
                                 << process.restart.restarts() << " in "
                                 << absl::FormatDuration(delay)
                                 << " (listeners stay open; new connections wait in backlog)";
  } else {
    process.connect_error = "its control session ended";
    AMBIT_LOG(kComponent, Error) << process.name() << " pid=" << pid
                                 << " (started apart from ambitd) ended its control "
                                 << "session; reconnecting #" << process.restart.restarts()
                                 << " in " << absl::FormatDuration(delay)
                                 << " once it listens again on " << process.dp->control_socket()
                                 << " (listeners stay open; new connections wait in backlog)";
  }
  ArmRestart(process, delay);
  PublishHealth();
}

void Agent::EndSession(Process& process) {
  Unwatch(process.dp->pidfd());
  Unwatch(process.dp->control_fd());
  process.heartbeat->Reset(false);  // a data plane gone is reported as not connected
  process.last_pong.reset();
  if (process.kind == DataPlaneKind::kTunnel) enrollment_.OnDataPlaneExit();
  for (auto& [uid, e] : enrolled_) {
    if (e.served_by == process.kind) e.served_by = DataPlaneKind::kNone;  // resent on restart
  }
}

void Agent::OnConnectFailed(Process& process, const absl::Status& status) {
  // A session that began and failed half-way (hello, hand-back, a send) ends like any other.
  EndSession(process);
  process.dp->Disconnect();
  const bool first =
      process.connect_error.empty() || process.connect_error == "its control session ended";
  process.connect_error = std::string(status.message());
  const absl::Duration delay = process.restart.OnStartFailed();
  if (first) {
    AMBIT_LOG(kComponent, Warning)
        << process.name() << " not connected: " << status.message()
        << "; it is started apart from ambitd (--dataplane=external), which connects once it "
           "listens (retrying every "
        << absl::FormatDuration(delay) << " and backing off)";
  } else {
    AMBIT_LOG(kComponent, Debug) << process.name() << " still not connected: " << status.message();
  }
  ArmRestart(process, delay);
  PublishHealth();
}

absl::Status Agent::Run() {
  loop_->Run();
  return absl::OkStatus();
}

absl::StatusOr<InstanceLock> Agent::TakeInstanceLock() {
  absl::StatusOr<InstanceLock> lock = InstanceLock::Acquire(options_.instance);
  if (lock.ok() || lock.status().code() != absl::StatusCode::kFailedPrecondition) return lock;
  if (!options_.take_over) {
    return absl::FailedPreconditionError(
        absl::StrCat(lock.status().message(),
                     " (ambitd --take-over asks a running agent to step aside: an upgrade)"));
  }
  const std::string socket = options_.handoff_socket();
  AMBIT_LOG(kComponent, Info) << lock.status().message() << "; --take-over: asking it to step "
                              << "aside over " << socket;
  absl::StatusOr<SteppedAside> aside =
      RequestTakeOver(socket, ThisAgent(options_.instance), options_.take_over_timeout);
  if (!aside.ok()) {
    // Nobody answers: the holder may have exited since (a stale socket file stays behind), or
    // it is an agent that offers no hand-off (an older build) or `ambitd --cleanup`.
    if (aside.status().code() == absl::StatusCode::kUnavailable) {
      if (auto again = InstanceLock::Acquire(options_.instance); again.ok()) {
        AMBIT_LOG(kComponent, Info) << "the agent that held the instance is gone ("
                                    << aside.status().message() << "); starting";
        return again;
      }
    }
    return absl::FailedPreconditionError(absl::StrCat(
        lock.status().message(), "; --take-over failed: ", aside.status().message(),
        aside.status().code() == absl::StatusCode::kUnavailable
            ? " (an agent without the hand-off, e.g. an older build, must be stopped first)"
            : ""));
  }
  AMBIT_LOG(kComponent, Info) << "agent pid " << aside->pid << " (build " << aside->build
                              << ", BPF ABI v" << aside->bpf_abi
                              << ") stepped aside; taking over the instance as build "
                              << BuildVersion() << ", BPF ABI v" << AMBIT_ABI_VERSION
                              << (aside->bpf_abi != AMBIT_ABI_VERSION
                                      ? " (the pins migrate as on any restart)"
                                      : "");
  if (aside->lock) {
    absl::StatusOr<InstanceLock> adopted =
        InstanceLock::Adopt(options_.instance, std::move(aside->lock));
    if (adopted.ok()) return adopted;
    AMBIT_LOG(kComponent, Warning)
        << "the handed-over instance lock: " << adopted.status() << "; taking it anew";
  }
  // Without the descriptor (or with one that did not hold): the old agent released the lock
  // before answering, so it is free unless a third process took it meanwhile.
  for (int attempt = 0; attempt < 50; ++attempt) {
    lock = InstanceLock::Acquire(options_.instance);
    if (lock.ok() || lock.status().code() != absl::StatusCode::kFailedPrecondition) return lock;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return lock;
}

absl::Status Agent::ServeHandOff() {
  AMBIT_ASSIGN_OR_RETURN(handoff_listener_, ListenUnix(options_.handoff_socket(), SOCK_SEQPACKET));
  return Watch(handoff_listener_.get(), [this] { OnHandOffConnection(); });
}

void Agent::OnHandOffConnection() {
  UniqueFd conn(accept4(handoff_listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!conn) return;
  // Root only (the socket is 0600 in a 0700 directory); checked again on the connection.
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.uid != 0) {
    AMBIT_LOG(kComponent, Warning) << "hand-off connection from uid " << cred.uid << " refused";
    return;
  }
  // At most a few at once: a request is one packet sent right after connecting.
  if (handoff_conns_.size() >= 4) return;
  const int fd = conn.get();
  if (!Watch(fd, [this, fd] { OnHandOffRequest(fd); }).ok()) return;
  const uint64_t id = ++handoff_conn_ids_;
  handoff_conns_[fd] = HandOffConn{std::move(conn), id};
  // One that sends nothing is closed; a later connection reusing the number is not.
  loop_->RunAfter(absl::Seconds(5), [this, fd, id] {
    auto it = handoff_conns_.find(fd);
    if (it != handoff_conns_.end() && it->second.id == id) CloseHandOffConnection(fd);
  });
}

void Agent::CloseHandOffConnection(int fd) {
  Unwatch(fd);
  handoff_conns_.erase(fd);
}

void Agent::OnHandOffRequest(int fd) {
  auto it = handoff_conns_.find(fd);
  if (it == handoff_conns_.end()) return;
  absl::StatusOr<Packet> packet = ReceivePacket(fd);
  if (!packet.ok()) {
    CloseHandOffConnection(fd);
    return;
  }
  absl::StatusOr<TakeOverRequest> request = ParseTakeOverRequest(packet->data);
  std::string refused;
  if (!request.ok()) {
    refused = std::string(request.status().message());
  } else if (request->instance != options_.instance) {
    refused = absl::StrCat("this agent serves instance '", options_.instance, "', not '",
                           request->instance, "'");
  } else if (handoff_) {
    refused = absl::StrCat("already stepping aside for pid ", handoff_->request.pid);
  }
  if (!refused.empty()) {
    AMBIT_LOG(kComponent, Warning) << "take-over request refused: " << refused;
    (void)SendTakeOverAnswer(fd, /*stepped_aside=*/false, refused, -1);
    CloseHandOffConnection(fd);
    return;
  }
  AMBIT_LOG(kComponent, Info) << "agent pid " << request->pid << " (build " << request->build
                              << ", BPF ABI v" << request->bpf_abi
                              << ") takes over the instance: stepping aside";
  Unwatch(fd);
  HandOff handoff;
  handoff.conn = std::move(it->second.fd);
  handoff_conns_.erase(it);
  handoff.request = *std::move(request);
  handoff_ = std::move(handoff);
  // Nothing more runs on the loop: no enrollment, configuration, CSR or heartbeat after this.
  loop_->Stop();
}

std::optional<Agent::HandOff> Agent::TakeHandOff() {
  if (!handoff_) return std::nullopt;
  HandOff out = std::move(*handoff_);
  handoff_.reset();
  out.lock = std::move(lock_);
  lock_.reset();
  return out;
}

int Agent::StepAside(HandOff handoff) {
  const int lock_fd = handoff.lock ? handoff.lock->fd() : -1;
  if (absl::Status s = SendTakeOverAnswer(handoff.conn.get(), /*stepped_aside=*/true, "", lock_fd);
      !s.ok()) {
    // The new agent is gone: it did not get the lock's descriptor, and ours closes below, so
    // the lock is free for whichever agent starts next.
    AMBIT_LOG(kComponent, Warning) << "answering the take-over: " << s;
  }
  handoff.lock.reset();
  handoff.conn.Reset();
  AMBIT_LOG(kComponent, Info) << "handed over the instance to agent pid " << handoff.request.pid
                              << " (build " << handoff.request.build
                              << "); idle until SIGTERM, touching nothing";
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  int sig = 0;
  while (sigwait(&mask, &sig) != 0) {
  }
  AMBIT_LOG(kComponent, Info) << "signal " << sig << " after the hand-off; exiting";
  return 0;
}

const std::vector<std::string>& Agent::Crls() const {
  static const std::vector<std::string> kNone;
  return crl_watch_ != nullptr ? crl_watch_->pems() : kNone;
}

void Agent::OnHeartbeatTick() {
  FoldWire(/*force=*/false);
  for (Process* p : {&tunnel_, &waypoint_}) RollTick(*p);
  for (Process* p : {&tunnel_, &waypoint_}) {
    if (p->connected()) {
      if (auto seq = p->heartbeat->NextPing()) {
        if (auto status = p->dp->SendPing(*seq); !status.ok()) {
          AMBIT_LOG(kComponent, Warning)
              << p->name() << " heartbeat " << *seq << ": " << status.message();
        }
      }
    }
    LogHeartbeatChange(*p);
  }
  std::vector<std::string> problems = CheckCapture();
  for (const auto& p : problems) {
    if (std::find(capture_problems_.begin(), capture_problems_.end(), p) ==
        capture_problems_.end()) {
      AMBIT_LOG(kComponent, Error) << "capture check: " << p;
    }
  }
  if (!capture_problems_.empty() && problems.empty()) {
    AMBIT_LOG(kComponent, Info) << "capture check: every program and pin is in place again";
  }
  capture_problems_ = std::move(problems);
  ResendTrustBundleIfChanged();
  PublishHealth();
}

void Agent::ResendTrustBundleIfChanged() {
  std::vector<std::string> roots = signer_->TrustBundle();
  const bool roots_changed = roots != trust_bundle_;
  // --crl-file, re-read when it changed and checked against the roots; the CRLs travel with the
  // roots, so either change sends both to every connected process at once.
  const bool crls_changed = crl_watch_ != nullptr && crl_watch_->Poll(roots);
  if (!roots_changed && !crls_changed) return;
  if (roots_changed) {
    AMBIT_LOG(kComponent, Info) << "trust bundle changed (" << trust_bundle_.size() << " -> "
                                << roots.size() << " root(s)); sending it to the data planes";
  }
  trust_bundle_ = std::move(roots);
  for (Process* p : {&tunnel_, &waypoint_}) {
    for (supervisor::DataPlane* dp : {p->dp.get(), p->standby ? p->standby->dp.get() : nullptr}) {
      if (dp == nullptr || !dp->connected()) continue;
      if (absl::Status sent = dp->SendTrustBundle(trust_bundle_, Crls()); !sent.ok()) {
        AMBIT_LOG(kComponent, Warning) << p->name() << ": trust bundle: " << sent.message();
      }
    }
  }
  if (roots_changed) PublishCertificates();
}

void Agent::OnPong(Process& process, supervisor::PongReport report) {
  if (!process.heartbeat->OnPong(report.seq)) return;  // not the outstanding one
  process.last_pong = std::move(report);
  LogHeartbeatChange(process);
  PublishHealth();
}

void Agent::LogHeartbeatChange(Process& process) {
  if (process.dp == nullptr) return;
  switch (process.heartbeat->TakeChange()) {
    case supervisor::HeartbeatMonitor::Change::kLate:
      AMBIT_LOG(kComponent, Error)
          << process.name() << " pid=" << process.dp->pid() << " has not answered a heartbeat for "
          << process.heartbeat->deadline()
          << ": it or one of its worker threads is stalled; not ready until it answers "
             "(it is left running: a pause may end by itself)";
      break;
    case supervisor::HeartbeatMonitor::Change::kAnsweredAgain:
      AMBIT_LOG(kComponent, Warning)
          << process.name() << " pid=" << process.dp->pid() << " answers heartbeats again after "
          << absl::Trunc(process.heartbeat->last_silence(), absl::Milliseconds(100));
      break;
    case supervisor::HeartbeatMonitor::Change::kNone:
      break;
  }
}

std::vector<std::string> Agent::CheckCapture() const {
  std::vector<std::string> problems = redirector_->VerifyCapture();
  for (const auto& [uid, e] : enrolled_) {
    if (auto status = redirector_->VerifyPod(e.netns_cookie, e.netns.get()); !status.ok()) {
      problems.push_back(absl::StrCat("pod ", uid, ": ", status.message()));
    }
  }
  return problems;
}

std::vector<std::string> Agent::ListenerProblems(const Process& process) const {
  if (!process.last_pong.has_value() || !process.connected()) return {};
  std::vector<supervisor::ExpectedListeners> pods;
  for (const auto& [uid, e] : enrolled_) {
    if (e.served_by != process.kind) continue;  // the other process's, or none yet
    supervisor::ExpectedListeners x{uid, 0, e.sent_at_seq};
    for (const UniqueFd* fd :
         {&e.listeners.outbound_v4, &e.listeners.outbound_v6, &e.listeners.plain_v4,
          &e.listeners.plain_v6, &e.listeners.hbone_v4, &e.listeners.hbone_v6}) {
      if (*fd) ++x.listeners;
    }
    pods.push_back(std::move(x));
  }
  return supervisor::ListenerProblems(pods, *process.last_pong);
}

absl::Status Agent::InitCertificates() {
  entitlements_ = std::make_shared<issuance::Entitlements>();
  admin_state_ = std::make_shared<admin::AdminState>();
  if (!options_.ca_address.empty()) {
    issuance::RemoteCaOptions remote;
    remote.address = options_.ca_address;
    remote.root_cert_file = options_.ca_root_cert;
    remote.token_file = options_.ca_token_file;
    remote.cluster_id = options_.cluster_id;
    if (!options_.ca_root_configmap.empty()) {
      AMBIT_ASSIGN_OR_RETURN(ConfigMapRef ref, ParseConfigMapRef(options_.ca_root_configmap));
      AMBIT_ASSIGN_OR_RETURN(
          kube::KubeConfig kube_config,
          kube::KubeConfig::FromFlags(options_.kube_api, options_.kube_token_file,
                                      options_.kube_ca_file));
      AMBIT_ASSIGN_OR_RETURN(std::unique_ptr<kube::KubeClient> client,
                             kube::KubeClient::Create(kube_config));
      remote.roots = ConfigMapRootSource::Start(std::move(client), std::move(ref));
    }
    AMBIT_ASSIGN_OR_RETURN(signer_, issuance::MakeRemoteSigner(remote));
  } else {
    ca::CaOptions o;
    o.state_dir = options_.resolved_ca_state_dir();
    o.cacerts_dir = options_.cacerts_dir;
    o.default_leaf_ttl = options_.cert_ttl;
    AMBIT_ASSIGN_OR_RETURN(ca_, ca::CertificateAuthority::Create(o));
    issuance::SigningRateOptions rate;
    rate.node_burst = options_.ca_node_burst;
    rate.node_rate = options_.ca_node_rate;
    sign_rate_ = std::make_shared<issuance::SigningRateLimiter>(&RealClock::Get(), rate);
    if (!options_.ca_listen.empty()) {
      issuance::CaServerOptions server;
      server.listen = options_.ca_listen;
      server.tokens_file = options_.ca_tokens;
      server.cluster_id = options_.cluster_id;
      if (options_.ca_token_review) {
        AMBIT_ASSIGN_OR_RETURN(server.authenticator, MakeTokenReviewAuthenticator(options_));
      }
      AMBIT_ASSIGN_OR_RETURN(ca_server_,
                             issuance::CaServer::Start(server, ca_, entitlements_, sign_rate_));
    }
    signer_ = issuance::MakeLocalSigner(ca_);
  }
  trust_bundle_ = signer_->TrustBundle();
  signing_ = std::make_unique<issuance::SigningQueue>(signer_.get(), kMaxSigningInFlight);
  AMBIT_LOG(kComponent, Info) << "certificates from " << signer_->Description();
  if (!options_.crl_file.empty()) {
    crl_watch_ = std::make_unique<CrlWatch>(options_.crl_file);
    crl_watch_->Poll(trust_bundle_);
  }
  PublishCertificates();
  InitAdminHandlers();
  InitVerifyMtlsHandler();
  AMBIT_ASSIGN_OR_RETURN(admin_server_,
                         admin::AdminServer::Start(options_.resolved_admin_socket(), admin_state_));
  return absl::OkStatus();
}

void Agent::OnCsrRequest(Process& process, supervisor::DataPlane& dp,
                         supervisor::CsrRequest request) {
  // The data plane may only have certificates for pods enrolled here.
  std::set<std::string> identities;
  for (const auto& [uid, e] : enrolled_) identities.insert(state::SpiffeId(state_->mesh, e.pod));
  if (absl::Status entitled = DecideCsr(request.identity, identities); !entitled.ok()) {
    AMBIT_LOG(kComponent, Warning) << "refused CSR for " << request.identity
                                   << ": no enrolled pod on this node has that identity";
    (void)dp.SendCsrResponse(request.request_id, entitled);
    return;
  }
  // The node's own requests count against the built-in CA's limits like other nodes' do. Past
  // the burst they wait here for tokens, oldest first, rather than fail: a failed request backs
  // off per identity (doubling up to minutes), so a node starting with more identities than the
  // burst would get the last of them long after the rate allowed. The data plane bounds its
  // requests in flight, so the wait is bounded too; a request still waiting when its asker's
  // deadline passes is answered late and ignored there, and asked again.
  if (sign_rate_ != nullptr) {
    absl::Duration retry_after;
    absl::Status admitted = deferred_csrs_.empty()
                                ? sign_rate_->Admit(options_.node_name, &retry_after)
                                : absl::ResourceExhaustedError("requests are waiting");
    if (!admitted.ok()) {
      if (retry_after == absl::InfiniteDuration() || deferred_csrs_.size() >= kMaxDeferredCsrs) {
        AMBIT_LOG(kComponent, Warning)
            << "refused CSR for " << request.identity << ": " << admitted.message()
            << (deferred_csrs_.size() >= kMaxDeferredCsrs ? " (and the wait is full)" : "");
        (void)dp.SendCsrResponse(request.request_id, admitted);
        return;
      }
      if (deferred_csrs_.empty()) {
        AMBIT_LOG(kComponent, Info)
            << "CSR for " << request.identity << " waits: " << admitted.message()
            << " (requests wait in order, each signed as the rate allows)";
      }
      const absl::Time now = clock_->Now();
      DeferCsr({&process, dp.tag(), std::move(request), now, now, admitted}, retry_after);
      return;
    }
  }
  SignCsr(process, dp.tag(), std::move(request), clock_->Now());
}

supervisor::DataPlane* Agent::SessionWithTag(const Process& process, uint64_t tag) {
  for (supervisor::DataPlane* dp :
       {process.dp.get(), process.standby ? process.standby->dp.get() : nullptr}) {
    if (dp != nullptr && dp->tag() == tag) return dp;
  }
  return nullptr;
}

void Agent::DeferCsr(DeferredCsr csr, absl::Duration wait) {
  deferred_csrs_.push_back(std::move(csr));
  ArmDeferredCsrs(wait);
}

void Agent::ArmDeferredCsrs(absl::Duration wait) {
  if (deferred_csr_timer_) return;
  deferred_csr_timer_ = true;
  loop_->RunAfter(wait, [this] {
    deferred_csr_timer_ = false;
    DrainDeferredCsrs();
  });
}

void Agent::DrainDeferredCsrs() {
  std::set<std::string> identities;
  for (const auto& [uid, e] : enrolled_) identities.insert(state::SpiffeId(state_->mesh, e.pod));
  while (!deferred_csrs_.empty()) {
    DeferredCsr& next = deferred_csrs_.front();
    Process& p = *next.process;
    supervisor::DataPlane* asker = SessionWithTag(p, next.tag);
    // Asked by a session that is gone (its successor asks again), or for a pod that left.
    if (asker == nullptr || !asker->connected() ||
        !DecideCsr(next.request.identity, identities).ok()) {
      deferred_csrs_.pop_front();
      continue;
    }
    const absl::Time now = clock_->Now();
    // Answered with the refusal before the data plane's own deadline for the request passes
    // (it would ask again meanwhile, and this signature would be wasted).
    if (now - next.queued > kMaxCsrWait) {
      AMBIT_LOG(kComponent, Warning) << "CSR for " << next.request.identity << " waited "
                                     << absl::FormatDuration(now - next.queued)
                                     << " for the CA's rate: " << next.refusal.message();
      (void)asker->SendCsrResponse(next.request.request_id, next.refusal);
      deferred_csrs_.pop_front();
      continue;
    }
    if (next.not_before > now) return ArmDeferredCsrs(next.not_before - now);
    if (sign_rate_ != nullptr) {
      absl::Duration retry_after;
      if (absl::Status s = sign_rate_->Admit(options_.node_name, &retry_after); !s.ok()) {
        return ArmDeferredCsrs(retry_after == absl::InfiniteDuration() ? absl::Seconds(1)
                                                                       : retry_after);
      }
    }
    DeferredCsr taken = std::move(next);
    deferred_csrs_.pop_front();
    SignCsr(p, taken.tag, std::move(taken.request), taken.queued);
  }
}

void Agent::SignCsr(Process& process, uint64_t tag, supervisor::CsrRequest request,
                    absl::Time asked) {
  const uint64_t id = request.request_id;
  const std::string identity = request.identity;
  // The answer goes to the process that asked, while it is the same one: a request id means
  // nothing to its restarted successor, which asks again.
  const supervisor::DataPlane* session = SessionWithTag(process, tag);
  const std::string asker = session == nullptr
                                ? std::string(process.name())
                                : absl::StrCat(process.name(), " pid=", session->pid());
  // The primary and a standby may both ask during a roll (and, in their own PID namespaces,
  // both be pid 1): the answer finds its asker by the object's tag, whichever role it has now.
  Process* p = &process;
  AMBIT_LOG(kComponent, Debug) << "signing " << identity << " (request " << id << " of the "
                               << asker << ")";
  // Kept for a remote CA's rate-limit refusal, after which the same request is asked again.
  auto retry = std::make_shared<supervisor::CsrRequest>(request);
  signing_->Submit(
      identity, std::move(request.csr_pem), options_.cert_ttl,
      [this, p, tag, asker, id, identity, retry,
       asked](absl::StatusOr<std::vector<std::string>> chain) {
        completions_.Post([this, p, tag, asker, id, identity, retry, asked,
                           chain = std::move(chain)] {
          if (!chain.ok() && absl::IsResourceExhausted(chain.status()) && sign_rate_ == nullptr &&
              deferred_csrs_.size() < kMaxDeferredCsrs && clock_->Now() - asked < kMaxCsrWait) {
            // The remote CA's rate limit: wait for it here, as for the built-in CA's.
            const absl::Duration wait = RetryHint(chain.status().message());
            AMBIT_LOG(kComponent, Info)
                << "CSR for " << identity << " waits " << absl::FormatDuration(wait)
                << ": the CA answered " << chain.status().message();
            DeferCsr({p, tag, std::move(*retry), asked, clock_->Now() + wait, chain.status()},
                     wait);
            return;
          }
          if (!chain.ok()) {
            AMBIT_LOG(kComponent, Warning) << "signing " << identity << " for the " << asker
                                           << " failed: " << chain.status().message();
          } else {
            // The identity ends the line, as log readers count renewals by it.
            AMBIT_LOG(kComponent, Info) << asker << ": signed certificate for " << identity;
          }
          if (supervisor::DataPlane* to = SessionWithTag(*p, tag);
              to != nullptr && to->connected()) {
            (void)to->SendCsrResponse(id, chain);
          }
        });
      });
}

void Agent::OnCertificateReport(Process& process, std::vector<supervisor::CertificateState> certs) {
  for (const auto& c : ChangedCertificates(process.certs, certs)) {
    AMBIT_LOG(kComponent, Info) << "certificate " << c.identity << " " << c.state
                                << (c.serial_hex.empty() ? "" : " serial=" + c.serial_hex)
                                << (c.last_error.empty() ? "" : ": " + c.last_error) << " ("
                                << process.name() << ")";
  }
  process.certs = std::move(certs);
  PublishCertificates();
  PublishHealth();
}

void Agent::PublishCertificates() {
  ambit::admin::v1::ListCertificatesResponse resp;
  ambit::admin::v1::CertificatePemResponse chains;
  resp.set_ca(signer_->Description());
  // One list: each process holds the certificates of the pods it serves.
  std::vector<const supervisor::CertificateState*> all;
  for (const Process* p : {&tunnel_, &waypoint_}) {
    for (const auto& c : p->certs) all.push_back(&c);
  }
  for (const supervisor::CertificateState* cp : all) {
    const supervisor::CertificateState& c = *cp;
    auto* out = resp.add_certificates();
    out->set_identity(c.identity);
    out->set_state(c.state);
    out->set_serial(absl::AsciiStrToUpper(c.serial_hex));  // as openssl prints serials
    out->mutable_not_before()->set_unix_seconds(c.not_before_unix);
    out->mutable_not_after()->set_unix_seconds(c.not_after_unix);
    out->set_issuer(c.issuer);
    out->set_last_error(c.last_error);
    out->set_pods(c.refs);
    if (c.chain_pem.empty()) continue;
    // The leaf comes first: its fingerprint is what `openssl s_client` against 15008 shows.
    auto leaf = issuance::DescribeCertificate(c.chain_pem);
    if (leaf.ok()) out->set_sha256_fingerprint(leaf->sha256_fingerprint);
    auto* chain = chains.add_chains();
    chain->set_identity(c.identity);
    chain->set_chain_pem(c.chain_pem);
    chain->set_sha256_fingerprint(out->sha256_fingerprint());
  }
  std::sort(chains.mutable_chains()->begin(), chains.mutable_chains()->end(),
            [](const auto& a, const auto& b) { return a.identity() < b.identity(); });
  AddTrustBundle(trust_bundle_, &resp);
  admin_state_->SetCertificates(std::move(resp));
  admin_state_->SetCertificateChains(std::move(chains));
}

void Agent::RollBackFailedStart() {
  if (!lock_.has_value()) return;  // another agent's instance, or nothing touched
  std::vector<std::string> removed;
  if (fresh_pins_) {
    // The data planes this start may have spawned serve no capture once the pins are gone.
    for (Process* p : {&tunnel_, &waypoint_}) {
      if (p->dp != nullptr) {
        if (pid_t pid = p->dp->Stop(); pid > 0) {
          removed.push_back(absl::StrCat(p->name(), " pid=", pid));
        }
      }
      p->dp.reset();
    }
    redirector_.reset();
    auto pins = bpf::Redirector::Cleanup(options_.pin_root());
    if (!pins.ok()) {
      AMBIT_LOG(kComponent, Error) << "failed start: " << pins.status().message();
    } else if (*pins > 0) {
      removed.push_back(absl::StrCat(*pins, " BPF pins under ", options_.pin_root()));
    }
  }
  if (fresh_run_dir_) {
    admin_server_.reset();
    // The ZDS endpoints unlink their socket as they go; the run directory is removed below.
    zds_server_.reset();
    zds_client_.reset();
    std::error_code ec;
    // Only the entries a start creates: the default run directory is the parent of other
    // instances' ones, which must survive. A data plane started apart may have come to listen
    // in the directory meanwhile: its sockets are its own.
    if (!options_.external_dataplane) {
      std::filesystem::remove(options_.control_socket(), ec);
      std::filesystem::remove(options_.control_socket() + ".lock", ec);
      std::filesystem::remove(StatsSocketFor(options_.control_socket()), ec);
      std::filesystem::remove_all(options_.waypoint_dir(), ec);
    }
    std::filesystem::remove(options_.resolved_admin_socket(), ec);
    if (options_.external_dataplane &&
        !std::filesystem::is_empty(options_.resolved_run_dir(), ec)) {
      // Left to the data planes.
    } else if (std::filesystem::remove(options_.resolved_run_dir(), ec)) {
      removed.push_back(options_.resolved_run_dir());
    } else if (ec) {
      AMBIT_LOG(kComponent, Warning) << "failed start: could not remove "
                                     << options_.resolved_run_dir() << ": " << ec.message();
    }
  }
  if (!removed.empty()) {
    AMBIT_LOG(kComponent, Info) << "failed start: removed what it had created: "
                                << absl::StrJoin(removed, ", ");
  }
}

namespace {

// The network namespaces on the node, each once: those bind-mounted in netns_dir and those of
// every process under proc (a pod's namespace may have no mount, a bare namespace no process).
std::vector<UniqueFd> NodeNetworkNamespaces(const AgentOptions& options) {
  std::vector<std::string> candidates;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(options.netns_dir, ec)) {
    candidates.push_back(e.path().string());
  }
  for (const auto& e : std::filesystem::directory_iterator(options.host_proc, ec)) {
    uint32_t pid = 0;
    if (absl::SimpleAtoi(e.path().filename().string(), &pid)) {
      candidates.push_back(absl::StrCat(e.path().string(), "/ns/net"));
    }
  }
  std::set<std::pair<dev_t, ino_t>> seen;
  std::vector<UniqueFd> out;
  for (const std::string& path : candidates) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    struct stat st {};
    if (!fd || fstat(fd.get(), &st) != 0) continue;  // the process ended meanwhile
    if (seen.insert({st.st_dev, st.st_ino}).second) out.push_back(std::move(fd));
  }
  return out;
}

// Removes the wire-accounting filters whose programs count into this instance's ambit_wire
// maps (one per ABI version pinned under pin_root), wherever they are: the filters are not
// pinned, so removing the pins alone would leave them counting into an orphaned map for as
// long as each pod runs. Returns what it did, for the cleanup's report; an error is logged.
std::string DetachInstanceWireFilters(const AgentOptions& options) {
  std::vector<uint32_t> map_ids;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(options.pin_root(), ec)) {
    auto id = bpf::PinnedMapId(bpf::WireMapPin(e.path().string()));
    if (id.ok()) map_ids.push_back(*id);
  }
  if (map_ids.empty()) return "";
  int filters = 0, namespaces = 0;
  for (const UniqueFd& netns : NodeNetworkNamespaces(options)) {
    int here = 0;
    for (uint32_t map_id : map_ids) {
      auto removed = bpf::DetachWireOfMap(netns.get(), map_id);
      if (!removed.ok()) {
        AMBIT_LOG(kComponent, Warning) << "cleanup: " << removed.status().message();
        continue;
      }
      here += *removed;
    }
    filters += here;
    if (here > 0) ++namespaces;
  }
  if (filters == 0) return "";
  return absl::StrCat("removed ", filters, " wire-accounting filters in ", namespaces,
                      " network namespaces");
}

}  // namespace

absl::Status Agent::Cleanup(const AgentOptions& options, bool force) {
  // Held while cleaning, so that no agent starts half-way through.
  auto lock = InstanceLock::Acquire(options.instance);
  if (!lock.ok()) {
    if (!force || absl::IsInvalidArgument(lock.status())) {
      return absl::Status(lock.status().code(),
                          absl::StrCat(lock.status().message(),
                                       absl::IsFailedPrecondition(lock.status())
                                           ? "; --cleanup --force removes its capture anyway"
                                           : ""));
    }
    AMBIT_LOG(kComponent, Warning) << "--force: cleaning up although " << lock.status().message();
  }
  absl::Status status;
  std::vector<std::string> removed;
  // Started apart from ambitd (--dataplane=external), a data plane is another container's
  // process, in another PID namespace: the PID it names may be some other process here, so it
  // is not signalled. It is reported, and its sockets stay, so that it can still be reached.
  std::vector<std::string> left;
  const std::pair<std::string, std::string> processes[] = {
      {"data plane", options.control_socket()},
      {"waypoint data plane", options.waypoint_control_socket()}};
  for (const auto& [name, socket] : processes) {
    if (options.external_dataplane) {
      auto running = supervisor::DataPlane::Probe(socket);
      if (!running.ok()) {
        left.push_back(absl::StrCat("something on ", socket, " that is not a data plane (",
                                    running.status().message(), ")"));
      } else if (running->has_value()) {
        left.push_back(absl::StrCat(
            name, " pid=", (*running)->pid, " (its own PID namespace) serving ",
            (*running)->pod_count, " pods on ", socket,
            ": started apart from ambitd, so not stopped; with the capture gone it carries no "
            "new traffic, and it ends with its container"));
      }
      continue;
    }
    auto stopped = supervisor::DataPlane::StopRunning(socket);
    if (!stopped.ok()) {
      status.Update(stopped.status());
    } else if (*stopped > 0) {
      removed.push_back(absl::StrCat("stopped ", name, " pid=", *stopped));
    }
  }
  // Before the pins go: the pinned maps tell this instance's filters from another's.
  if (std::string wire = DetachInstanceWireFilters(options); !wire.empty()) {
    removed.push_back(std::move(wire));
  }
  auto pins = bpf::Redirector::Cleanup(options.pin_root());
  if (!pins.ok()) {
    status.Update(pins.status());
  } else if (*pins > 0) {
    removed.push_back(absl::StrCat("removed ", *pins, " BPF pins under ", options.pin_root()));
  }
  std::error_code ec;
  if (!left.empty()) {
    // Only ambitd's own entry: the data planes' sockets and locks are theirs.
    if (std::filesystem::remove(options.resolved_admin_socket(), ec)) {
      removed.push_back(absl::StrCat("removed ", options.resolved_admin_socket()));
    }
    left.push_back(absl::StrCat(options.resolved_run_dir(), " (the data planes' sockets)"));
  } else if (std::filesystem::exists(options.resolved_run_dir(), ec)) {
    std::filesystem::remove_all(options.resolved_run_dir(), ec);
    if (ec) {
      status.Update(absl::InternalError(
          absl::StrCat("remove ", options.resolved_run_dir(), ": ", ec.message())));
    } else {
      removed.push_back(absl::StrCat("removed ", options.resolved_run_dir()));
    }
  }
  // The lock file goes with the instance, unless another agent holds it (--force).
  if (lock.ok()) lock->Remove();
  if (!left.empty()) {
    AMBIT_LOG(kComponent, Warning)
        << "cleanup of instance " << options.instance << " left: " << absl::StrJoin(left, "; ");
  }
  if (removed.empty()) {
    AMBIT_LOG(kComponent, Info) << "nothing to clean up for instance " << options.instance
                                << ": no data plane, no BPF pins under " << options.pin_root()
                                << ", no " << options.resolved_run_dir();
  } else {
    AMBIT_LOG(kComponent, Info) << "cleaned up instance " << options.instance << ": "
                                << absl::StrJoin(removed, "; ");
  }
  return status;
}

}  // namespace ambit::node
