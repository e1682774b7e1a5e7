#include "agent/tunnel/control.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <future>
#include <type_traits>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "agent/common/clock.h"
#include "agent/common/formats.h"
#include "agent/common/framed.h"
#include "agent/common/log.h"
#include "agent/common/metrics.h"
#include "agent/common/sealed_file.h"
#include "agent/common/seqpacket.h"
#include "agent/common/socket_util.h"
#include "agent/common/status.h"
#include "agent/tunnel/control_message.h"
#include "agent/tunnel/l7_hook.h"
#include "agent/tunnel/plaintext_clients.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::tunnel {
namespace {

namespace pb = ::ambit::dataplane::v1;
constexpr const char* kComponent = "tunnel";
// How long one stats exchange may take, each way, and how long workers have to answer.
constexpr absl::Duration kStatsTimeout = absl::Seconds(2);
// An ext_authz probe: the most the waypoint waits for the authorizer (the provider's timeout when
// shorter), what this thread allows on top for the worker to answer, and how many may be
// outstanding at once.
constexpr absl::Duration kProbeBound = absl::Seconds(5);
constexpr absl::Duration kProbeMargin = absl::Seconds(1);
constexpr size_t kMaxProbes = 8;
// How long the workers have to drop a removed pod before the removal is answered anyway.
constexpr absl::Duration kRemoveTimeout = absl::Seconds(2);
// A certificate report above this goes in a sealed file (CertificateReportRef): well under the
// control socket's send buffer (about 208 KiB by default), which bounds one message.
constexpr size_t kInlineCertificateReportBytes = 64 << 10;
// A heartbeat answer above this goes in a sealed file (PongRef): it lists every pod by uid (up to
// 317 bytes), so a node with many pods of long names would pass the socket's limit, the answer
// would be lost and the agent would take the data plane for hung.
constexpr size_t kInlinePongBytes = 32 << 10;

pb::Envelope NewEnvelope() {
  pb::Envelope env;
  env.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
  return env;
}

// Makes the control socket's directory (mode 0700) when it is missing: a data plane started apart
// from ambitd (its own container sharing the run directory) may come up first, and the
// waypoint's socket lives in a directory of its own.
absl::Status MakeSocketDirectory(const std::string& socket_path) {
  const std::filesystem::path dir = std::filesystem::path(socket_path).parent_path();
  std::error_code ec;
  if (dir.empty() || std::filesystem::is_directory(dir, ec)) return absl::OkStatus();
  const mode_t old = umask(0077);
  std::filesystem::create_directories(dir, ec);
  umask(old);
  if (ec) {
    return absl::PermissionDeniedError(absl::StrCat("create the directory of --control-socket ",
                                                    dir.string(), ": ", ec.message()));
  }
  AMBIT_LOG(kComponent, Info) << "created " << dir.string();
  return absl::OkStatus();
}

absl::Status WritePid(int fd, const std::string& path) {
  const std::string pid = absl::StrCat(getpid(), "\n");
  if (ftruncate(fd, 0) < 0 || pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("write ", path));
  }
  return absl::OkStatus();
}

std::string HolderOf(int fd) {
  char holder[32] = {};
  (void)!pread(fd, holder, sizeof holder - 1, 0);
  return std::string(absl::StripAsciiWhitespace(holder));
}

// What a starting data plane serves: the control socket (it holds <socket>.lock), or, while
// another serves it, <socket>.next as the standby of a roll (it holds <socket>.next.lock and
// keeps <socket>.lock open to take it when it frees).
struct ControlClaim {
  bool standby = false;
  UniqueFd lock;          // primary: <socket>.lock, locked
  UniqueFd primary_lock;  // standby: <socket>.lock, not locked
  UniqueFd next_lock;     // standby: <socket>.next.lock, locked
};

