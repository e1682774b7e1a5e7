#include "agent/tunnel/control.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <future>

#include "absl/strings/str_cat.h"
#include "agent/common/clock.h"
#include "agent/common/framed.h"
#include "agent/common/log.h"
#include "agent/common/metrics.h"
#include "agent/common/seqpacket.h"
#include "agent/common/socket_util.h"
#include "agent/common/status.h"
#include "agent/hbone/tls_context.h"
#include "agent/identity/spiffe_id.h"
#include "agent/tls/trust_bundle.h"
#include "agent/tunnel/control_message.h"
#include "agent/tunnel/control_rules.h"
#include "agent/tunnel/tls_contexts.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::tunnel {
namespace {

namespace pb = ::ambit::dataplane::v1;
constexpr const char* kComponent = "tunnel";
enum : uint64_t {
  kTagListen = 1,
  kTagController = 2,
  kTagSignal = 3,
  kTagCertTimer = 4,
  kTagStats = 5,
  kTagWorkerReplies = 6,
};
// How long one stats exchange may take, each way, and how long workers have to answer.
constexpr absl::Duration kStatsTimeout = absl::Seconds(2);
// How long the workers have to drop a removed pod before the removal is answered anyway.
constexpr absl::Duration kRemoveTimeout = absl::Seconds(2);

absl::Status EpollAdd(int epoll, int fd, uint64_t tag) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = tag;
  if (epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &ev) < 0) return absl::ErrnoToStatus(errno, "epoll_ctl");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tunnel>> Tunnel::Create(const TunnelOptions& options) {
  auto t = std::unique_ptr<Tunnel>(new Tunnel(options));
  t->started_ = options.clock->Now();
  t->host_netns_ = UniqueFd(open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!t->host_netns_) return absl::ErrnoToStatus(errno, "open /proc/self/ns/net");

  AMBIT_ASSIGN_OR_RETURN(t->listen_fd_, ListenUnix(options.control_socket, SOCK_SEQPACKET));
  AMBIT_ASSIGN_OR_RETURN(t->stats_fd_,
                         ListenUnix(StatsSocketFor(options.control_socket), SOCK_STREAM));

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, nullptr);  // before workers start, so they inherit the mask
  signal(SIGPIPE, SIG_IGN);
  t->signal_fd_ = UniqueFd(signalfd(-1, &mask, SFD_CLOEXEC));
  t->epoll_ = UniqueFd(epoll_create1(EPOLL_CLOEXEC));
  if (!t->signal_fd_ || !t->epoll_) return absl::ErrnoToStatus(errno, "signalfd/epoll");
  AMBIT_RETURN_IF_ERROR(EpollAdd(t->epoll_.get(), t->listen_fd_.get(), kTagListen));
  AMBIT_RETURN_IF_ERROR(EpollAdd(t->epoll_.get(), t->signal_fd_.get(), kTagSignal));
  AMBIT_RETURN_IF_ERROR(EpollAdd(t->epoll_.get(), t->stats_fd_.get(), kTagStats));
  AMBIT_RETURN_IF_ERROR(EpollAdd(t->epoll_.get(), t->worker_replies_.fd(), kTagWorkerReplies));
  t->cert_timer_ = UniqueFd(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!t->cert_timer_) return absl::ErrnoToStatus(errno, "timerfd_create");
  AMBIT_RETURN_IF_ERROR(EpollAdd(t->epoll_.get(), t->cert_timer_.get(), kTagCertTimer));
  t->certs_ = std::make_unique<tls::CertManager>(t.get(), t->options_.clock);
  return t;
}

Tunnel::~Tunnel() {
  for (auto& w : workers_) w->Stop();
  for (auto& w : workers_) w->Join();
  if (listen_fd_) unlink(options_.control_socket.c_str());
  if (stats_fd_) unlink(StatsSocketFor(options_.control_socket).c_str());
}

