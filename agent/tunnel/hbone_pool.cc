#include "agent/tunnel/hbone_pool.h"

#include <sys/socket.h>

#include "absl/strings/str_cat.h"
#include "agent/common/formats.h"
#include "agent/common/log.h"
#include "agent/common/socket_util.h"
#include "agent/tunnel/connection.h"
#include "agent/tunnel/l7_hook.h"
#include "agent/tunnel/tunnel_stream.h"
#include "agent/tunnel/worker.h"

namespace ambit::tunnel {
namespace {
constexpr const char* kComponent = "tunnel";

}  // namespace

HbonePool::~HbonePool() = default;

absl::StatusOr<std::shared_ptr<hbone::HboneSession>> HbonePool::Get(
    const Pod& src, const std::shared_ptr<const hbone::TlsContext>& client_ctx,
    const std::string& dst_identity, const SocketAddress& dst) {
  // Per source pod: the connection is opened from that pod's netns, so the server sees (and
  // authorizes and delivers from) that pod's address.
  // Fail closed between the expiry and the main thread's next contexts: a handshake with an
  // expired certificate would only be refused by the peer.
  if (worker_.Now() >= client_ctx->not_after()) {
    return absl::UnavailableError(absl::StrCat("the certificate of ", client_ctx->identity(),
                                               " expired at ",
                                               FormatTimestamp(client_ctx->not_after())));
  }
  Key key{src.uid, dst_identity, dst};
  auto& list = pools_[key];
  const absl::Time now = worker_.Now();
  for (const auto& s : list) {
    // A renewed certificate means a new context: new streams go to a session that presents it.
    if (&s->tls_context() != client_ctx.get() || !s->can_open_stream() ||
        s->active_streams() >= max_streams_) {
      continue;
    }
    // Past the idle limit the session is as good as closed (its timer may not have run yet, and
    // the peer may be closing it too): a stream put on it now could be cut at once.
    auto idle = idle_.find(s.get());
    if (s->active_streams() == 0 && idle != idle_.end() &&
        IdleRemaining(idle->second.since, now, idle_timeout_) <= absl::ZeroDuration()) {
      continue;
    }
    return s;
  }
  auto up = ConnectFromPod(worker_, src, dst, nullptr);
  if (!up.ok()) return up.status();
  auto session = hbone::HboneSession::CreateClient(&worker_.loop(), std::move(up->fd), client_ctx,
                                                   dst_identity, this, options_);
  if (!session.ok()) return session.status();
  keys_[session->get()] = key;
  list.push_back(*session);
  AMBIT_LOG(kComponent, Debug) << "new HBONE connection " << client_ctx->identity() << " -> "
                               << dst_identity << " at " << dst.ToString();
  return *session;
}

std::vector<SessionEntry> HbonePool::Sessions() const {
  std::vector<SessionEntry> out;
  out.reserve(keys_.size());
  for (const auto& [key, list] : pools_) {
    for (const auto& s : list) {
      out.push_back(
          {s, absl::StrCat("outbound pod=", std::get<0>(key), " ", s->tls_context().identity(),
                           " -> ", std::get<1>(key), " at ", std::get<2>(key).ToString())});
    }
  }
  return out;
}

void HbonePool::OnEstablished(hbone::HboneSession& session) { worker_.WatchSessionExpiry(session); }

size_t HbonePool::DropPod(const std::string& src_uid) {
  std::vector<std::shared_ptr<hbone::HboneSession>> doomed;
  for (auto it = pools_.begin(); it != pools_.end();) {
    if (std::get<0>(it->first) != src_uid) {
      ++it;
      continue;
    }
    for (auto& s : it->second) {
      keys_.erase(s.get());
      idle_.erase(s.get());
      doomed.push_back(std::move(s));
    }
    it = pools_.erase(it);
  }
  // Forgotten first: a session that closes inside Shutdown finds no entry to touch.
  for (const auto& s : doomed) s->Shutdown();
  size_t n = doomed.size();
  // After the GOAWAY's flush (deferred before this); the destructor closes the socket at once.
  if (n > 0) worker_.loop().Defer([doomed = std::move(doomed)] {});
  return n;
}

void HbonePool::OnIdle(hbone::HboneSession& session) {
  if (keys_.find(&session) == keys_.end()) return;
  if (worker_.draining()) {
    // A process draining for its successor exits once its last session has closed: a session
    // it opened while draining (for a connection it had taken, or a CONNECT opened again after
    // a refusal) goes as soon as it is idle, not after the idle timeout. Deferred: this runs
    // inside the session's own I/O.
    std::weak_ptr<hbone::HboneSession> weak = session.shared_from_this();
    worker_.loop().Defer([weak] {
      auto s = weak.lock();
      if (s != nullptr && !s->closed() && s->active_streams() == 0) s->Shutdown();
    });
    return;
  }
  IdleState& state = idle_[&session];
  state.since = worker_.Now();
  if (state.armed) return;  // the pending timer measures from `since`
  state.armed = true;
  ArmIdleTimer(session.shared_from_this(), idle_timeout_);
}

void HbonePool::ArmIdleTimer(std::weak_ptr<hbone::HboneSession> weak, absl::Duration after) {
  // The pool outlives every timer that runs: the worker's loop stops before the pool goes.
  worker_.loop().RunAfter(after, [this, weak] {
    auto s = weak.lock();
    if (s == nullptr || s->closed()) return;
    auto it = idle_.find(s.get());
    if (it == idle_.end()) return;
    if (s->active_streams() > 0) {  // busy again: OnIdle arms a new timer when it empties
      it->second.armed = false;
      return;
    }
    absl::Duration remaining = IdleRemaining(it->second.since, worker_.Now(), idle_timeout_);
    if (remaining <= absl::ZeroDuration()) {
      it->second.armed = false;
      s->Shutdown();
      return;
    }
    ArmIdleTimer(weak, remaining);
  });
}

void HbonePool::OnSessionClosed(hbone::HboneSession& session, const absl::Status& status) {
  auto it = keys_.find(&session);
  if (it == keys_.end()) return;
  if (!status.ok()) {
    AMBIT_LOG(kComponent, Warning)
        << "HBONE connection " << std::get<0>(it->second) << " -> " << std::get<1>(it->second)
        << " at " << std::get<2>(it->second).ToString() << " closed: " << status.message();
  }
  auto& list = pools_[it->second];
  for (auto s = list.begin(); s != list.end(); ++s) {
    if (s->get() == &session) {
      // Dropped after this batch: the session may still be on the call stack.
      worker_.loop().Defer([keep = std::move(*s)] {});
      list.erase(s);
      break;
    }
  }
  if (list.empty()) pools_.erase(it->second);
  keys_.erase(it);
  idle_.erase(&session);
}

InboundSessions::~InboundSessions() = default;

void InboundSessions::Accept(std::shared_ptr<const Pod> pod, UniqueFd fd) {
  auto local = LocalAddress(fd.get());
  auto peer = PeerAddress(fd.get());
  if (!local.ok() || !peer.ok()) return;
  auto contexts = worker_.tls();
  const TlsContexts::Pair* ctx = contexts ? contexts->Find(pod->spiffe_id) : nullptr;
  std::string why = contexts ? contexts->WhyMissing(pod->spiffe_id) : "no certificates yet";
  if (ctx != nullptr && ctx->server && worker_.Now() >= ctx->server->not_after()) {
    // Expired a moment ago; the main thread's next contexts will say so too.
    why = absl::StrCat("certificate expired at ", FormatTimestamp(ctx->server->not_after()));
    ctx = nullptr;
  }
  if (ctx == nullptr || !ctx->server) {
    // Fail closed: without our own valid certificate we cannot prove who answers.
    AMBIT_LOG(kComponent, Warning)
        << "hbone pod=" << pod->uid << " src=" << peer->ToString() << " dst=" << local->ToString()
        << ": no valid certificate for " << pod->spiffe_id << " (" << why << "); connection reset";
    CloseWithReset(fd);
    return;
  }
  auto session = hbone::HboneSession::CreateServer(&worker_.loop(), std::move(fd), ctx->server,
                                                   this, options_);
  if (!session.ok()) {
    AMBIT_LOG(kComponent, Warning) << "hbone pod=" << pod->uid << " src=" << peer->ToString()
                                   << ": " << session.status().message();
    return;
  }
  sessions_[session->get()] = Entry{*session, std::move(pod), *peer, *local};
}

std::vector<SessionEntry> InboundSessions::Sessions() const {
  std::vector<SessionEntry> out;
  out.reserve(sessions_.size());
  for (const auto& [raw, e] : sessions_) {
    out.push_back(
        {e.session, absl::StrCat("inbound pod=", e.pod->uid, " ", raw->tls_context().identity(),
                                 " <- ", raw->peer_identity().empty() ? "?" : raw->peer_identity(),
                                 " src=", e.peer.ToString())});
  }
  return out;
}

void InboundSessions::OnEstablished(hbone::HboneSession& session) {
  worker_.WatchSessionExpiry(session);
}

size_t InboundSessions::DropPod(const std::string& uid) {
  std::vector<std::shared_ptr<hbone::HboneSession>> doomed;
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (it->second.pod->uid != uid) {
      ++it;
      continue;
    }
    doomed.push_back(std::move(it->second.session));
    it = sessions_.erase(it);
  }
  // The pod is gone: nothing more is accepted, and the session does not outlive this turn.
  for (const auto& s : doomed) s->Shutdown(hbone::HboneSession::GoAway::kNow);
  size_t n = doomed.size();
  if (n > 0) worker_.loop().Defer([doomed = std::move(doomed)] {});
  return n;
}