// Binding a socket removes whatever file is at its path: that must be a dead predecessor's (a
// container restarted after a kill leaves one), never a live data plane's, whose agent and pods
// would be cut off. So each path is bound only under its lock. A third data plane, finding both
// locks held, waits for <socket>.lock as before rolls existed (SIGTERM still ends the wait).
absl::StatusOr<ControlClaim> ClaimControlSocket(const std::string& socket_path) {
  const std::string lock_path = socket_path + ".lock";
  ControlClaim claim;
  UniqueFd fd(open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return absl::ErrnoToStatus(errno, absl::StrCat("open ", lock_path));
  if (flock(fd.get(), LOCK_EX | LOCK_NB) == 0) {
    AMBIT_RETURN_IF_ERROR(WritePid(fd.get(), lock_path));
    claim.lock = std::move(fd);
    return claim;
  }
  if (errno != EWOULDBLOCK) return absl::ErrnoToStatus(errno, absl::StrCat("lock ", lock_path));
  const std::string holder = HolderOf(fd.get());
  const std::string next_lock_path = socket_path + ".next.lock";
  UniqueFd next(open(next_lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!next) return absl::ErrnoToStatus(errno, absl::StrCat("open ", next_lock_path));
  if (flock(next.get(), LOCK_EX | LOCK_NB) == 0) {
    AMBIT_RETURN_IF_ERROR(WritePid(next.get(), next_lock_path));
    AMBIT_LOG(kComponent, Info) << "another data plane (pid " << holder
                                << " in its PID namespace) serves " << socket_path
                                << "; standing by on " << socket_path
                                << ".next for a roll (the agent drains the other one once this "
                                   "one serves every pod)";
    claim.standby = true;
    claim.primary_lock = std::move(fd);
    claim.next_lock = std::move(next);
    return claim;
  }
  if (errno != EWOULDBLOCK) {
    return absl::ErrnoToStatus(errno, absl::StrCat("lock ", next_lock_path));
  }
  AMBIT_LOG(kComponent, Warning)
      << "another data plane (pid " << holder << " in its PID namespace) serves " << socket_path
      << " and another (pid " << HolderOf(next.get())
      << ") stands by on its .next; waiting for the first to exit before taking the socket over";
  next.Reset();
  while (flock(fd.get(), LOCK_EX) < 0) {
    if (errno != EINTR) return absl::ErrnoToStatus(errno, absl::StrCat("lock ", lock_path));
  }
  AMBIT_LOG(kComponent, Info) << "the previous data plane on " << socket_path
                              << " exited; taking the socket over";
  AMBIT_RETURN_IF_ERROR(WritePid(fd.get(), lock_path));
  claim.lock = std::move(fd);
  return claim;
}

// Where a standby's stats socket is, and where a draining data plane moves its own: apart from
// the path its successor binds, so `ambitctl connections` still reaches the connections the old
// process holds while they finish.
std::string StandbyStatsPath(const std::string& control_socket) {
  return StatsSocketFor(control_socket + ".next");
}

// How often a standby tries the primary's lock, and a draining data plane counts what is left.
constexpr absl::Duration kPromotePoll = absl::Milliseconds(50);
constexpr absl::Duration kDrainPoll = absl::Milliseconds(200);

}  // namespace

// One descriptor the control loop watches for input, and what to do when it is readable.
class Tunnel::FdWatch final : public EventHandler {
 public:
  explicit FdWatch(std::function<void()> on_readable) : on_readable_(std::move(on_readable)) {}
  void OnEvents(uint32_t) override { on_readable_(); }

 private:
  std::function<void()> on_readable_;
};

Tunnel::Tunnel(TunnelOptions options)
    : options_(std::move(options)), reconciler_(options_.clock, options_.sockets) {}

absl::StatusOr<std::unique_ptr<Tunnel>> Tunnel::Create(const TunnelOptions& options) {
  if (options.clock == nullptr || options.sockets == nullptr) {
    return absl::InvalidArgumentError("tunnel options: clock and sockets are required");
  }
  auto t = std::unique_ptr<Tunnel>(new Tunnel(options));
  t->started_ = options.clock->Now();
  t->host_netns_ = UniqueFd(open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!t->host_netns_) return absl::ErrnoToStatus(errno, "open /proc/self/ns/net");
  AMBIT_ASSIGN_OR_RETURN(t->loop_, EpollLoop::Create());

  AMBIT_RETURN_IF_ERROR(MakeSocketDirectory(options.control_socket));
  AMBIT_ASSIGN_OR_RETURN(ControlClaim claim, ClaimControlSocket(options.control_socket));
  t->standby_ = claim.standby;
  t->socket_lock_ = std::move(claim.lock);
  t->primary_lock_ = std::move(claim.primary_lock);
  t->next_lock_ = std::move(claim.next_lock);

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, nullptr);  // before workers start, so they inherit the mask
  signal(SIGPIPE, SIG_IGN);
  t->signal_fd_ = UniqueFd(signalfd(-1, &mask, SFD_CLOEXEC));
  if (!t->signal_fd_) return absl::ErrnoToStatus(errno, "signalfd");

  // Every handler runs on the control thread's loop, which the Tunnel owns and runs: `raw`
  // outlives every call.
  Tunnel* raw = t.get();
  auto watch = [&](int fd, std::function<void()> fn) -> absl::Status {
    auto w = std::make_unique<FdWatch>(std::move(fn));
    AMBIT_RETURN_IF_ERROR(raw->loop_->Watch(fd, EPOLLIN, w.get()));
    raw->watches_.push_back(std::move(w));
    return absl::OkStatus();
  };
  AMBIT_RETURN_IF_ERROR(watch(t->signal_fd_.get(), [raw] {
    signalfd_siginfo info;
    (void)!read(raw->signal_fd_.get(), &info, sizeof info);
    if (raw->draining_) {
      // The kubelet sends SIGTERM when the old pod is deleted, right as the roll drains it:
      // the grace is what the connections were promised, and terminationGracePeriodSeconds
      // bounds it from outside anyway.
      AMBIT_LOG(kComponent, Info) << "signal while draining: exiting at the latest at "
                                  << FormatTimestamp(raw->drain_deadline_)
                                  << " (the grace is not cut short)";
      return;
    }
    AMBIT_LOG(kComponent, Info) << "data plane stopping on signal";
    raw->loop_->Stop();
  }));
  raw->listen_watch_ = std::make_unique<FdWatch>([raw] {
    UniqueFd fd(accept4(raw->listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (fd) raw->OnControllerConnected(std::move(fd));
    raw->AfterEvent();
  });
  raw->stats_watch_ = std::make_unique<FdWatch>([raw] {
    UniqueFd fd(accept4(raw->stats_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (fd) raw->ServeStats(std::move(fd));
  });
  const std::string& path = options.control_socket;
  AMBIT_RETURN_IF_ERROR(raw->ServeControlPath(t->standby_ ? path + ".next" : path));
  AMBIT_RETURN_IF_ERROR(
      raw->ServeStatsPath(t->standby_ ? StandbyStatsPath(path) : StatsSocketFor(path)));
  AMBIT_RETURN_IF_ERROR(watch(t->worker_replies_.fd(), [raw] {
    raw->worker_replies_.Drain();
    raw->AfterEvent();
  }));
  raw->controller_watch_ = std::make_unique<FdWatch>([raw] { raw->OnControllerReadable(); });
  return t;
}

Tunnel::~Tunnel() {
  StopWorkers();
  // Only paths still ours: a draining process gave the control path up (its successor's now)
  // and moved its stats socket aside.
  if (listen_fd_) unlink(listen_path_.c_str());
  if (stats_fd_) unlink(stats_path_.c_str());
}

absl::Status Tunnel::ServeControlPath(const std::string& path) {
  AMBIT_ASSIGN_OR_RETURN(UniqueFd fd, ListenUnix(path, SOCK_SEQPACKET));
  if (listen_fd_) loop_->Unwatch(listen_fd_.get());
  listen_fd_ = std::move(fd);
  listen_path_ = path;
  return loop_->Watch(listen_fd_.get(), EPOLLIN, listen_watch_.get());
}

absl::Status Tunnel::ServeStatsPath(const std::string& path) {
  AMBIT_ASSIGN_OR_RETURN(UniqueFd fd, ListenUnix(path, SOCK_STREAM));
  if (stats_fd_) loop_->Unwatch(stats_fd_.get());
  stats_fd_ = std::move(fd);
  stats_path_ = path;
  return loop_->Watch(stats_fd_.get(), EPOLLIN, stats_watch_.get());
}

void Tunnel::TryPromote() {
  if (!standby_ || draining_) return;
  if (flock(primary_lock_.get(), LOCK_EX | LOCK_NB) < 0) {
    if (errno != EWOULDBLOCK) {
      AMBIT_LOG(kComponent, Error)
          << "lock " << options_.control_socket << ".lock: " << strerror(errno) << "; trying again";
    }
    loop_->RunAfter(kPromotePoll, [this] { TryPromote(); });
    return;
  }
  if (absl::Status s = Promote(); !s.ok()) {
    // Holding the lock without the path would keep a successor off it for nothing.
    AMBIT_LOG(kComponent, Error) << "taking over " << options_.control_socket << ": " << s.message()
                                 << "; stopping";
    loop_->Stop();
  }
}

absl::Status Tunnel::Promote() {
  const std::string& path = options_.control_socket;
  socket_lock_ = std::move(primary_lock_);
  standby_ = false;
  AMBIT_RETURN_IF_ERROR(WritePid(socket_lock_.get(), path + ".lock"));
  // The agent's session on .next is a connected socket of its own: re-binding the paths leaves
  // it untouched. The paths move first, the .next lock goes last, so a later standby never
  // finds .next free while this process still answers there.
  const std::string old_listen = listen_path_, old_stats = stats_path_;
  AMBIT_RETURN_IF_ERROR(ServeControlPath(path));
  AMBIT_RETURN_IF_ERROR(ServeStatsPath(StatsSocketFor(path)));
  unlink(old_listen.c_str());
  unlink(old_stats.c_str());
  next_lock_.Reset();
  AMBIT_LOG(kComponent, Info) << "the previous data plane on " << path
                              << " drained or exited; taking the socket over: this standby (pid "
                              << getpid() << ") is the primary now"
                              << (controller_ ? " (the agent's session carries on)" : "");
  return absl::OkStatus();
}

void Tunnel::Drain(absl::Duration grace) {
  if (draining_) {
    AMBIT_LOG(kComponent, Info) << "drain requested again; the deadline stays at "
                                << FormatTimestamp(drain_deadline_);
    return;
  }
  draining_ = true;
  drain_deadline_ = options_.clock->Now() + grace;
  PostToWorkers([](Worker& worker) { worker.Drain(); });
  // The control path goes before the lock: whoever takes the lock next binds the path, and an
  // unlink after that would remove the successor's socket.
  if (listen_fd_) {
    loop_->Unwatch(listen_fd_.get());
    unlink(listen_path_.c_str());
    listen_fd_.Reset();
  }
  // The stats socket moves aside (rename keeps the bound socket reachable under the new name),
  // so the successor binds its own at the usual path and the agent still reads this one's
  // connections while they finish.
  const std::string aside =
      absl::StrCat(StatsSocketFor(options_.control_socket), ".draining-", getpid());
  if (stats_fd_ && rename(stats_path_.c_str(), aside.c_str()) == 0) {
    stats_path_ = aside;
  } else if (stats_fd_) {
    AMBIT_LOG(kComponent, Warning)
        << "move the stats socket aside to " << aside << ": " << strerror(errno) << "; closing it";
    loop_->Unwatch(stats_fd_.get());
    unlink(stats_path_.c_str());
    stats_fd_.Reset();
  }
  if (standby_) {
    // Drained before it was promoted: give up .next as well.
    primary_lock_.Reset();
    next_lock_.Reset();
    standby_ = false;
  }
  socket_lock_.Reset();
  // Certificates are not renewed from here on (the agent's session ends): they stay valid for
  // far longer than any grace (renewal at half of a lifetime of hours), and the workers check
  // their notAfter as always.
  AMBIT_LOG(kComponent, Info) << "draining for a successor: stopped accepting on every pod "
                                 "listener, GOAWAY on every HBONE session, released "
                              << options_.control_socket << " and its lock; stats on " << aside
                              << "; exiting when the last connection and HBONE session end or in "
                              << absl::FormatDuration(grace);
  CheckDrained();
}

void Tunnel::CheckDrained() {
  if (drain_check_pending_) return;
  drain_check_pending_ = true;
  struct Count {
    size_t remaining = 0;
    size_t connections = 0;
    size_t sessions = 0;  // HBONE sessions not yet closed
  };
  auto count = std::make_shared<Count>();
  count->remaining = workers_.size();
  auto decide =
      [this, count] {
        drain_check_pending_ = false;
        const bool over = options_.clock->Now() >= drain_deadline_;
        // Sessions too: one still in its shutdown notice may carry a CONNECT on its way to us,
        // which an exit would answer with a TCP reset instead of serving it (or refusing it, for a
        // retry).
        if (count->connections == 0 && count->sessions == 0) {
          AMBIT_LOG(kComponent, Info)
              << "drained: the last connection and HBONE session ended; exiting";
          loop_->Stop();
        } else if (over) {
          AMBIT_LOG(kComponent, Warning)
              << "drain grace over: closing " << count->connections << " connection(s) and "
              << count->sessions << " HBONE session(s) still open; exiting";
          loop_->Stop();
        } else {
          loop_->RunAfter(std::min(kDrainPoll, drain_deadline_ - options_.clock->Now()),
                          [this] { CheckDrained(); });
        }
      };
  if (workers_.empty()) return decide();
  // Through every worker's queue (after its Drain), back on this thread as a heartbeat is.
  for (auto& w : workers_) {
    w->Post([this, count, decide](Worker& worker) {
      worker_replies_.Post(
          [count, decide, n = worker.connection_count(), sessions = worker.session_count()] {
            count->connections += n;
            count->sessions += sessions;
            if (--count->remaining == 0) decide();
          });
    });
  }
}

void Tunnel::StopWorkers() {
  // Workers first: once joined, no thread but this one can reach a member, whatever the order
  // members are destroyed in.
  for (auto& w : workers_) w->Stop();
  for (auto& w : workers_) w->Join();
}

absl::Status Tunnel::Run() {
  AMBIT_LOG(kComponent, Info) << "data plane pid=" << getpid() << " waiting for the agent on "
                              << listen_path_;
  if (standby_) TryPromote();
  AfterEvent();
  loop_->Run();
  return absl::OkStatus();
}

void Tunnel::AfterEvent() {
  auto status = Execute(reconciler_.Tick());
  if (!status.ok()) DropController(std::string(status.message()));
  ArmTimer();
}

void Tunnel::ArmTimer() {
  // EpollLoop timers cannot be cancelled: one is armed only for a deadline earlier than the one
  // already armed, and a timer that finds its deadline superseded does nothing. So at most one
  // timer per earlier deadline is pending, however many events arrive.
  absl::Time next = reconciler_.NextDeadline();
  if (next == absl::InfiniteFuture() || next >= timer_at_) return;
  timer_at_ = next;
  absl::Duration in = std::max(next - options_.clock->Now(), absl::Milliseconds(1));
  loop_->RunAfter(in, [this, next] {
    if (timer_at_ != next) return;  // superseded by an earlier one, which re-armed
    timer_at_ = absl::InfiniteFuture();
    AfterEvent();
  });
}

absl::Status Tunnel::Send(const pb::Envelope& env, const std::vector<int>& fds) {
  if (!controller_) return absl::FailedPreconditionError("no agent connected");
  std::string bytes;
  env.SerializeToString(&bytes);
  return SendPacket(controller_.get(), bytes, fds);
}

void Tunnel::DropController(const std::string& why) {
  if (!controller_) return;
  AMBIT_LOG(kComponent, Info) << "agent session ended: " << why
                              << "; serving the last configuration";
  loop_->Unwatch(controller_.get());
  controller_.Reset();
  (void)Execute(reconciler_.Disconnected());
}

void Tunnel::OnControllerConnected(UniqueFd fd) {
  if (controller_) {
    AMBIT_LOG(kComponent, Info) << "a new agent connected; replacing the previous session";
    loop_->Unwatch(controller_.get());
    controller_.Reset();
    (void)Execute(reconciler_.Disconnected());
  }
  controller_ = std::move(fd);
  auto status = loop_->Watch(controller_.get(), EPOLLIN, controller_watch_.get());
  if (status.ok()) status = Execute(reconciler_.Connected());
  if (!status.ok()) {
    AMBIT_LOG(kComponent, Warning) << "agent session failed: " << status.message();
    DropController(std::string(status.message()));
  }
}

void Tunnel::OnControllerReadable() {
  auto status = OnControlMessage();
  if (!status.ok()) DropController(std::string(status.message()));
  AfterEvent();
}

absl::Status Tunnel::OnControlMessage() {
  AMBIT_ASSIGN_OR_RETURN(Packet packet, ReceivePacket(controller_.get()));
  AMBIT_ASSIGN_OR_RETURN(pb::Envelope env, DecodeAgentMessage(packet.data, packet.fds.size()));
  return HandleEnvelope(env, std::move(packet.fds));
}

absl::Status Tunnel::HandleEnvelope(const pb::Envelope& env, std::vector<UniqueFd> fds) {
  switch (env.body_case()) {
    case pb::Envelope::kMaps: {
      if (!workers_.empty()) return absl::OkStatus();  // same pinned map as before
      UniqueFd orig_dst, deliver, probes;
      for (int i = 0; i < env.maps().fds_size() && i < static_cast<int>(fds.size()); ++i) {
        if (env.maps().fds(i) == pb::FD_ROLE_ORIG_DST_MAP) orig_dst = std::move(fds[i]);
        if (env.maps().fds(i) == pb::FD_ROLE_DELIVER_MAP) deliver = std::move(fds[i]);
        if (env.maps().fds(i) == pb::FD_ROLE_PROBES_MAP) probes = std::move(fds[i]);
      }
      if (!orig_dst || !deliver) {
        return absl::InvalidArgumentError("maps message lacks ambit_orig_dst or ambit_deliver");
      }
      if (!probes) {
        // An agent from before kubelet probes: every plaintext connection is decided by policy.
        AMBIT_LOG(kComponent, Warning)
            << "the agent sent no ambit_probes map: kubelet probes are not told apart";
      }
      return StartWorkers(std::move(orig_dst), std::move(deliver), std::move(probes));
    }
    case pb::Envelope::kAddPod: {
      AMBIT_ASSIGN_OR_RETURN(std::shared_ptr<Pod> pod, DecodePod(env.add_pod(), std::move(fds)));
      return Execute(reconciler_.AddPod(std::move(pod)));
    }
    case pb::Envelope::kRemovePod:
      return Execute(reconciler_.RemovePod(env.remove_pod().uid()));
    case pb::Envelope::kPing:
      return Execute(reconciler_.Ping(env.ping().seq()));
    case pb::Envelope::kSnapshot:
      return Execute(reconciler_.ApplySnapshot(env.snapshot().version(),
                                               MeshSnapshot::FromProto(env.snapshot())));
    case pb::Envelope::kSnapshotRef: {
      auto snapshot = ReadSnapshotFile(env.snapshot_ref(), fds, options_.max_snapshot_bytes);
      if (!snapshot.ok()) {
        return Execute(reconciler_.ApplySnapshot(env.snapshot_ref().version(), snapshot.status()));
      }
      return Execute(reconciler_.ApplySnapshot(env.snapshot_ref().version(),
                                               MeshSnapshot::Create(*std::move(snapshot))));
    }
    case pb::Envelope::kSnapshotFailed:
      return Execute(reconciler_.SnapshotFailed(env.snapshot_failed().version(),
                                                env.snapshot_failed().error()));
    case pb::Envelope::kCsrResponse: {
      const auto& r = env.csr_response();
      if (!r.error().empty()) {
        return Execute(reconciler_.CsrAnswered(r.request_id(), absl::UnavailableError(r.error())));
      }
      return Execute(reconciler_.CsrAnswered(
          r.request_id(), std::vector<std::string>(r.chain_pem().begin(), r.chain_pem().end())));
    }
    case pb::Envelope::kDrain:
      Drain(absl::Seconds(env.drain().grace_seconds()));
      return absl::OkStatus();
    case pb::Envelope::kTrustBundle:
    case pb::Envelope::kTrustBundleRef: {
      pb::TrustBundle from_file;
      if (env.has_trust_bundle_ref()) {
        // The count and size were checked by DecodeAgentMessage. A file that cannot be read
        // ends the session (the agent connects again and resends), as any malformed message
        // does: the last good bundle stays in force meanwhile.
        AMBIT_ASSIGN_OR_RETURN(from_file,
                               ReadTrustBundleFile(fds[0].get(), env.trust_bundle_ref().size()));
      }
      const pb::TrustBundle& bundle = env.has_trust_bundle() ? env.trust_bundle() : from_file;
      return Execute(reconciler_.TrustBundle(
          std::vector<std::string>(bundle.root_pem().begin(), bundle.root_pem().end()),
          std::vector<std::string>(bundle.crl_pem().begin(), bundle.crl_pem().end())));
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected control message ", static_cast<int>(env.body_case())));
  }
}

absl::Status Tunnel::Execute(Actions actions) {
  // Every action runs, whatever a send before it did: the workers must get a configuration even
  // if its ack cannot go up. The first failure that ends the session is returned.
  absl::Status first;
  for (Action& a : actions) {
    absl::Status status = ExecuteOne(a);
    if (first.ok()) first = std::move(status);
  }
  return first;
}

void Tunnel::PostToWorkers(std::function<void(Worker&)> fn) {
  for (auto& w : workers_) w->Post(fn);
}

absl::Status Tunnel::ExecuteOne(Action& a) {
  return std::visit(
      [this](auto& act) -> absl::Status {
        using T = std::decay_t<decltype(act)>;
        if constexpr (std::is_same_v<T, action::SendHello>) {
          pb::Envelope hello = NewEnvelope();
          hello.mutable_hello()->set_pid(getpid());
          hello.mutable_hello()->set_pod_count(act.pod_count);
          hello.mutable_hello()->set_snapshot_version(act.snapshot_version);
          hello.mutable_hello()->set_heartbeat(true);
          hello.mutable_hello()->set_drain(true);
          return Send(hello, {});
        } else if constexpr (std::is_same_v<T, action::SendHandBack>) {
          pb::Envelope env = NewEnvelope();
          std::vector<int> fds;
          AMBIT_RETURN_IF_ERROR(EncodePod(*act.pod, env.mutable_add_pod(), &fds));
          return Send(env, fds);
        } else if constexpr (std::is_same_v<T, action::SendAck>) {
          pb::Envelope ack = NewEnvelope();
          ack.mutable_ack()->set_version(act.version);
          // The workers free the previous snapshot once they have switched; what it and the
          // decoding left in glibc's arenas goes back to the kernel here (once per
          // configuration).
          malloc_trim(0);
          return Send(ack, {});
        } else if constexpr (std::is_same_v<T, action::SendNack>) {
          pb::Envelope nack = NewEnvelope();
          nack.mutable_nack()->set_version(act.version);
          nack.mutable_nack()->set_error(act.error);
          return Send(nack, {});
        } else if constexpr (std::is_same_v<T, action::SendCsr>) {
          pb::Envelope env = NewEnvelope();
          auto* r = env.mutable_csr_request();
          r->set_request_id(act.request_id);
          r->set_identity(act.identity);
          r->set_csr_pem(act.csr_pem);
          auto status = Send(env, {});
          // Not the end of the session by itself: the certificate manager retries with back-off.
          if (!status.ok()) reconciler_.CsrNotSent(act.request_id, status);
          return absl::OkStatus();
        } else if constexpr (std::is_same_v<T, action::SendCertReport>) {
          pb::Envelope report = NewEnvelope();
          auto* r = report.mutable_certificate_report();  // an empty report is still a report
          for (const auto& c : act.certificates) {
            auto* s = r->add_certificates();
            s->set_identity(c.identity);
            s->set_state(tls::CertStateName(c.state));
            s->set_serial_hex(c.serial_hex);
            s->set_issuer(c.issuer);
            s->set_last_error(c.last_error);
            s->set_refs(c.refs);
            s->set_chain_pem(c.chain_pem);
            if (c.not_before != absl::InfinitePast()) {
              s->set_not_before_unix(absl::ToUnixSeconds(c.not_before));
            }
            if (c.not_after != absl::InfinitePast()) {
              s->set_not_after_unix(absl::ToUnixSeconds(c.not_after));
            }
          }
          if (report.ByteSizeLong() <= kInlineCertificateReportBytes) {
            (void)Send(report, {});
            return absl::OkStatus();
          }
          // Past what one control message carries (each status holds its chain): the report
          // goes in a sealed file, as the agent's snapshots come.
          std::string bytes;
          r->SerializeToString(&bytes);
          auto file = CreateSealedFile("ambit-cert-report", bytes);
          if (!file.ok()) {
            AMBIT_LOG(kComponent, Warning) << "certificate report of " << act.certificates.size()
                                           << " identities not sent: " << file.status().message();
            return absl::OkStatus();
          }
          pb::Envelope ref = NewEnvelope();
          ref.mutable_certificate_report_ref()->set_size(bytes.size());
          if (absl::Status s = Send(ref, {file->get()}); !s.ok()) {
            AMBIT_LOG(kComponent, Warning) << "certificate report of " << act.certificates.size()
                                           << " identities not sent: " << s.message();
          }
          return absl::OkStatus();
        } else if constexpr (std::is_same_v<T, action::SendPong>) {
          pb::Envelope env = NewEnvelope();
          auto* pong = env.mutable_pong();
          pong->set_seq(act.seq);
          pong->set_workers(act.workers);
          for (const auto& health : act.pods) {
            auto* p = pong->add_pods();
            p->set_uid(health.uid);
            p->set_listening(health.listening);
            p->set_workers_accepting(health.workers_accepting);
            p->set_waiting_for_certificate(health.waiting_for_certificate);
          }
          absl::Status status;
          if (env.ByteSizeLong() <= kInlinePongBytes) {
            status = Send(env, {});
          } else {
            std::string bytes;
            pong->SerializeToString(&bytes);
            auto file = CreateSealedFile("ambit-pong", bytes);
            if (file.ok()) {
              pb::Envelope ref = NewEnvelope();
              ref.mutable_pong_ref()->set_size(bytes.size());
              status = Send(ref, {file->get()});
            } else {
              status = file.status();
            }
            if (status.ok() && !pong_in_file_logged_) {
              pong_in_file_logged_ = true;
              AMBIT_LOG(kComponent, Info)
                  << "heartbeat answers list " << act.pods.size() << " pods in " << bytes.size()
                  << " bytes: sent in a sealed file while over " << (kInlinePongBytes >> 10)
                  << " KiB";
            }
          }
          if (!status.ok()) {
            AMBIT_LOG(kComponent, Warning)
                << "heartbeat answer " << act.seq << ": " << status.message();
          }
          return absl::OkStatus();
        } else if constexpr (std::is_same_v<T, action::AskWorkers>) {
          AskWorkers(act);
          return absl::OkStatus();
        } else if constexpr (std::is_same_v<T, action::ServePod>) {
          PostToWorkers([pod = act.pod](Worker& worker) { worker.AddPod(pod); });
          return absl::OkStatus();
        } else if constexpr (std::is_same_v<T, action::RemovePod>) {
          return RemovePod(act);
        } else if constexpr (std::is_same_v<T, action::InstallSnapshot>) {
          PostToWorkers([snap = act.snapshot](Worker& worker) { worker.SetSnapshot(snap); });
          return absl::OkStatus();
        } else if constexpr (std::is_same_v<T, action::SetFailClosed>) {
          PostToWorkers([reason = act.reason](Worker& worker) { worker.SetFailClosed(reason); });
          return absl::OkStatus();
        } else {
          static_assert(std::is_same_v<T, action::InstallTls>);
          PostToWorkers([tls = act.contexts](Worker& worker) { worker.SetTls(tls); });
          return absl::OkStatus();
        }
      },
      a);
}

void Tunnel::AskWorkers(const action::AskWorkers& ask) {
  struct Round {
    uint64_t seq = 0;
    uint64_t session = 0;
    size_t remaining = 0;
    std::vector<std::unordered_map<std::string, uint32_t>> watched;
  };
  auto round = std::make_shared<Round>();
  round->seq = ask.seq;
  round->session = ask.session;
  round->remaining = workers_.size();
  // The workers' tasks run after whatever each worker had queued, so the answer also proves
  // their queues move. The reply runs on this thread's loop (worker_replies_), never on the
  // worker; `this` is alive for it because ~Tunnel joins the workers before any member dies and
  // replies still queued then are discarded unrun.
  for (auto& w : workers_) {
    w->Post([this, round](Worker& worker) {
      worker_replies_.Post([this, round, watched = worker.WatchedListeners()]() mutable {
        round->watched.push_back(std::move(watched));
        if (--round->remaining != 0) return;
        (void)Execute(reconciler_.HeartbeatAnswered(round->seq, round->session, round->watched));
      });
    });
  }
}

absl::Status Tunnel::RemovePod(const action::RemovePod& remove) {
  // Every worker drops the pod and says so once what it held is freed. The agent may bind the
  // same ports in the pod's netns as soon as it reads the answer, so the answer waits (bounded,
  // like a stats request) for all of them.
  std::vector<std::future<void>> dropped;
  for (auto& w : workers_) {
    auto promise = std::make_shared<std::promise<void>>();
    dropped.push_back(promise->get_future());
    w->Post([uid = remove.uid, promise](Worker& worker) {
      worker.RemovePod(uid, [promise] { promise->set_value(); });
    });
  }
  auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(kRemoveTimeout);
  for (size_t i = 0; i < dropped.size(); ++i) {
    if (dropped[i].wait_until(deadline) != std::future_status::ready) {
      AMBIT_LOG(kComponent, Warning)
          << "remove pod " << remove.uid << ": worker " << i << " did not answer within "
          << kRemoveTimeout << "; its listeners are shut down regardless";
      break;
    }
  }
  if (remove.pod != nullptr) {
    // Out of the listening hash at once, whoever still holds a descriptor, so the agent's new
    // bind (SO_REUSEADDR) of the same port succeeds even if a reference outlived the wait above.
    const Pod& pod = *remove.pod;
    for (const UniqueFd* fd : {&pod.outbound_v4, &pod.outbound_v6, &pod.plain_v4, &pod.plain_v6,
                               &pod.hbone_v4, &pod.hbone_v6}) {
      if (*fd) options_.sockets->StopListening(fd->get());
    }
  }
  AMBIT_LOG(kComponent, Info) << "stopped serving pod " << remove.uid;
  pb::Envelope removed = NewEnvelope();
  removed.mutable_pod_removed()->set_uid(remove.uid);
  return Send(removed, {});
}

void Tunnel::ServeStats(UniqueFd client) {
  // The main thread only does control work, so answering inline is fine; every wait is bounded.
  auto request_bytes = ReadFramed(client.get(), 1 << 16, kStatsTimeout);
  if (!request_bytes.ok()) {
    AMBIT_LOG(kComponent, Warning) << "stats request: " << request_bytes.status().message();
    return;
  }
  auto decoded = DecodeStatsSocketRequest(*request_bytes);
  if (!decoded.ok()) {
    AMBIT_LOG(kComponent, Warning) << "stats request: " << decoded.status().message();
    if (decoded.status().code() == absl::StatusCode::kInvalidArgument) {
      // Said to the asker too: a refused log level must not read as applied, a refused probe
      // not as an authorizer's error.
      pb::StatsSocketRequest raw;
      (void)raw.ParseFromString(*request_bytes);
      std::string answer;
      if (raw.has_ext_authz_probe()) {
        pb::ExtAuthzProbeResponse refused;
        refused.set_error(std::string(decoded.status().message()));
        answer = refused.SerializeAsString();
      } else {
        pb::SetLogLevelResponse refused;
        refused.set_error(std::string(decoded.status().message()));
        answer = refused.SerializeAsString();
      }
      (void)WriteFramed(client.get(), answer, kStatsTimeout);
    }
    return;
  }
  if (decoded->has_ext_authz_probe()) {
    // Checked by DecodeStatsSocketRequest.
    StartProbe(std::move(client), *ExtAuthzProbeFromProto(decoded->ext_authz_probe()));
    return;
  }
  if (decoded->has_log_level()) {
    const pb::SetLogLevelRequest& change = decoded->log_level();
    log::Level level;
    log::ParseLevel(change.level(), &level);  // checked by DecodeStatsSocketRequest
    log::SetLevel(change.component(), level);
    AMBIT_LOG(kComponent, Info) << "log level of "
                                << (change.component().empty() ? "default" : change.component())
                                << " set to " << change.level();
    auto status =
        WriteFramed(client.get(), pb::SetLogLevelResponse().SerializeAsString(), kStatsTimeout);
    if (!status.ok()) {
      AMBIT_LOG(kComponent, Warning) << "log level answer: " << status.message();
    }
    return;
  }
  const pb::StatsRequest& request = decoded->stats();
  pb::StatsResponse response;
  response.set_snapshot_version(reconciler_.snapshot_version());
  response.set_failed_version(reconciler_.failed_version());
  response.set_failed_reason(reconciler_.failed_reason());
  if (request.metrics()) {
    auto* c = response.add_counters();
    c->set_name(std::string(metrics::kSnapshotsRejected.name));
    c->set_value(reconciler_.snapshots_rejected());
  }
  response.set_started_unix(absl::ToUnixSeconds(started_));
  response.set_pid(getpid());
  // Each worker fills its own part on its own thread; a worker that does not answer in time is
  // left out (its part is dropped with its promise, never written into `response`).
  std::vector<std::future<std::shared_ptr<pb::StatsResponse>>> parts;
  for (auto& w : workers_) {
    auto promise = std::make_shared<std::promise<std::shared_ptr<pb::StatsResponse>>>();
    parts.push_back(promise->get_future());
    w->Post([promise, request](Worker& worker) {
      auto part = std::make_shared<pb::StatsResponse>();
      worker.CollectStats(request.connections(), request.metrics(), part.get());
      // The gauge of distinct sources is counted over all workers' entries at once below.
      if (request.plaintext_clients() || request.metrics()) {
        worker.CollectPlaintextClients(request.metrics(), part.get());
      }
      promise->set_value(std::move(part));
    });
  }
  auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(kStatsTimeout);
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].wait_until(deadline) != std::future_status::ready) {
      // All workers or no answer: totals missing one worker's part would look like a counter
      // reset to Prometheus. The client sees the connection close and reports the data plane
      // as unavailable for this scrape.
      AMBIT_LOG(kComponent, Warning)
          << "stats: worker " << i << " did not answer in time; no answer sent";
      return;
    }
    response.MergeFrom(*parts[i].get());
  }
  MergePlaintextClients(request.metrics(), &response);
  if (!request.plaintext_clients()) response.clear_plaintext_clients();
  if (request.metrics() && options_.l7 != nullptr) {
    response.set_l7_metrics_text(options_.l7->RenderMetrics());
  }
  auto status = WriteFramed(client.get(), response.SerializeAsString(), kStatsTimeout);
  if (!status.ok()) {
    AMBIT_LOG(kComponent, Warning) << "stats answer: " << status.message();
  }
}

void Tunnel::StartProbe(UniqueFd client, const ExtAuthzProbe& probe) {
  auto refuse = [&](const std::string& why) {
    ExtAuthzProbeResult r;
    r.error = why;
    (void)WriteFramed(client.get(), ExtAuthzProbeResultToProto(r).SerializeAsString(),
                      kStatsTimeout);
  };
  if (options_.l7 == nullptr) return refuse("this data plane (ambit-tunnel) serves no waypoint");
  if (workers_.empty()) return refuse("the data plane has not started its workers yet");
  if (probes_.size() >= kMaxProbes) {
    return refuse(absl::StrCat(kMaxProbes, " ext_authz probes are already outstanding"));
  }
  const uint64_t id = ++next_probe_;
  probes_.emplace(id, std::move(client));
  std::vector<std::shared_ptr<const Pod>> pods;
  for (const auto& [uid, pod] : reconciler_.pods()) pods.push_back(pod);
  // Any worker will do: each has its own client of every provider; spreading them keeps one
  // worker's pool from holding every probe.
  Worker& worker = *workers_[id % workers_.size()];
  // The result comes back through worker_replies_, drained on this thread; `this` outlives it
  // because ~Tunnel joins the workers first and discards replies still queued.
  worker.Post([this, id, pods = std::move(pods), probe, l7 = options_.l7](Worker& w) {
    l7->ProbeExtAuthz(w, pods, probe, kProbeBound, [this, id](ExtAuthzProbeResult result) {
      worker_replies_.Post(
          [this, id, result = std::move(result)]() mutable { AnswerProbe(id, result); });
    });
  });
  loop_->RunAfter(kProbeBound + kProbeMargin, [this, id] {
    ExtAuthzProbeResult r;
    r.error = absl::StrCat("the waypoint's worker did not answer within ",
                           absl::FormatDuration(kProbeBound + kProbeMargin));
    AnswerProbe(id, r);
  });
}

void Tunnel::AnswerProbe(uint64_t id, const ExtAuthzProbeResult& result) {
  auto it = probes_.find(id);
  if (it == probes_.end()) return;  // answered already (the result, or the bound)
  UniqueFd client = std::move(it->second);
  probes_.erase(it);
  auto status = WriteFramed(client.get(), ExtAuthzProbeResultToProto(result).SerializeAsString(),
                            kStatsTimeout);
  if (!status.ok()) {
    AMBIT_LOG(kComponent, Warning) << "ext_authz probe answer: " << status.message();
  }
}

absl::Status Tunnel::StartWorkers(UniqueFd orig_dst_map, UniqueFd deliver_map,
                                  UniqueFd probes_map) {
  orig_dst_map_ = std::move(orig_dst_map);
  deliver_map_ = std::move(deliver_map);
  probes_map_ = std::move(probes_map);
  auto settings = std::make_shared<DataPlaneSettings>();
  settings->clock = options_.clock;
  settings->sockets = options_.sockets;
  settings->socket_mark = options_.socket_mark;
  settings->delivery_mark = DeliveryMark(options_.socket_mark);
  settings->host_netns = host_netns_.get();
  settings->orig_dst_map = orig_dst_map_.get();
  settings->deliver_map = deliver_map_.get();
  settings->probes_map = probes_map_.get();
  settings->kubelet_probe_sources = options_.kubelet_probe_sources;
  settings->access_log_format = options_.access_log_format;
  settings->idle_timeout = options_.idle_timeout;
  settings->failed_stream_burst = options_.failed_stream_burst;
  settings->failed_stream_rate = options_.failed_stream_rate;
  settings->l7 = options_.l7;
  settings_ = settings;
  for (int i = 0; i < options_.workers; ++i) {
    AMBIT_ASSIGN_OR_RETURN(auto w, Worker::Create(i, settings_));
    w->Start();
    workers_.push_back(std::move(w));
  }
  AMBIT_LOG(kComponent, Info) << "data plane started " << workers_.size() << " workers";
  return Execute(reconciler_.WorkersStarted());
}

}  // namespace ambit::tunnel