absl::Status Tunnel::Run() {
  AMBIT_LOG(kComponent, Info) << "data plane pid=" << getpid() << " waiting for the agent on "
                              << options_.control_socket;
  epoll_event events[8];
  while (true) {
    int n = epoll_wait(epoll_.get(), events, 8, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      switch (events[i].data.u64) {
        case kTagSignal:
          AMBIT_LOG(kComponent, Info) << "data plane stopping on signal";
          return absl::OkStatus();
        case kTagListen: {
          UniqueFd fd(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
          if (fd) {
            auto status = OnControllerConnected(std::move(fd));
            if (!status.ok()) {
              AMBIT_LOG(kComponent, Warning) << "agent session failed: " << status.message();
            }
          }
          break;
        }
        case kTagController: {
          auto status = OnControlMessage();
          if (!status.ok()) {
            AMBIT_LOG(kComponent, Info) << "agent session ended: " << status.message()
                                        << "; serving the last configuration";
            epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, controller_.get(), nullptr);
            controller_.Reset();
            OnControllerGone();
          }
          break;
        }
        case kTagStats: {
          UniqueFd fd(accept4(stats_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
          if (fd) ServeStats(std::move(fd));
          break;
        }
        case kTagWorkerReplies:
          worker_replies_.Drain();
          break;
        case kTagCertTimer: {
          uint64_t expirations;
          (void)!read(cert_timer_.get(), &expirations, sizeof expirations);
          break;
        }
      }
    }
    AfterEvent();
  }
}

absl::Status Tunnel::Send(const pb::Envelope& env, const std::vector<int>& fds) {
  std::string bytes;
  env.SerializeToString(&bytes);
  return SendPacket(controller_.get(), bytes, fds);
}

absl::Status Tunnel::OnControllerConnected(UniqueFd fd) {
  if (controller_) {
    AMBIT_LOG(kComponent, Info) << "a new agent connected; replacing the previous session";
    epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, controller_.get(), nullptr);
  }
  controller_ = std::move(fd);
  ++session_;
  AMBIT_RETURN_IF_ERROR(EpollAdd(epoll_.get(), controller_.get(), kTagController));
  pb::Envelope hello;
  hello.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
  hello.mutable_hello()->set_pid(getpid());
  hello.mutable_hello()->set_pod_count(pods_.size());
  hello.mutable_hello()->set_snapshot_version(snapshot_version_);
  hello.mutable_hello()->set_heartbeat(true);
  AMBIT_RETURN_IF_ERROR(Send(hello, {}));
  last_report_.clear();  // the new agent gets a full certificate report
  // Hand every pod back so a restarted agent adopts the live listeners instead of re-creating.
  for (const auto& [uid, pod] : pods_) {
    pb::Envelope env;
    env.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
    auto* p = env.mutable_add_pod();
    p->set_uid(pod->uid);
    p->set_namespace_(pod->namespace_name);
    p->set_name(pod->name);
    p->set_service_account(pod->service_account);
    p->set_netns_cookie(pod->netns_cookie);
    p->set_spiffe_id(pod->spiffe_id);
    for (const auto& ip : pod->ips) p->add_ips(ip.ToString());
    std::vector<int> fds;
    auto add = [&](const UniqueFd& fd, pb::FdRole role) {
      if (!fd) return;
      fds.push_back(fd.get());
      p->add_fds(role);
    };
    add(pod->netns, pb::FD_ROLE_NETNS);
    add(pod->outbound_v4, pb::FD_ROLE_OUTBOUND_V4);
    add(pod->outbound_v6, pb::FD_ROLE_OUTBOUND_V6);
    add(pod->plain_v4, pb::FD_ROLE_INBOUND_PLAIN_V4);
    add(pod->plain_v6, pb::FD_ROLE_INBOUND_PLAIN_V6);
    add(pod->hbone_v4, pb::FD_ROLE_HBONE_V4);
    add(pod->hbone_v6, pb::FD_ROLE_HBONE_V6);
    AMBIT_RETURN_IF_ERROR(Send(env, fds));
  }
  return absl::OkStatus();
}

absl::Status Tunnel::OnControlMessage() {
  AMBIT_ASSIGN_OR_RETURN(Packet packet, ReceivePacket(controller_.get()));
  AMBIT_ASSIGN_OR_RETURN(pb::Envelope env, DecodeAgentMessage(packet.data, packet.fds.size()));
  return HandleEnvelope(env, std::move(packet.fds));
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
      // Said to the asker too: a refused log level must not read as applied.
      pb::SetLogLevelResponse refused;
      refused.set_error(std::string(decoded.status().message()));
      (void)WriteFramed(client.get(), refused.SerializeAsString(), kStatsTimeout);
    }
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
  response.set_snapshot_version(snapshot_version_);
  response.set_failed_version(failed_version_);
  response.set_failed_reason(failed_reason_);
  if (request.metrics()) {
    auto* c = response.add_counters();
    c->set_name(std::string(metrics::kSnapshotsRejected.name));
    c->set_value(snapshots_rejected_);
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
  auto status = WriteFramed(client.get(), response.SerializeAsString(), kStatsTimeout);
  if (!status.ok()) {
    AMBIT_LOG(kComponent, Warning) << "stats answer: " << status.message();
  }
}

absl::Status Tunnel::StartWorkers(UniqueFd orig_dst_map, UniqueFd deliver_map) {
  orig_dst_map_ = std::move(orig_dst_map);
  deliver_map_ = std::move(deliver_map);
  auto settings = std::make_shared<DataPlaneSettings>();
  settings->clock = options_.clock;
  settings->socket_mark = options_.socket_mark;
  settings->delivery_mark = DeliveryMark(options_.socket_mark);
  settings->host_netns = host_netns_.get();
  settings->orig_dst_map = orig_dst_map_.get();
  settings->deliver_map = deliver_map_.get();
  settings->access_log_json = options_.access_log_json;
  settings->idle_timeout = options_.idle_timeout;
  settings->failed_stream_burst = options_.failed_stream_burst;
  settings->failed_stream_rate = options_.failed_stream_rate;
  settings_ = settings;
  for (int i = 0; i < options_.workers; ++i) {
    AMBIT_ASSIGN_OR_RETURN(auto w, Worker::Create(i, settings_));
    w->Start();
    workers_.push_back(std::move(w));
  }
  for (const auto& [uid, pod] : pods_) {
    if (!waiting_for_cert_.count(uid)) {
      for (auto& w : workers_) w->Post([pod = pod](Worker& worker) { worker.AddPod(pod); });
    }
  }
  for (auto& w : workers_)
    w->Post([snap = snapshot_](Worker& worker) { worker.SetSnapshot(snap); });
  for (auto& w : workers_) {
    w->Post([tls = tls_for_new_workers_](Worker& worker) { worker.SetTls(tls); });
  }
  if (!failed_reason_.empty()) {
    for (auto& w : workers_) {
      w->Post([reason = failed_reason_](Worker& worker) { worker.SetFailClosed(reason); });
    }
  }
  AMBIT_LOG(kComponent, Info) << "data plane started " << workers_.size() << " workers";
  return absl::OkStatus();
}

absl::Status Tunnel::HandleEnvelope(const pb::Envelope& env, std::vector<UniqueFd> fds) {
  switch (env.body_case()) {
    case pb::Envelope::kMaps: {
      if (!workers_.empty()) return absl::OkStatus();  // same pinned map as before
      UniqueFd orig_dst, deliver;
      for (int i = 0; i < env.maps().fds_size() && i < static_cast<int>(fds.size()); ++i) {
        if (env.maps().fds(i) == pb::FD_ROLE_ORIG_DST_MAP) orig_dst = std::move(fds[i]);
        if (env.maps().fds(i) == pb::FD_ROLE_DELIVER_MAP) deliver = std::move(fds[i]);
      }
      if (!orig_dst || !deliver) {
        return absl::InvalidArgumentError("maps message lacks ambit_orig_dst or ambit_deliver");
      }
      return StartWorkers(std::move(orig_dst), std::move(deliver));
    }
    case pb::Envelope::kAddPod: {
      const auto& p = env.add_pod();
      if (p.fds_size() != static_cast<int>(fds.size())) {
        return absl::InvalidArgumentError(absl::StrCat("add_pod ", p.uid(), " lists ", p.fds_size(),
                                                       " fds but carried ", fds.size()));
      }
      auto pod = std::make_shared<Pod>();
      pod->uid = p.uid();
      pod->namespace_name = p.namespace_();
      pod->name = p.name();
      pod->service_account = p.service_account();
      pod->spiffe_id = p.spiffe_id();
      pod->netns_cookie = p.netns_cookie();
      for (const auto& ip : p.ips()) {
        auto parsed = IpAddress::Parse(ip);
        if (parsed.ok()) pod->ips.push_back(*parsed);
      }
      for (int i = 0; i < p.fds_size(); ++i) {
        switch (p.fds(i)) {
          case pb::FD_ROLE_NETNS:
            pod->netns = std::move(fds[i]);
            break;
          case pb::FD_ROLE_OUTBOUND_V4:
            pod->outbound_v4 = std::move(fds[i]);
            break;
          case pb::FD_ROLE_OUTBOUND_V6:
            pod->outbound_v6 = std::move(fds[i]);
            break;
          case pb::FD_ROLE_INBOUND_PLAIN_V4:
            pod->plain_v4 = std::move(fds[i]);
            break;
          case pb::FD_ROLE_INBOUND_PLAIN_V6:
            pod->plain_v6 = std::move(fds[i]);
            break;
          case pb::FD_ROLE_HBONE_V4:
            pod->hbone_v4 = std::move(fds[i]);
            break;
          case pb::FD_ROLE_HBONE_V6:
            pod->hbone_v6 = std::move(fds[i]);
            break;
          default:
            break;
        }
      }
      if (!pod->netns || !pod->outbound_v4) {
        return absl::InvalidArgumentError(
            absl::StrCat("add_pod ", p.uid(), " lacks its netns or outbound listener"));
      }
      std::shared_ptr<const Pod> shared = pod;
      auto previous = pods_.find(shared->uid);
      if (previous == pods_.end() || previous->second->spiffe_id != shared->spiffe_id) {
        if (!shared->spiffe_id.empty()) certs_->AddRef(shared->spiffe_id);
        if (previous != pods_.end() && !previous->second->spiffe_id.empty()) {
          certs_->Release(previous->second->spiffe_id);
        }
      }
      pods_[shared->uid] = shared;
      // Accepting waits until the pod's certificate is valid (see ServePendingPods): until
      // then connections wait in the listeners' backlogs instead of failing closed.
      waiting_for_cert_[shared->uid] = options_.clock->Now();
      AMBIT_LOG(kComponent, Info) << "serving pod " << shared->uid
                                  << " netns_cookie=" << shared->netns_cookie;
      return absl::OkStatus();
    }
    case pb::Envelope::kRemovePod:
      return RemovePod(env.remove_pod().uid());
    case pb::Envelope::kPing:
      OnPing(env.ping().seq());
      return absl::OkStatus();
    case pb::Envelope::kSnapshot:
      return ApplySnapshot(env.snapshot().version(), MeshSnapshot::FromProto(env.snapshot()));
    case pb::Envelope::kSnapshotRef: {
      auto snapshot = ReadSnapshotFile(env.snapshot_ref(), fds, options_.max_snapshot_bytes);
      if (!snapshot.ok()) {
        return RefuseSnapshot(env.snapshot_ref().version(),
                              std::string(snapshot.status().message()));
      }
      return ApplySnapshot(env.snapshot_ref().version(),
                           MeshSnapshot::Create(*std::move(snapshot)));
    }
    case pb::Envelope::kSnapshotFailed: {
      const auto& f = env.snapshot_failed();
      FailClosed(f.version(), absl::StrCat("the agent could not deliver it: ", f.error()));
      return absl::OkStatus();
    }
    case pb::Envelope::kCsrResponse: {
      const auto& r = env.csr_response();
      if (!outstanding_csrs_.erase(r.request_id())) return absl::OkStatus();  // superseded
      if (!r.error().empty()) {
        certs_->OnSigned(r.request_id(), absl::UnavailableError(r.error()));
      } else {
        certs_->OnSigned(r.request_id(),
                         std::vector<std::string>(r.chain_pem().begin(), r.chain_pem().end()));
      }
      return absl::OkStatus();
    }
    case pb::Envelope::kTrustBundle: {
      trust_bundle_.assign(env.trust_bundle().root_pem().begin(),
                           env.trust_bundle().root_pem().end());
      AMBIT_LOG(kComponent, Info) << "trust bundle: " << trust_bundle_.size() << " root(s)";
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected control message ", static_cast<int>(env.body_case())));
  }
}

struct Tunnel::HeartbeatRound {
  uint64_t seq = 0;
  uint64_t session = 0;
  size_t remaining = 0;
  // Per worker that answered: the listeners it watches, by pod uid.
  std::vector<std::unordered_map<std::string, uint32_t>> watched;
};

void Tunnel::OnPing(uint64_t seq) {
  auto round = std::make_shared<HeartbeatRound>();
  round->seq = seq;
  round->session = session_;
  round->remaining = workers_.size();
  if (workers_.empty()) {  // nothing to ask yet (no maps from the agent)
    SendPong(*round);
    return;
  }
  // The workers' tasks run after whatever each worker had queued, so the answer also proves
  // their queues move. `this` outlives them: the destructor joins the workers first, and the
  // replies run only on this thread's loop.
  for (auto& w : workers_) {
    w->Post([this, round](Worker& worker) {
      worker_replies_.Post([this, round, watched = worker.WatchedListeners()]() mutable {
        round->watched.push_back(std::move(watched));
        if (--round->remaining == 0) SendPong(*round);
      });
    });
  }
}

void Tunnel::SendPong(const HeartbeatRound& round) {
  // A previous session's question: the agent that asked is gone.
  if (round.session != session_ || !controller_) return;
  pb::Envelope env;
  env.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
  auto* pong = env.mutable_pong();
  pong->set_seq(round.seq);
  pong->set_workers(static_cast<uint32_t>(round.watched.size()));
  for (const auto& [uid, pod] : pods_) {
    uint32_t held = 0, listening = 0;
    for (const UniqueFd* fd : {&pod->outbound_v4, &pod->outbound_v6, &pod->plain_v4, &pod->plain_v6,
                               &pod->hbone_v4, &pod->hbone_v6}) {
      if (!*fd) continue;
      ++held;
      // A listener someone shut down (or that failed) leaves the listening state: it holds a
      // descriptor but no longer takes connections.
      int accepting = 0;
      socklen_t len = sizeof accepting;
      if (getsockopt(fd->get(), SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) == 0 && accepting) {
        ++listening;
      }
    }
    uint32_t workers_accepting = 0;
    for (const auto& watched : round.watched) {
      auto it = watched.find(uid);
      if (it != watched.end() && it->second >= held) ++workers_accepting;
    }
    auto* p = pong->add_pods();
    p->set_uid(uid);
    p->set_listening(listening);
    p->set_workers_accepting(workers_accepting);
    p->set_waiting_for_certificate(waiting_for_cert_.count(uid) > 0);
  }
  auto status = Send(env, {});
  if (!status.ok()) {
    AMBIT_LOG(kComponent, Warning) << "heartbeat answer " << round.seq << ": " << status.message();
  }
}

absl::Status Tunnel::RemovePod(const std::string& uid) {
  waiting_for_cert_.erase(uid);
  std::shared_ptr<const Pod> pod;
  auto it = pods_.find(uid);
  if (it != pods_.end()) {
    pod = std::move(it->second);
    if (!pod->spiffe_id.empty()) certs_->Release(pod->spiffe_id);
    pods_.erase(it);
  }
  // Every worker drops the pod and says so once what it held is freed. The agent may bind the
  // same ports in the pod's netns as soon as it reads the answer, so the answer waits (bounded,
  // like a stats request) for all of them.
  std::vector<std::future<void>> dropped;
  for (auto& w : workers_) {
    auto promise = std::make_shared<std::promise<void>>();
    dropped.push_back(promise->get_future());
    w->Post([uid, promise](Worker& worker) {
      worker.RemovePod(uid, [promise] { promise->set_value(); });
    });
  }
  auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(kRemoveTimeout);
  for (size_t i = 0; i < dropped.size(); ++i) {
    if (dropped[i].wait_until(deadline) != std::future_status::ready) {
      AMBIT_LOG(kComponent, Warning)
          << "remove pod " << uid << ": worker " << i << " did not answer within " << kRemoveTimeout
          << "; its listeners are shut down regardless";
      break;
    }
  }
  if (pod != nullptr) {
    // A listening socket that is shut down leaves the listening hash at once, whoever still
    // holds a descriptor of it, so the agent's new bind (SO_REUSEADDR) of the same port
    // succeeds even if a reference outlived the wait above. Connections still queued in its
    // backlog are reset; they were for a pod that is gone.
    for (const UniqueFd* fd : {&pod->outbound_v4, &pod->outbound_v6, &pod->plain_v4, &pod->plain_v6,
                               &pod->hbone_v4, &pod->hbone_v6}) {
      if (*fd) shutdown(fd->get(), SHUT_RDWR);
    }
    pod.reset();
  }
  AMBIT_LOG(kComponent, Info) << "stopped serving pod " << uid;
  pb::Envelope removed;
  removed.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
  removed.mutable_pod_removed()->set_uid(uid);
  return Send(removed, {});
}

absl::Status Tunnel::ApplySnapshot(uint64_t version,
                                   absl::StatusOr<std::shared_ptr<const MeshSnapshot>> mapped) {
  if (!mapped.ok()) {
    // Half a configuration is no configuration: a workload whose mTLS mode or identity cannot
    // be read would otherwise be served by a guess.
    return RefuseSnapshot(version, std::string(mapped.status().message()));
  }
  snapshot_version_ = version;
  snapshot_ = *std::move(mapped);
  for (const auto& error : snapshot_->authz_errors()) {
    AMBIT_LOG(kComponent, Error) << "snapshot " << snapshot_version_ << ": " << error;
  }
  for (auto& w : workers_) {
    w->Post([snap = snapshot_](Worker& worker) { worker.SetSnapshot(snap); });
  }
  if (failed_version_ != 0 && failed_version_ <= snapshot_version_) {
    AMBIT_LOG(kComponent, Warning) << "configuration generation " << snapshot_version_
                                   << " applied; accepting new connections again";
    failed_version_ = 0;
    failed_reason_.clear();
    for (auto& w : workers_) w->Post([](Worker& worker) { worker.SetFailClosed(""); });
  }
  pb::Envelope ack;
  ack.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
  ack.mutable_ack()->set_version(snapshot_version_);
  // The workers free the previous snapshot once they have switched; what it and the decoding
  // left in glibc's arenas goes back to the kernel here (this runs once per configuration).
  malloc_trim(0);
  return Send(ack, {});
}

absl::Status Tunnel::RefuseSnapshot(uint64_t version, const std::string& error) {
  ++snapshots_rejected_;
  FailClosed(version, error);
  pb::Envelope nack;
  nack.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
  nack.mutable_nack()->set_version(version);
  nack.mutable_nack()->set_error(error);
  return Send(nack, {});
}

void Tunnel::FailClosed(uint64_t version, const std::string& why) {
  if (version <= snapshot_version_) return;  // a later generation is already in force
  failed_version_ = version;
  failed_reason_ = absl::StrCat("configuration generation ", version, " could not be applied (",
                                why, "); generation ", snapshot_version_,
                                " is stale, so new connections are refused");
  AMBIT_LOG(kComponent, Error) << "FAIL CLOSED: " << failed_reason_;
  for (auto& w : workers_) {
    w->Post([reason = failed_reason_](Worker& worker) { worker.SetFailClosed(reason); });
  }
}

void Tunnel::RequestSigning(uint64_t request_id, const std::string& identity,
                            const std::string& csr_pem) {
  if (!controller_) {
    failed_csrs_.emplace_back(request_id,
                              absl::UnavailableError("no agent connected to sign the CSR"));
    return;
  }
  pb::Envelope env;
  env.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
  auto* r = env.mutable_csr_request();
  r->set_request_id(request_id);
  r->set_identity(identity);
  r->set_csr_pem(csr_pem);
  auto status = Send(env, {});
  if (!status.ok()) {
    failed_csrs_.emplace_back(request_id, status);
    return;
  }
  outstanding_csrs_.insert(request_id);
}

void Tunnel::OnControllerGone() {
  // Answers to these can no longer arrive; let the certificate manager retry with back-off.
  for (uint64_t id : outstanding_csrs_) {
    failed_csrs_.emplace_back(id, absl::UnavailableError("agent went away before answering"));
  }
  outstanding_csrs_.clear();
}

void Tunnel::UpdateTlsContexts() {
  std::string signature =
      absl::StrCat(snapshot_->trust_domain().size(), ":", snapshot_->trust_domain(), "|",
                   TrustBundleKey(trust_bundle_), "|");
  auto statuses = certs_->Statuses();
  for (const auto& c : statuses) {
    absl::StrAppend(&signature, c.identity, "=", c.serial_hex, "/", tls::CertStateName(c.state),
                    ";");
  }
  if (signature == tls_signature_) return;
  tls_signature_ = signature;

  auto contexts = std::make_shared<TlsContexts>();
  bssl::UniquePtr<X509_STORE> store;
  std::string store_error = "no trust bundle from the agent yet";
  if (!trust_bundle_.empty()) {
    auto bundle = tls::TrustBundle::Create(trust_bundle_);
    if (bundle.ok()) {
      auto s = (*bundle)->NewStore();
      if (s.ok())
        store = std::move(*s);
      else
        store_error = std::string(s.status().message());
    } else {
      store_error = std::string(bundle.status().message());
    }
  }
  std::string trust_domain =
      snapshot_->trust_domain().empty() ? "cluster.local" : snapshot_->trust_domain();
  for (const auto& c : statuses) {
    auto key = certs_->Get(c.identity);
    if (key == nullptr) {
      contexts->SetMissing(
          c.identity,
          c.state == tls::CertState::kExpired ? DrainReason::kExpired : DrainReason::kNoCertificate,
          absl::StrCat("certificate ", tls::CertStateName(c.state),
                       c.last_error.empty() ? "" : ": " + c.last_error));
      continue;
    }
    if (!store) {
      contexts->SetMissing(c.identity, DrainReason::kNotTrusted, store_error);
      continue;
    }
    auto client = hbone::MakeClientContext(*key, store.get(), trust_domain);
    auto server = hbone::MakeServerContext(*key, store.get(), trust_domain);
    if (!client.ok() || !server.ok()) {
      // An identity outside the configured trust domain is the common case (the trust domain
      // changed); sessions established with it must learn that, not just "no certificate".
      auto id = identity::ParseSpiffeId(c.identity);
      DrainReason reason = id.ok() && id->trust_domain != trust_domain
                               ? DrainReason::kOutOfTrustDomain
                               : DrainReason::kNoCertificate;
      contexts->SetMissing(
          c.identity, reason,
          std::string((!client.ok() ? client.status() : server.status()).message()));
      AMBIT_LOG(kComponent, Error)
          << "TLS context for " << c.identity << ": " << contexts->missing[c.identity];
      continue;
    }
    contexts->by_identity[c.identity] = {std::move(*client), std::move(*server)};
  }
  std::shared_ptr<const TlsContexts> shared = std::move(contexts);
  for (auto& w : workers_) w->Post([shared](Worker& worker) { worker.SetTls(shared); });
  tls_for_new_workers_ = shared;
}

void Tunnel::ServePendingPods() {
  // Nothing is served before the configuration: without it every policy would read as "none
  // configured" and plaintext to a STRICT pod would be delivered (fail open).
  if (workers_.empty() || snapshot_version_ == 0) return;
  for (auto it = waiting_for_cert_.begin(); it != waiting_for_cert_.end();) {
    auto pod = pods_.find(it->first);
    if (pod == pods_.end()) {
      it = waiting_for_cert_.erase(it);
      continue;
    }
    const auto& p = pod->second;
    // The snapshot must know the pod as one of this node's: its policies (mTLS mode included)
    // are looked up by its address.
    const mesh::Workload* w = p->ips.empty() ? nullptr : snapshot_->WorkloadByIp(p->ips.front());
    bool known = p->ips.empty() || (w != nullptr && w->mtls.has_value());
    if (!known) {
      ++it;
      continue;
    }
    bool ready = p->spiffe_id.empty() || certs_->Get(p->spiffe_id) != nullptr;
    // Past the grace period the pod is served anyway: passthrough traffic must not wait on a
    // CA that is down, and mTLS connections then fail closed with the reason logged.
    bool overdue = CertGraceOver(it->second, options_.clock->Now());
    if (!ready && !overdue) {
      ++it;
      continue;
    }
    if (!ready) {
      AMBIT_LOG(kComponent, Warning)
          << "pod " << p->uid << " still has no certificate for " << p->spiffe_id << " after "
          << kCertGrace << "; serving it (mTLS connections are refused)";
    }
    for (auto& w : workers_) w->Post([shared = p](Worker& worker) { worker.AddPod(shared); });
    it = waiting_for_cert_.erase(it);
  }
}

void Tunnel::AfterEvent() {
  while (!failed_csrs_.empty()) {
    auto failed = std::move(failed_csrs_);
    failed_csrs_.clear();
    for (auto& [id, status] : failed) certs_->OnSigned(id, status);
  }
  certs_->Tick();
  UpdateTlsContexts();
  ServePendingPods();
  // The timer is armed for the next deadline; Tick above ran whatever was due.
  absl::Time next = certs_->NextDeadline();
  for (const auto& [uid, since] : waiting_for_cert_) next = std::min(next, since + kCertGrace);
  itimerspec its{};
  if (next != absl::InfiniteFuture()) {
    absl::Duration in = std::max(next - options_.clock->Now(), absl::Milliseconds(1));
    its.it_value.tv_sec = absl::ToInt64Seconds(in);
    its.it_value.tv_nsec = absl::ToInt64Nanoseconds(in - absl::Seconds(its.it_value.tv_sec));
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
  }
  timerfd_settime(cert_timer_.get(), 0, &its, nullptr);

  if (!controller_) return;
  pb::Envelope report;
  report.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
  for (const auto& c : certs_->Statuses()) {
    auto* s = report.mutable_certificate_report()->add_certificates();
    s->set_identity(c.identity);
    s->set_state(tls::CertStateName(c.state));
    s->set_serial_hex(c.serial_hex);
    s->set_issuer(c.issuer);
    s->set_last_error(c.last_error);
    s->set_refs(c.refs);
    if (c.not_before != absl::InfinitePast())
      s->set_not_before_unix(absl::ToUnixSeconds(c.not_before));
    if (c.not_after != absl::InfinitePast())
      s->set_not_after_unix(absl::ToUnixSeconds(c.not_after));
  }
  report.mutable_certificate_report();  // an empty report is still a report
  std::string bytes;
  report.SerializeToString(&bytes);
  if (bytes == last_report_) return;
  last_report_ = bytes;
  (void)Send(report, {});
}

}  // namespace ambit::tunnel