hbone::StreamObserver* InboundSessions::OnConnect(hbone::HboneSession& session,
                                                  hbone::StreamId stream,
                                                  const hbone::ConnectRequest& request) {
  auto it = sessions_.find(&session);
  if (it == sessions_.end()) return nullptr;
  const Entry& e = it->second;
  const Pod& pod = *e.pod;
  std::string description = absl::StrCat("inbound pod=", pod.uid, " src=", e.peer.ip.ToString(),
                                         " dst=", request.destination.ToString(),
                                         " mode=mtls peer=", request.peer_identity);
  FlowRecord record;
  record.direction = FlowDirection::kInbound;
  record.pod = pod.uid;
  record.mode = "hbone";
  record.mtls = true;
  record.source = PeerOf(*worker_.snapshot(), e.peer, request.peer_identity);
  record.destination = PeerOf(pod, request.destination);
  if (!worker_.fail_closed().empty()) {
    worker_.counters().refused_fail_closed++;
    AMBIT_LOG(kComponent, Warning)
        << description << ": " << worker_.fail_closed() << "; answered 503";
    (void)session.Respond(stream, 503);
    worker_.Refuse(std::move(record), FlowEnd{false, "CONNECT", worker_.fail_closed()});
    return nullptr;
  }
  if (worker_.settings().l7 != nullptr) {
    // A waypoint's pod: the CONNECT names the destination the waypoint forwards to.
    return worker_.settings().l7->OnConnect(worker_, session, stream, request, e.pod, e.peer,
                                            std::move(record));
  }
  bool ours = false;
  for (const auto& ip : pod.workload.ips) ours |= ip == request.destination.ip;
  if (!ours) {
    AMBIT_LOG(kComponent, Warning)
        << description << ": authority " << request.authority << " is not this pod; answered 400";
    (void)session.Respond(stream, 400);
    worker_.Refuse(std::move(record), FlowEnd{false, "CONNECT",
                                              absl::StrCat("authority ", request.authority,
                                                           " is not this pod (answered 400)")});
    return nullptr;
  }
  // One of ambit's own ports: never delivered (it would reach the data plane itself), and no
  // socket is opened for it.
  if (auto target = CheckDeliveryTarget(*worker_.snapshot(), pod, request.destination);
      !target.ok()) {
    AMBIT_LOG(kComponent, Warning) << description << ": " << target.message() << "; answered 503";
    (void)session.Respond(stream, 503, target.message());
    worker_.Refuse(std::move(record), FlowEnd{false, "CONNECT", std::string(target.message())});
    return nullptr;
  }
  // Decided before the application sees a byte; denied: 401, as ztunnel answers.
  std::string decided_by;
  auto allowed = worker_.snapshot()->Authorize(e.peer, request.destination, request.peer_identity,
                                               &decided_by);
  worker_.metrics().Decision(allowed.ok());
  record.policy = decided_by;
  if (!allowed.ok()) {
    worker_.counters().denied++;
    AMBIT_LOG(kComponent, Warning) << description << " " << allowed.message() << "; answered 401";
    (void)session.Respond(stream, 401);
    worker_.Refuse(std::move(record), FlowEnd{true, "DENY", std::string(allowed.message())});
    return nullptr;
  }
  absl::StrAppend(&description, " allowed_by=", decided_by);
  // Deliver from the client pod's own address, so the application sees the real client.
  SocketAddress source{e.peer.ip, 0};
  auto up = ConnectFromPod(worker_, pod, request.destination, &source);
  if (!up.ok()) {
    AMBIT_LOG(kComponent, Warning)
        << description << ": " << up.status().message() << "; answered 503";
    (void)session.Respond(stream, 503, up.status().message());
    worker_.Refuse(std::move(record),
                   FlowEnd{false, "CONNECT", std::string(up.status().message())});
    return nullptr;
  }
  AMBIT_LOG(kComponent, Info) << description;
  auto flow = std::make_unique<TunnelStream>(worker_, description, std::move(up->fd));
  TunnelStream* raw = flow.get();
  flow->record() = std::move(record);
  worker_.Adopt(std::move(flow));
  std::optional<std::pair<SocketAddress, SocketAddress>> delivery;
  if (up->delivery_source) delivery = std::make_pair(*up->delivery_source, request.destination);
  raw->Accept(session.shared_from_this(), stream, std::move(delivery));
  // Re-decided on every policy change; newly denied streams are closed.
  raw->SetRecheck([peer = e.peer, dst = request.destination,
                   principal = request.peer_identity](const MeshSnapshot& snapshot) {
    return snapshot.Authorize(peer, dst, principal, nullptr);
  });
  return raw;
}

void InboundSessions::OnSessionClosed(hbone::HboneSession& session, const absl::Status& status) {
  auto it = sessions_.find(&session);
  if (it == sessions_.end()) return;
  if (!status.ok()) {
    AMBIT_LOG(kComponent, Warning)
        << "hbone pod=" << it->second.pod->uid << " src=" << it->second.peer.ToString()
        << " dst=" << it->second.local.ToString() << ": session closed: " << status.message();
  }
  worker_.loop().Defer([keep = std::move(it->second.session)] {});
  sessions_.erase(it);
}

}  // namespace ambit::tunnel
