#include "agent/supervisor/dataplane.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "agent/common/framed.h"
#include "agent/common/log.h"
#include "agent/common/sealed_file.h"
#include "agent/common/seqpacket.h"
#include "agent/common/socket_util.h"
#include "agent/common/status.h"
#include "agent/mesh/wire.h"
#include "agent/supervisor/control_message.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

extern char** environ;

namespace ambit::supervisor {
namespace {

namespace pb = ::ambit::dataplane::v1;
constexpr const char* kComponent = "supervisor";
// A trust bundle above this goes in a sealed file (TrustBundleRef): well under the control
// socket's send buffer (about 208 KiB by default), which bounds one message.
constexpr size_t kInlineTrustBundleBytes = 64 << 10;

pb::Envelope NewEnvelope() {
  pb::Envelope env;
  env.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
  return env;
}

// Blocks for one message, at most timeout_ms.
absl::StatusOr<std::pair<pb::Envelope, std::vector<UniqueFd>>> ReadEnvelope(int fd,
                                                                            int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  int rc = poll(&p, 1, timeout_ms);
  if (rc == 0) return absl::DeadlineExceededError("data plane did not answer in time");
  if (rc < 0) return absl::ErrnoToStatus(errno, "poll control channel");
  AMBIT_ASSIGN_OR_RETURN(Packet packet, ReceivePacket(fd));
  AMBIT_ASSIGN_OR_RETURN(pb::Envelope env, DecodeDataPlaneMessage(packet.data, packet.fds.size()));
  return std::make_pair(std::move(env), std::move(packet.fds));
}

int PidfdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

}  // namespace

DataPlane::~DataPlane() = default;

absl::Status DataPlane::Send(const std::string& bytes, const std::vector<int>& fds) {
  if (!control_)
    return absl::FailedPreconditionError(absl::StrCat(options_.name, " not connected"));
  if (overflowed_) {
    return absl::ResourceExhaustedError(
        absl::StrCat(options_.name, " stopped reading its control channel"));
  }
  if (out_.empty()) {
    AMBIT_ASSIGN_OR_RETURN(bool sent, TrySendPacket(control_.get(), bytes, fds));
    if (sent) return absl::OkStatus();
  }
  if (out_.size() + 1 > kMaxQueuedMessages || out_bytes_ + bytes.size() > kMaxQueuedBytes) {
    overflowed_ = true;
    AMBIT_LOG(kComponent, Error) << options_.name << " pid=" << pid_
                                 << " stopped reading its control channel: " << out_.size()
                                 << " messages (" << out_bytes_
                                 << " bytes) wait to be sent; ending the session";
    if (on_overflow) on_overflow();
    return absl::ResourceExhaustedError(
        absl::StrCat(options_.name, " stopped reading its control channel"));
  }
  Outgoing msg;
  msg.bytes = bytes;
  for (int fd : fds) {
    UniqueFd copy(fcntl(fd, F_DUPFD_CLOEXEC, 0));
    if (!copy) return absl::ErrnoToStatus(errno, "duplicate a descriptor to send later");
    msg.fds.push_back(std::move(copy));
  }
  out_bytes_ += msg.bytes.size();
  out_.push_back(std::move(msg));
  if (out_.size() == 1 && on_write_interest) on_write_interest(true);
  return absl::OkStatus();
}

absl::Status DataPlane::Flush() {
  const bool had = !out_.empty();
  while (!out_.empty()) {
    Outgoing& msg = out_.front();
    std::vector<int> fds;
    for (const auto& fd : msg.fds) fds.push_back(fd.get());
    AMBIT_ASSIGN_OR_RETURN(bool sent, TrySendPacket(control_.get(), msg.bytes, fds));
    if (!sent) return absl::OkStatus();  // still full: EPOLLOUT again
    out_bytes_ -= msg.bytes.size();
    out_.pop_front();
  }
  if (had && on_write_interest) on_write_interest(false);
  return absl::OkStatus();
}

void DataPlane::DropQueue() {
  const bool had = !out_.empty();
  out_.clear();
  out_bytes_ = 0;
  overflowed_ = false;
  if (had && on_write_interest) on_write_interest(false);
}

void DataPlane::Kill() {
  if (pidfd_) syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
}

absl::StatusOr<UniqueFd> DataPlane::TryConnect() {
  return ConnectUnix(connect_socket(), SOCK_SEQPACKET);
}

absl::Status DataPlane::Spawn() {
  std::vector<std::string> args = {options_.binary, "--control-socket", options_.control_socket};
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // Its own session: a signal to the agent's process group (Ctrl-C, a supervisor stopping the
  // agent for an upgrade) must not take the data plane and its live connections with it.
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK);
  sigset_t empty;
  sigemptyset(&empty);
  posix_spawnattr_setsigmask(&attr, &empty);
  pid_t pid;
  int rc = posix_spawn(&pid, options_.binary.c_str(), nullptr, &attr, argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  if (rc != 0)
    return absl::ErrnoToStatus(rc, absl::StrCat("start ", options_.name, " ", options_.binary));
  pid_ = pid;
  is_child_ = true;
  pidfd_ = UniqueFd(PidfdOpen(pid));
  AMBIT_LOG(kComponent, Info) << "started " << options_.name << " " << options_.binary
                              << " pid=" << pid;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<HandedBackPod>> DataPlane::Connect(bool spawn) {
  DropQueue();
  control_.Reset();
  // A new session: what the previous one applied or refused says nothing about this one.
  nack_error_.clear();
  acked_version_ = 0;
  nacked_version_ = 0;
  auto existing = TryConnect();
  if (existing.ok()) {
    control_ = std::move(*existing);
    is_child_ = false;
  } else if (!spawn) {
    return absl::NotFoundError(absl::StrCat("no ", options_.name, " serves ", connect_socket(),
                                            " (", existing.status().message(), ")"));
  } else {
    AMBIT_RETURN_IF_ERROR(Spawn());
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (true) {
      auto fd = TryConnect();
      if (fd.ok()) {
        control_ = std::move(*fd);
        break;
      }
      pollfd exited{pidfd_.get(), POLLIN, 0};
      if (pidfd_ && poll(&exited, 1, 0) == 1) {
        // Gone before it listened (a bad flag, a crash at start): no point waiting on.
        return absl::UnavailableError(absl::StrCat(options_.name, " pid=", pid_,
                                                   " exited before it listened on ",
                                                   connect_socket(), "; see its log above"));
      }
      if (std::chrono::steady_clock::now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat(options_.name, " pid=", pid_,
                                                        " did not open ", connect_socket(),
                                                        " within 10s; see its log above"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  AMBIT_ASSIGN_OR_RETURN(auto hello, ReadEnvelope(control_.get(), 5000));
  if (!hello.first.has_hello()) {
    return absl::DataLossError(absl::StrCat(options_.name, " did not say hello"));
  }
  heartbeat_supported_ = hello.first.hello().heartbeat();
  drain_supported_ = hello.first.hello().drain();
  if (!heartbeat_supported_) {
    AMBIT_LOG(kComponent, Warning)
        << "the data plane does not answer heartbeats (an earlier build); readiness cannot "
           "tell whether it is hung until it is restarted";
  }
  if (!is_child_) {
    pid_ = hello.first.hello().pid();
    if (options_.watch_pid) {
      pidfd_ = UniqueFd(PidfdOpen(pid_));
      if (!pidfd_) return absl::ErrnoToStatus(errno, "pidfd_open of the running data plane");
      AMBIT_LOG(kComponent, Info) << "re-attached to running " << options_.name << " pid=" << pid_
                                  << " serving " << hello.first.hello().pod_count() << " pods";
    } else {
      pidfd_.Reset();
      AMBIT_LOG(kComponent, Info) << "connected to " << options_.name << " pid=" << pid_
                                  << " (its own PID namespace) on " << connect_socket()
                                  << ", serving " << hello.first.hello().pod_count() << " pods";
    }
  }
  std::vector<HandedBackPod> pods;
  for (uint32_t i = 0; i < hello.first.hello().pod_count(); ++i) {
    AMBIT_ASSIGN_OR_RETURN(auto msg, ReadEnvelope(control_.get(), 5000));
    if (!msg.first.has_add_pod()) return absl::DataLossError("expected a handed-back pod");
    AMBIT_ASSIGN_OR_RETURN(HandedBackPod pod,
                           DecodeHandedBackPod(msg.first.add_pod(), std::move(msg.second)));
    pods.push_back(std::move(pod));
  }
  return pods;
}

std::string DataPlane::Reap() {
  DropQueue();
  control_.Reset();
  pidfd_.Reset();
  std::string how = "exited";
  if (is_child_) {
    int status = 0;
    if (waitpid(pid_, &status, 0) == pid_) {
      if (WIFEXITED(status)) how = absl::StrCat("exited with status ", WEXITSTATUS(status));
      if (WIFSIGNALED(status)) how = absl::StrCat("killed by signal ", WTERMSIG(status));
    }
  }
  pid_ = -1;
  return how;
}

void DataPlane::CloseSession() {
  if (!control_) return;
  // What is still queued (the Drain itself, often) goes first, for at most a second; what the
  // data plane sends meanwhile is read and discarded, so it cannot block us both.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (!out_.empty() && std::chrono::steady_clock::now() < deadline) {
    pollfd p{control_.get(), POLLIN | POLLOUT, 0};
    if (poll(&p, 1, 100) < 0 && errno != EINTR) break;
    if (p.revents & (POLLERR | POLLHUP)) break;
    if (p.revents & POLLIN) {
      char byte;
      (void)recv(control_.get(), &byte, sizeof byte, MSG_DONTWAIT);
    }
    if ((p.revents & POLLOUT) && !Flush().ok()) break;
  }
  if (!out_.empty()) {
    AMBIT_LOG(kComponent, Warning) << options_.name << ": " << out_.size()
                                   << " control messages not sent before the session closed";
  }
  DropQueue();
  shutdown(control_.get(), SHUT_RD);
  char byte;  // each recv takes one whole message; the rest of it is discarded
  while (recv(control_.get(), &byte, sizeof byte, MSG_DONTWAIT) > 0) {
  }
  control_.Reset();
}

void DataPlane::Disconnect() {
  DropQueue();
  control_.Reset();
  pidfd_.Reset();
  pid_ = -1;
}

pid_t DataPlane::Stop() {
  if (!pidfd_) return 0;
  pid_t pid = pid_;
  DropQueue();
  control_.Reset();
  syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGTERM, nullptr, 0);
  pollfd p{pidfd_.get(), POLLIN, 0};
  if (poll(&p, 1, 5000) == 0) {
    syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
  }
  std::string how = Reap();
  AMBIT_LOG(kComponent, Info) << "stopped data plane pid=" << pid << " (" << how << ")";
  return pid;
}

namespace {

// One exchange on the data plane's stats socket: the request out, the raw answer back.
absl::StatusOr<std::string> AskStatsPath(const std::string& stats_socket,
                                         const ambit::dataplane::v1::StatsSocketRequest& request,
                                         absl::Duration timeout) {
  auto fd = ConnectUnix(stats_socket, SOCK_STREAM);
  if (!fd.ok()) {
    return absl::UnavailableError(
        absl::StrCat("data plane not reachable: ", fd.status().message()));
  }
  AMBIT_RETURN_IF_ERROR(WriteFramed(fd->get(), request.SerializeAsString(), timeout));
  return ReadFramed(fd->get(), 256 << 20, timeout);
}

absl::StatusOr<std::string> AskStatsSocket(const std::string& control_socket,
                                           const ambit::dataplane::v1::StatsSocketRequest& request,
                                           absl::Duration timeout = absl::Seconds(5)) {
  return AskStatsPath(StatsSocketFor(control_socket), request, timeout);
}

}  // namespace

absl::StatusOr<ambit::dataplane::v1::StatsResponse> DataPlane::FetchStats(
    const std::string& control_socket, const ambit::dataplane::v1::StatsRequest& request) {
  ambit::dataplane::v1::StatsSocketRequest wrapped;
  *wrapped.mutable_stats() = request;
  AMBIT_ASSIGN_OR_RETURN(std::string bytes, AskStatsSocket(control_socket, wrapped));
  ambit::dataplane::v1::StatsResponse response;
  if (!response.ParseFromString(bytes)) {
    return absl::DataLossError("data plane sent a malformed stats answer");
  }
  return response;
}

absl::StatusOr<ambit::dataplane::v1::StatsResponse> DataPlane::FetchStatsAt(
    const std::string& stats_socket, const ambit::dataplane::v1::StatsRequest& request) {
  ambit::dataplane::v1::StatsSocketRequest wrapped;
  *wrapped.mutable_stats() = request;
  AMBIT_ASSIGN_OR_RETURN(std::string bytes, AskStatsPath(stats_socket, wrapped, absl::Seconds(5)));
  ambit::dataplane::v1::StatsResponse response;
  if (!response.ParseFromString(bytes)) {
    return absl::DataLossError("data plane sent a malformed stats answer");
  }
  return response;
}

absl::StatusOr<ExtAuthzProbeAnswer> DataPlane::ProbeExtAuthz(const std::string& control_socket,
                                                             const ExtAuthzProbeQuery& query) {
  ambit::dataplane::v1::StatsSocketRequest request;
  *request.mutable_ext_authz_probe() = ExtAuthzProbeQueryToProto(query);
  auto bytes = AskStatsSocket(control_socket, request, kProbeWait);
  if (!bytes.ok()) {
    // A data plane that does not know the request closes without an answer.
    return absl::UnavailableError(
        absl::StrCat("the waypoint data plane did not answer: ", bytes.status().message()));
  }
  ambit::dataplane::v1::ExtAuthzProbeResponse response;
  if (!response.ParseFromString(*bytes)) {
    return absl::DataLossError("the waypoint data plane sent a malformed ext_authz answer");
  }
  return ExtAuthzProbeAnswerFromProto(response);
}

absl::Status DataPlane::SetLogLevel(const std::string& control_socket, const std::string& component,
                                    const std::string& level) {
  ambit::dataplane::v1::StatsSocketRequest request;
  request.mutable_log_level()->set_component(component);
  request.mutable_log_level()->set_level(level);
  AMBIT_ASSIGN_OR_RETURN(std::string bytes, AskStatsSocket(control_socket, request));
  ambit::dataplane::v1::SetLogLevelResponse response;
  if (!response.ParseFromString(bytes)) {
    return absl::DataLossError("data plane sent a malformed log-level answer");
  }
  if (!response.error().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("data plane refused the log level: ", response.error()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<RunningDataPlane>> DataPlane::Probe(
    const std::string& control_socket) {
  auto fd = ConnectUnix(control_socket, SOCK_SEQPACKET);
  if (!fd.ok()) return std::nullopt;  // nothing listens there
  AMBIT_ASSIGN_OR_RETURN(auto hello, ReadEnvelope(fd->get(), 5000));
  if (!hello.first.has_hello()) {
    return absl::DataLossError(absl::StrCat("what serves ", control_socket, " did not say hello"));
  }
  return RunningDataPlane{static_cast<pid_t>(hello.first.hello().pid()),
                          hello.first.hello().pod_count()};
}

absl::StatusOr<pid_t> DataPlane::StopRunning(const std::string& control_socket) {
  DataPlane probe(Options{"", control_socket, {}});
  auto fd = probe.TryConnect();
  if (!fd.ok()) return 0;  // nothing running
  probe.control_ = std::move(*fd);
  AMBIT_ASSIGN_OR_RETURN(auto hello, ReadEnvelope(probe.control_.get(), 5000));
  pid_t pid = hello.first.hello().pid();
  UniqueFd pidfd(PidfdOpen(pid));
  if (!pidfd) return absl::ErrnoToStatus(errno, "pidfd_open of the running data plane");
  if (syscall(SYS_pidfd_send_signal, pidfd.get(), SIGTERM, nullptr, 0) < 0) {
    return absl::ErrnoToStatus(errno, "signal the data plane");
  }
  pollfd p{pidfd.get(), POLLIN, 0};
  if (poll(&p, 1, 5000) == 0) {
    syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0);
  }
  AMBIT_LOG(kComponent, Info) << "stopped data plane pid=" << pid;
  return pid;
}

absl::Status DataPlane::OnControlReadable() {
  if (!control_)
    return absl::FailedPreconditionError(absl::StrCat(options_.name, " not connected"));
  AMBIT_RETURN_IF_ERROR(Flush());
  pollfd readable{control_.get(), POLLIN, 0};
  if (poll(&readable, 1, 0) == 0) return absl::OkStatus();  // woken to write only
  AMBIT_ASSIGN_OR_RETURN(auto msg, ReadEnvelope(control_.get(), 0));
  if (msg.first.has_ack()) {
    acked_version_ = msg.first.ack().version();
    if (nacked_version_ <= acked_version_) {
      nacked_version_ = 0;
      nack_error_.clear();
    }
    AMBIT_LOG(kComponent, Debug) << "data plane applied snapshot " << acked_version_;
  } else if (msg.first.has_nack()) {
    nacked_version_ = msg.first.nack().version();
    nack_error_ = msg.first.nack().error();
    AMBIT_LOG(kComponent, Error) << "data plane could not apply configuration generation "
                                 << nacked_version_ << ": " << nack_error_
                                 << "; it refuses new connections until a later one applies";
  } else if (msg.first.has_csr_request()) {
    const auto& r = msg.first.csr_request();
    if (on_csr_request) on_csr_request({r.request_id(), r.identity(), r.csr_pem()});
  } else if (msg.first.has_certificate_report() || msg.first.has_certificate_report_ref()) {
    pb::CertificateReport from_file;
    if (msg.first.has_certificate_report_ref()) {
      // Checked by DecodeDataPlaneMessage: exactly one descriptor, a size within the limit.
      AMBIT_ASSIGN_OR_RETURN(from_file,
                             ReadCertificateReportFile(msg.second[0].get(),
                                                       msg.first.certificate_report_ref().size()));
    }
    const pb::CertificateReport& report =
        msg.first.has_certificate_report() ? msg.first.certificate_report() : from_file;
    std::vector<CertificateState> certs;
    for (const auto& c : report.certificates()) {
      certs.push_back({c.identity(), c.state(), c.serial_hex(), c.issuer(), c.last_error(),
                       c.not_before_unix(), c.not_after_unix(), c.refs(), c.chain_pem()});
    }
    if (on_certificate_report) on_certificate_report(std::move(certs));
  } else if (msg.first.has_pod_removed()) {
    AMBIT_LOG(kComponent, Debug) << "data plane released pod " << msg.first.pod_removed().uid();
    if (on_pod_removed) on_pod_removed(msg.first.pod_removed().uid());
  } else if (msg.first.has_pong() || msg.first.has_pong_ref()) {
    pb::Pong from_file;
    if (msg.first.has_pong_ref()) {
      // Checked by DecodeDataPlaneMessage: exactly one descriptor, a size within the limit.
      AMBIT_ASSIGN_OR_RETURN(from_file,
                             ReadPongFile(msg.second[0].get(), msg.first.pong_ref().size()));
    }
    const pb::Pong& p = msg.first.has_pong() ? msg.first.pong() : from_file;
    PongReport report;
    report.seq = p.seq();
    report.workers = p.workers();
    for (const auto& pod : p.pods()) {
      report.pods.push_back(
          {pod.uid(), pod.listening(), pod.workers_accepting(), pod.waiting_for_certificate()});
    }
    if (on_pong) on_pong(std::move(report));
  }
  return absl::OkStatus();
}

absl::Status DataPlane::SendMaps(int orig_dst_map_fd, int deliver_map_fd, int probes_map_fd) {
  auto env = NewEnvelope();
  env.mutable_maps()->add_fds(pb::FD_ROLE_ORIG_DST_MAP);
  env.mutable_maps()->add_fds(pb::FD_ROLE_DELIVER_MAP);
  env.mutable_maps()->add_fds(pb::FD_ROLE_PROBES_MAP);
  return Send(env.SerializeAsString(), {orig_dst_map_fd, deliver_map_fd, probes_map_fd});
}

absl::Status DataPlane::SendAddPod(const PodDescriptor& pod) {
  auto env = NewEnvelope();
  std::vector<int> fds;
  AMBIT_RETURN_IF_ERROR(EncodeAddPod(pod, env.mutable_add_pod(), &fds));
  return Send(env.SerializeAsString(), fds);
}

absl::Status DataPlane::SendDrain(absl::Duration grace) {
  auto env = NewEnvelope();
  env.mutable_drain()->set_grace_seconds(
      static_cast<uint32_t>(std::max<int64_t>(0, absl::ToInt64Seconds(grace))));
  return Send(env.SerializeAsString(), {});
}

absl::Status DataPlane::SendPing(uint64_t seq) {
  auto env = NewEnvelope();
  env.mutable_ping()->set_seq(seq);
  return Send(env.SerializeAsString(), {});
}

absl::Status DataPlane::SendRemovePod(const std::string& uid) {
  auto env = NewEnvelope();
  env.mutable_remove_pod()->set_uid(uid);
  return Send(env.SerializeAsString(), {});
}

absl::Status DataPlane::SendSnapshot(const mesh::Snapshot& snapshot) {
  const uint64_t version = snapshot.version;
  // The snapshot travels in a sealed file, not in the packet: a large cluster's configuration
  // is many times what one control message can carry. Encoded workload by workload, never as
  // a whole Snapshot message beside the model (mesh::EncodeSnapshot).
  std::string bytes;
  if (absl::Status s = mesh::EncodeSnapshot(snapshot, &bytes); !s.ok()) {
    return absl::Status(s.code(),
                        absl::StrCat("configuration generation ", version, ": ", s.message()));
  }
  AMBIT_ASSIGN_OR_RETURN(UniqueFd file, CreateSealedFile("ambit-snapshot", bytes));
  auto ref = NewEnvelope();
  ref.mutable_snapshot_ref()->set_version(version);
  ref.mutable_snapshot_ref()->set_size(bytes.size());
  return Send(ref.SerializeAsString(), {file.get()});
}

absl::Status DataPlane::SendSnapshotFailed(uint64_t version, const std::string& error) {
  auto env = NewEnvelope();
  env.mutable_snapshot_failed()->set_version(version);
  env.mutable_snapshot_failed()->set_error(error);
  return Send(env.SerializeAsString(), {});
}

absl::Status DataPlane::SendCsrResponse(uint64_t request_id,
                                        const absl::StatusOr<std::vector<std::string>>& chain) {
  auto env = NewEnvelope();
  auto* r = env.mutable_csr_response();
  r->set_request_id(request_id);
  if (chain.ok()) {
    for (const auto& pem : *chain) r->add_chain_pem(pem);
  } else {
    r->set_error(std::string(chain.status().message()));
  }
  return Send(env.SerializeAsString(), {});
}

absl::Status DataPlane::SendTrustBundle(const std::vector<std::string>& roots,
                                        const std::vector<std::string>& crls) {
  auto env = NewEnvelope();
  // Set even when empty (an external CA whose roots are not known yet): an envelope with no
  // message set is a protocol error that ends the session.
  auto* bundle = env.mutable_trust_bundle();
  for (const auto& pem : roots) bundle->add_root_pem(pem);
  for (const auto& pem : crls) bundle->add_crl_pem(pem);
  if (bundle->ByteSizeLong() <= kInlineTrustBundleBytes) return Send(env.SerializeAsString(), {});
  // CRLs of many revoked certificates pass what one control message carries: the bundle goes in
  // a sealed file, as snapshots do.
  AMBIT_ASSIGN_OR_RETURN(UniqueFd file,
                         CreateSealedFile("ambit-trust-bundle", bundle->SerializeAsString()));
  auto ref = NewEnvelope();
  ref.mutable_trust_bundle_ref()->set_size(bundle->ByteSizeLong());
  return Send(ref.SerializeAsString(), {file.get()});
}

}  // namespace ambit::supervisor
