#include "agent/tunnel/worker.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/common/log.h"
#include "agent/common/metrics.h"
#include "agent/tunnel/connection.h"
#include "agent/tunnel/hbone_pool.h"
#include "agent/tunnel/l7_hook.h"
#include "agent/tunnel/session_drain.h"
#include "agent/tunnel/tls_contexts.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::tunnel {
namespace {
constexpr const char* kComponent = "tunnel";
constexpr const char* kAccessLog = "access";
}  // namespace

const char* ListenerKindName(ListenerKind kind) {
  switch (kind) {
    case ListenerKind::kOutbound:
      return "outbound";
    case ListenerKind::kInboundPlain:
      return "inbound-plaintext";
    case ListenerKind::kHbone:
      return "hbone";
  }
  return "?";
}

// A pod listener as seen by one worker. Every worker watches every listener with EPOLLEXCLUSIVE,
// so one wakes per burst of SYNs and a connection stays on the worker that accepted it.
class Worker::ListenerHandler : public EventHandler {
 public:
  ListenerHandler(Worker& worker, std::shared_ptr<const Pod> pod, ListenerKind kind, int fd)
      : worker_(worker), pod_(std::move(pod)), kind_(kind), fd_(fd) {}
  int fd() const { return fd_; }
  void OnEvents(uint32_t) override { AcceptUpTo(64); }
  // Bounded so one busy listener cannot starve the worker's connections.
  void AcceptUpTo(int limit) {
    for (int i = 0; i < limit; ++i) {
      int c = accept4(fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (c < 0) {
        if (errno != EAGAIN && errno != ECONNABORTED && errno != EINTR) {
          AMBIT_LOG(kComponent, Warning) << "accept on " << ListenerKindName(kind_)
                                         << " listener of " << pod_->uid << ": " << strerror(errno);
        }
        return;
      }
      // Relayed bytes go out as they arrive: Nagle on a relay hop only adds a round trip's wait
      // to every small write (and, with delayed ACKs on the other side, tens of milliseconds).
      int one = 1;
      setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      HandleAccepted(worker_, pod_, kind_, UniqueFd(c));
    }
  }

 private:
  Worker& worker_;
  std::shared_ptr<const Pod> pod_;  // keeps the listener fds open while watched
  ListenerKind kind_;
  int fd_;
};

// Runs posted tasks when the task queue's eventfd fires.
class Worker::TaskHandler : public EventHandler {
 public:
  explicit TaskHandler(TaskQueue& tasks) : tasks_(tasks) {}
  void OnEvents(uint32_t) override { tasks_.Drain(); }

 private:
  TaskQueue& tasks_;
};

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(
    int index, std::shared_ptr<const DataPlaneSettings> settings) {
  auto loop = EpollLoop::Create();
  if (!loop.ok()) return loop.status();
  auto worker = std::unique_ptr<Worker>(new Worker(index, std::move(settings), std::move(*loop)));
  worker->task_handler_ = std::make_unique<TaskHandler>(worker->tasks_);
  auto status = worker->loop_->Watch(worker->tasks_.fd(), EPOLLIN, worker->task_handler_.get());
  if (!status.ok()) return status;
  return worker;
}

Worker::Worker(int index, std::shared_ptr<const DataPlaneSettings> settings,
               std::unique_ptr<EpollLoop> loop)
    : index_(index), settings_(std::move(settings)), loop_(std::move(loop)) {
  hbone::SessionOptions options;
  options.stats = &hbone_stats_;
  options.clock = settings_->clock;
  pool_ = std::make_unique<HbonePool>(*this, options, settings_->max_streams_per_connection,
                                      settings_->idle_timeout);
  options.stream_open_burst = settings_->failed_stream_burst;
  options.stream_open_rate = settings_->failed_stream_rate;
  inbound_ = std::make_unique<InboundSessions>(*this, options);
}

Worker::~Worker() {
  Stop();
  Join();
  // Flows first: they reference sessions the pool and inbound set own.
  connections_.clear();
  listeners_.clear();
  if (settings_ != nullptr && settings_->l7 != nullptr) settings_->l7->OnWorkerStopped(*this);
}

void Worker::Start() {
  thread_ = std::thread([this] { loop_->Run(); });
  // Named, so that top -H, gdb and a stuck-thread report can tell workers apart.
  pthread_setname_np(thread_.native_handle(), absl::StrCat("worker-", index_).c_str());
}

void Worker::Stop() { loop_->Stop(); }

void Worker::Join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::Post(std::function<void(Worker&)> fn) {
  tasks_.Post([this, fn = std::move(fn)] { fn(*this); });
}

std::unordered_map<std::string, uint32_t> Worker::WatchedListeners() const {
  std::unordered_map<std::string, uint32_t> out;
  for (const auto& [uid, list] : listeners_) out[uid] = static_cast<uint32_t>(list.size());
  return out;
}

void Worker::AddPod(std::shared_ptr<const Pod> pod) {
  // A draining process accepts nothing new: its successor serves the pod.
  if (draining_) return;
  DropListeners(pod->uid);
  auto& list = listeners_[pod->uid];
  auto add = [&](const UniqueFd& fd, ListenerKind kind) {
    if (!fd) return;
    auto handler = std::make_unique<ListenerHandler>(*this, pod, kind, fd.get());
    auto status = Watch(fd.get(), EPOLLIN | EPOLLEXCLUSIVE, handler.get());
    if (!status.ok()) {
      AMBIT_LOG(kComponent, Error) << "worker " << index_ << ": watch " << ListenerKindName(kind)
                                   << " listener of " << pod->uid << ": " << status.message();
      return;
    }
    list.push_back(std::move(handler));
  };
  add(pod->outbound_v4, ListenerKind::kOutbound);
  add(pod->outbound_v6, ListenerKind::kOutbound);
  add(pod->plain_v4, ListenerKind::kInboundPlain);
  add(pod->plain_v6, ListenerKind::kInboundPlain);
  add(pod->hbone_v4, ListenerKind::kHbone);
  add(pod->hbone_v6, ListenerKind::kHbone);
}

void Worker::RemovePod(const std::string& uid, std::function<void()> done) {
  DropListeners(uid);
  // Live connections hold sessions (and inbound sessions hold the pod): end them first, so the
  // sessions below are no longer in use when they close.
  std::vector<Flow*> live;
  for (const auto& [raw, flow] : connections_) {
    if (!flow->retired_ && flow->record_.pod == uid) live.push_back(raw);
  }
  for (Flow* f : live) {
    std::string reason = absl::StrCat("pod ", uid, " removed");
    f->SetEnd("-", reason);
    f->Reset(reason);
  }
  plaintext_clients_.ForgetPod(uid);
  size_t pooled = pool_->DropPod(uid);
  size_t inbound = inbound_->DropPod(uid);
  if (!live.empty() || pooled > 0 || inbound > 0) {
    AMBIT_LOG(kComponent, Info) << "worker " << index_ << ": pod " << uid << " removed: reset "
                                << live.size() << " connection(s), closed " << pooled
                                << " pooled and " << inbound << " inbound HBONE connection(s)";
  }
  if (!done) return;
  // What was released above is freed by deferred calls of this batch; deferred calls queued by
  // those run in the next pass, so `done` goes one pass later still.
  loop_->Defer([this, done = std::move(done)]() mutable { loop_->Defer(std::move(done)); });
}

size_t Worker::session_count() const { return pool_->sessions() + inbound_->sessions(); }

void Worker::Drain() {
  if (draining_) return;
  draining_ = true;
  // Every worker of every process watching a listener waits on it with EPOLLEXCLUSIVE: a wake-up
  // for a connection already queued may have gone to this worker alone. Taking what is queued
  // before unwatching means no connection waits for a later SYN to wake the successor; from the
  // unwatch on, only the successor's workers are woken. What is taken here is served to its
  // end like any live connection. Bounded: a flood is the successor's to take.
  size_t listeners = 0;
  for (auto& [uid, list] : listeners_) {
    for (auto& l : list) {
      l->AcceptUpTo(1024);
      ++listeners;
    }
  }
  std::vector<std::string> uids;
  for (const auto& [uid, list] : listeners_) uids.push_back(uid);
  // Unwatched only: the descriptors stay open until the last flow of the pod lets go of it
  // (closing them then is harmless), and they are never shut down, which would stop them for
  // the successor too.
  for (const auto& uid : uids) DropListeners(uid);
  DrainSessions(DrainReason::kUpgrade, "the data plane drains for its successor");
  AMBIT_LOG(kComponent, Info) << "worker " << index_ << ": draining: stopped accepting on "
                              << listeners << " listener(s); " << connections_.size()
                              << " live connection(s) run on";
}

void Worker::DrainSessions(DrainReason reason, const std::string& detail) {
  std::vector<SessionEntry> sessions = pool_->Sessions();
  for (auto& e : inbound_->Sessions()) sessions.push_back(std::move(e));
  for (const SessionEntry& e : sessions) {
    hbone::HboneSession& s = *e.session;
    if (s.closed() || s.shutting_down()) continue;
    ++drained_[reason];
    AMBIT_LOG(kComponent, Info) << "HBONE " << e.description << ": draining ("
                                << DrainReasonName(reason) << "): " << detail << "; "
                                << s.active_streams() << " open stream(s) finish";
    s.Shutdown();
  }
}

void Worker::DropListeners(const std::string& uid) {
  auto it = listeners_.find(uid);
  if (it == listeners_.end()) return;
  for (auto& l : it->second) {
    Unwatch(l->fd());
    // Events of this batch may still name the handler: free it after the batch.
    loop_->Defer([handler = std::shared_ptr<ListenerHandler>(std::move(l))] {});
  }
  listeners_.erase(it);
}

void Worker::SetSnapshot(std::shared_ptr<const MeshSnapshot> snapshot) {
  snapshot_ = std::move(snapshot);
  metrics_.Prune(snapshot_->workloads());
  std::vector<Flow*> live;
  for (const auto& [raw, flow] : connections_) live.push_back(raw);
  for (Flow* f : live) {
    if (f->retired_ || !f->recheck_) continue;
    absl::Status status = f->recheck_(*snapshot_);
    if (status.ok()) continue;
    std::string reason = absl::StrCat("closed after a policy change: ", status.message());
    AMBIT_LOG(kComponent, Warning) << f->description() << ": " << reason;
    counters_.closed_by_policy++;
    f->SetEnd("DENY", reason, true);
    f->Reset(reason);
  }
}

void Worker::SetTls(std::shared_ptr<const TlsContexts> tls) {
  tls_ = std::move(tls);
  CheckSessionCredentials(/*recheck_peers=*/true);
}

void Worker::CheckSessionCredentials(bool recheck_peers) {
  const absl::Time now = Now();
  // Draining may close a session at once (and so change the maps being walked): collect first.
  std::vector<SessionEntry> sessions = pool_->Sessions();
  for (auto& e : inbound_->Sessions()) sessions.push_back(std::move(e));
  // The context part of the decision is the same for every session of one context, and may
  // verify a chain: decided once per context.
  std::map<const hbone::TlsContext*, DrainDecision> by_context;
  // The peer check, once per context now in force and chain the peer sent (peer certificates
  // are shared through one CRYPTO_BUFFER pool, so equal chains are equal pointers).
  std::map<std::pair<const hbone::TlsContext*, std::vector<const CRYPTO_BUFFER*>>,
           std::pair<absl::Status, bool>>
      by_peer;
  absl::Time next = absl::InfiniteFuture();
  for (const SessionEntry& e : sessions) {
    hbone::HboneSession& s = *e.session;
    if (s.closed()) continue;
    const hbone::TlsContext& local = s.tls_context();
    // A peer no longer trusted (revoked by a CRL since the handshake, its root or trust domain
    // gone from the bundle) is cut off at once, also while the session drains: the peer decides
    // what it sends, so only this side can enforce the revocation on a session it keeps open.
    if (const hbone::TlsContext* now_ctx =
            recheck_peers ? ReplacementContext(local, tls_.get()) : nullptr;
        now_ctx != nullptr && s.established() && s.ssl() != nullptr &&
        now < s.peer_not_after()) {  // an expired peer drains gracefully below
      std::vector<const CRYPTO_BUFFER*> chain;
      if (const STACK_OF(CRYPTO_BUFFER)* sent = SSL_get0_peer_certificates(s.ssl())) {
        for (size_t i = 0; i < sk_CRYPTO_BUFFER_num(sent); ++i) {
          chain.push_back(sk_CRYPTO_BUFFER_value(sent, i));
        }
      }
      auto key = std::make_pair(now_ctx, std::move(chain));
      auto it = by_peer.find(key);
      if (it == by_peer.end()) {
        bool revoked = false;
        absl::Status accepted = now_ctx->AcceptsPeerOf(s.ssl(), now, &revoked);
        it = by_peer.emplace(std::move(key), std::make_pair(std::move(accepted), revoked)).first;
      }
      const auto& [accepted, revoked] = it->second;
      if (!accepted.ok()) {
        ++drained_[DrainReason::kPeerNotTrusted];
        AMBIT_LOG(kComponent, Warning)
            << "HBONE " << e.description << ": closed ("
            << DrainReasonName(DrainReason::kPeerNotTrusted) << "): " << accepted.message() << "; "
            << s.active_streams() << " open stream(s) reset";
        s.Abort(absl::PermissionDeniedError(
            absl::StrCat(revoked ? "peer certificate revoked since the handshake: "
                                 : "peer no longer trusted since the handshake: ",
                         accepted.message())));
        continue;
      }
    }
    // Already ending (idle, removed pod, or the peer's GOAWAY): nothing new goes to it.
    if (s.shutting_down() || s.goaway_received()) continue;
    DrainDecision decision = DecideDrain(local, s.peer_not_after(), nullptr, now);
    if (!decision.drain()) {
      auto it = by_context.find(&local);
      if (it == by_context.end()) {
        it = by_context.emplace(&local, DecideContextDrain(local, tls_.get(), now)).first;
      }
      decision = it->second;
    }
    if (!decision.drain()) {
      if (s.established())
        next = std::min(next, CredentialDeadline(local, s.peer_not_after()));
      else
        next = std::min(next, local.not_after());
      continue;
    }
    ++drained_[decision.reason];
    AMBIT_LOG(kComponent, Warning)
        << "HBONE " << e.description << ": draining (" << DrainReasonName(decision.reason)
        << "): " << decision.detail << "; " << s.active_streams()
        << " open stream(s) finish, new streams are refused";
    s.Shutdown(hbone::HboneSession::GoAway::kNow);
  }
  if (next == absl::InfiniteFuture() || next >= expiry_timer_at_) return;
  expiry_timer_at_ = next;
  // A timer per earlier deadline: rare (a new session whose certificate expires first), and one
  // that fires finds expiry_timer_at_ moved on and only re-checks.
  loop_->RunAfter(std::max(next - now, absl::Milliseconds(1)), [this, next] {
    if (expiry_timer_at_ == next) expiry_timer_at_ = absl::InfiniteFuture();
    CheckSessionCredentials();
  });
}

void Worker::WatchSessionExpiry(const hbone::HboneSession& session) {
  absl::Time deadline = CredentialDeadline(session.tls_context(), session.peer_not_after());
  // A handshake that began before new contexts arrived finished under the old ones (a CRL it
  // did not yet know): its peer is checked against the new ones like every older session's.
  if (ReplacementContext(session.tls_context(), tls_.get()) != nullptr) recheck_peers_ = true;
  if ((deadline >= expiry_timer_at_ && !recheck_peers_) || check_deferred_) return;
  // Deferred: draining from inside the session's own OnEstablished would re-enter it. One check
  // covers every session established in this batch.
  check_deferred_ = true;
  loop_->Defer([this] {
    check_deferred_ = false;
    const bool recheck = recheck_peers_;
    recheck_peers_ = false;
    CheckSessionCredentials(recheck);
  });
}

void Worker::Retire(Flow* flow) {
  if (flow->retired_) return;
  flow->retired_ = true;
  FlowEnd end = flow->end_;
  flow->Bytes(&end.bytes_from_client, &end.bytes_to_client);
  metrics_.Closed(flow->record_, end);
  // AMBIT_LOG builds the line only when the access log is on.
  AMBIT_LOG(kAccessLog, Info) << AccessLogLine(flow->record_, end, Now(),
                                               settings_->access_log_format);
  loop_->Defer([this, flow] { connections_.erase(flow); });
}

void Worker::NameInboundService(FlowRecord& record) const {
  if (!snapshot_) return;
  record.cluster = snapshot_->cluster_id();
  // Inbound, only the pod address is known: the service is guessed from the port, as ztunnel
  // does for its destination_service label.
  if (record.direction != FlowDirection::kInbound || !record.destination.service.empty() ||
      !record.destination.address) {
    return;
  }
  const mesh::Workload* w = snapshot_->WorkloadByIp(record.destination.address->ip);
  if (w == nullptr) return;
  if (const ServiceInfo* svc = snapshot_->InboundService(*w, record.destination.address->port)) {
    record.destination.service = absl::StrCat(svc->namespace_name, "/", svc->name);
  }
}

void Worker::Adopt(std::unique_ptr<Flow> flow) {
  Flow* raw = flow.get();
  // Ids are unique in the process: the worker's index in the top bits.
  raw->record_.id = (static_cast<uint64_t>(index_) << 48) | next_flow_++;
  raw->record_.start = Now();
  NameInboundService(raw->record_);
  metrics_.Opened(raw->record_);
  connections_.emplace(raw, std::move(flow));
}

void Worker::Refuse(FlowRecord record, FlowEnd end) {
  record.start = Now();
  NameInboundService(record);
  metrics_.Refused(record, end);
  AMBIT_LOG(kAccessLog, Info) << AccessLogLine(record, end, record.start,
                                               settings_->access_log_format);
}

void Worker::CollectStats(bool connections, bool metrics,
                          ambit::dataplane::v1::StatsResponse* out) {
  std::vector<FlowMetrics::Live> live;
  live.reserve(connections_.size());
  for (const auto& [raw, flow] : connections_) {
    if (flow->retired_) continue;  // already counted as closed
    FlowMetrics::Live l{&flow->record_, 0, 0};
    flow->Bytes(&l.from_client, &l.to_client);
    live.push_back(l);
    if (connections) ToProto(flow->record_, l.from_client, l.to_client, index_, out->add_flows());
  }
  if (!metrics) return;
  metrics_.AppendTo(live, out);
  auto counter = [&](const metrics::Metric& metric,
                     std::initializer_list<std::pair<const char*, const char*>> labels,
                     uint64_t value) {
    auto* c = out->add_counters();
    c->set_name(std::string(metric.name));
    for (const auto& [k, v] : labels) {
      auto* l = c->add_labels();
      l->set_name(k);
      l->set_value(v);
    }
    c->set_value(value);
  };
  const hbone::HboneStats& h = hbone_stats_;
  counter(metrics::kHboneHandshakes, {{"result", "ok"}}, h.sessions_established);
  const std::pair<const char*, uint64_t> failures[] = {
      {"tls_error", h.tls_failures},           {"no_client_certificate", h.no_client_cert},
      {"untrusted_peer", h.untrusted_peer},    {"identity_mismatch", h.identity_mismatch},
      {"certificate_revoked", h.revoked_peer}, {"no_alpn_h2", h.no_alpn},
      {"cipher_not_allowed", h.bad_cipher},
  };
  for (const auto& [reason, n] : failures) {
    counter(metrics::kHboneHandshakeFailures, {{"reason", reason}}, n);
  }
  const std::pair<const char*, uint64_t> errors[] = {
      {"protocol_error", h.protocol_errors},
      {"stream_error", h.stream_errors},
      {"flood", h.floods},
      {"refused_stream", h.refused_streams},
      {"oversized_headers", h.oversized_headers},
      {"bad_request", h.bad_requests},
      {"stream_rate_limited", h.stream_rate_limited},
  };
  for (const auto& [reason, n] : errors) {
    counter(metrics::kHboneErrors, {{"reason", reason}}, n);
  }
  counter(metrics::kHboneStreamsOpened, {}, h.streams_opened);
  for (DrainReason reason :
       {DrainReason::kExpired, DrainReason::kPeerExpired, DrainReason::kOutOfTrustDomain,
        DrainReason::kNotTrusted, DrainReason::kRemoved, DrainReason::kNoCertificate,
        DrainReason::kUpgrade, DrainReason::kPeerNotTrusted}) {
    auto it = drained_.find(reason);
    counter(metrics::kHboneSessionsDrained, {{"reason", DrainReasonName(reason)}},
            it == drained_.end() ? 0 : it->second);
  }
  counter(metrics::kPlaintextRefused, {}, counters_.plaintext_refused);
  counter(metrics::kKubeletProbes, {}, counters_.kubelet_probes);
  counter(metrics::kNatOriginalDst, {{"direction", "inbound"}}, counters_.nat_original_dst_inbound);
  counter(metrics::kNatOriginalDst, {{"direction", "outbound"}},
          counters_.nat_original_dst_outbound);
  counter(metrics::kClosedByPolicy, {}, counters_.closed_by_policy);
  counter(metrics::kConnectionsRefused, {{"reason", "configuration_not_applied"}},
          counters_.refused_fail_closed);
  counter(metrics::kHboneConnectRetries, {}, counters_.connect_retries);
}

}  // namespace ambit::tunnel
