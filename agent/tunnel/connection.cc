#include "agent/tunnel/connection.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <optional>

#include "abi/redirect.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/bpf/dataplane_maps.h"
#include "agent/common/log.h"
#include "agent/common/netns.h"
#include "agent/common/socket_util.h"
#include "agent/common/status.h"
#include "agent/tunnel/hbone_pool.h"
#include "agent/tunnel/l7_hook.h"
#include "agent/tunnel/original_dst.h"
#include "agent/tunnel/tls_contexts.h"
#include "agent/tunnel/tunnel_stream.h"

#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif

namespace ambit::tunnel {
namespace {

constexpr const char* kComponent = "tunnel";

uint64_t NextPick() {
  static thread_local uint64_t n = 0;
  return n++;
}

std::string RandomHex(size_t bytes) {
  static thread_local absl::BitGen gen;
  std::string out;
  for (size_t i = 0; i < bytes; ++i)
    absl::StrAppend(&out, absl::Hex(absl::Uniform<uint8_t>(gen), absl::kZeroPad2));
  return out;
}

// The client's address as the pod knows itself: an outbound connection reaches the tunnel from
// the pod's loopback (the redirect's target), so its source is the pod's own address of the
// destination's family, with the client's port.
SocketAddress PodSide(const Pod& pod, const SocketAddress& peer, const IpAddress& dst) {
  for (const auto& ip : pod.workload.ips) {
    if (ip.is_v4() == dst.is_v4()) return SocketAddress{ip, peer.port};
  }
  return peer;
}

// A destination in the mesh: an HBONE stream to the destination pod's 15008, from inside the
// source pod's network namespace, presenting the source pod's certificate.
void HandleOutboundHbone(Worker& worker, const std::shared_ptr<const Pod>& pod, UniqueFd client,
                         const SocketAddress& peer, const Route& route, std::string description) {
  const mesh::Workload& dst = *route.workload;
  const std::string dst_identity = dst.identity.ToString();
  absl::StrAppend(&description, " mode=hbone dst_identity=", dst_identity);
  FlowRecord record;
  record.direction = FlowDirection::kOutbound;
  record.pod = pod->uid;
  record.mode = "hbone";
  record.mtls = true;
  record.source = PeerOf(*pod, PodSide(*pod, peer, route.target.ip));
  if (route.waypoint != nullptr) {
    // The destination is what was dialled; the waypoint is only the hop.
    record.destination = PeerOf(*worker.snapshot(), route.target, "");
    absl::StrAppend(&description, " waypoint=", route.waypoint->key,
                    " via=", route.hbone_ip.ToString());
  } else {
    record.destination = PeerOf(dst, route.target);  // the route already names the workload
  }
  if (route.service != nullptr) {
    record.destination.service =
        absl::StrCat(route.service->namespace_name, "/", route.service->name);
  }
  auto contexts = worker.tls();
  const TlsContexts::Pair* ctx = contexts ? contexts->Find(pod->spiffe_id) : nullptr;
  if (ctx == nullptr || !ctx->client) {
    // Fail closed: a workload without a valid certificate gets no mTLS traffic.
    AMBIT_LOG(kComponent, Warning)
        << description << ": no valid certificate for " << pod->spiffe_id << " ("
        << (contexts ? contexts->WhyMissing(pod->spiffe_id) : "no certificates yet")
        << "); connection reset";
    CloseWithReset(client);
    worker.Refuse(
        std::move(record),
        FlowEnd{false, "CONNECT", absl::StrCat("no valid certificate for ", pod->spiffe_id)});
    return;
  }
  SocketAddress hbone{route.hbone_ip, AMBIT_HBONE_PORT};
  auto session = worker.pool().Get(*pod, ctx->client, dst_identity, hbone);
  if (!session.ok()) {
    AMBIT_LOG(kComponent, Warning)
        << description << ": " << session.status().message() << "; connection reset";
    CloseWithReset(client);
    worker.Refuse(std::move(record),
                  FlowEnd{false, "CONNECT", std::string(session.status().message())});
    return;
  }
  // The pod's own address of the destination's family stands for the client in `forwarded`.
  std::string for_addr = PodSide(*pod, peer, route.target.ip).ToString();
  hbone::ConnectHeaders headers;
  headers.forwarded = absl::StrCat("for=\"", for_addr, "\"");
  headers.baggage =
      absl::StrCat("k8s.namespace.name=", pod->workload.namespace_name,
                   ",k8s.pod.name=", pod->workload.name, ",service.name=", pod->workload.name);
  headers.traceparent = absl::StrCat("00-", RandomHex(16), "-", RandomHex(8), "-01");
  if (route.service != nullptr) {
    absl::StrAppend(&description, " service=", route.service->namespace_name, "/",
                    route.service->name, " endpoint=", route.target.ToString());
  }
  AMBIT_LOG(kComponent, Info) << description;
  auto flow = std::make_unique<TunnelStream>(worker, description, std::move(client));
  TunnelStream* raw = flow.get();
  flow->record() = std::move(record);
  worker.Adopt(std::move(flow));
  // A CONNECT refused unprocessed (the peer draining for its successor) goes to a session that
  // can take it, a new one when the refusing one was the only one.
  auto reopen = [&worker, pod, client_ctx = ctx->client, dst_identity, hbone] {
    return worker.pool().Get(*pod, client_ctx, dst_identity, hbone);
  };
  auto status = raw->Open(*session, route.target.ToString(), headers, std::move(reopen));
  if (!status.ok()) {
    AMBIT_LOG(kComponent, Warning)
        << description << ": " << status.message() << "; connection reset";
    raw->OnReset(hbone::kRefusedStream);
  }
}

void RefuseFailClosed(Worker& worker, const Pod& pod, FlowDirection direction, UniqueFd client) {
  worker.counters().refused_fail_closed++;
  auto peer = PeerAddress(client.get());
  auto local = LocalAddress(client.get());
  AMBIT_LOG(kComponent, Warning) << (direction == FlowDirection::kOutbound ? "outbound" : "inbound")
                                 << " pod=" << pod.uid
                                 << " src=" << (peer.ok() ? peer->ToString() : "?") << ": "
                                 << worker.fail_closed() << "; connection reset";
  CloseWithReset(client);
  FlowRecord record;
  record.direction = direction;
  record.pod = pod.uid;
  record.mode = direction == FlowDirection::kOutbound ? "unknown" : "plaintext";
  if (peer.ok()) record.source = PeerOf(*worker.snapshot(), *peer, "");
  if (local.ok()) record.destination = PeerOf(pod, *local);
  worker.Refuse(std::move(record), FlowEnd{false, "CONNECT", worker.fail_closed()});
}

struct Destination {
  SocketAddress address;
  bool from_nat = false;  // SO_ORIGINAL_DST, not ambit_orig_dst
};

// Where an outbound connection was going: the entry sockops recorded for it, else (a socket
// BPF did not redirect, that netfilter REDIRECTed here) conntrack's original destination,
// never one that leads back to this pod's listeners (DecideOutboundNatDestination).
absl::StatusOr<Destination> OutboundDestination(Worker& worker, const Pod& pod, int fd,
                                                const SocketAddress& peer) {
  auto recorded =
      bpf::TakeOriginalDestination(worker.settings().orig_dst_map, pod.netns_cookie, peer);
  if (recorded.ok()) return Destination{recorded->address, false};
  if (!absl::IsNotFound(recorded.status())) return recorded.status();
  auto local = LocalAddress(fd);
  if (!local.ok()) return local.status();
  auto nat = NatOriginalDestination(fd);
  if (!nat.ok()) return nat.status();
  const MeshSnapshot& snapshot = *worker.snapshot();
  auto decided = DecideOutboundNatDestination(
      *local, *nat, pod.workload.ips, [&](uint16_t port) { return snapshot.IsReservedPort(port); });
  if (!decided.ok()) {
    return absl::Status(decided.status().code(), absl::StrCat(recorded.status().message(), "; ",
                                                              decided.status().message()));
  }
  worker.counters().nat_original_dst_outbound++;
  return Destination{*decided, true};
}

// IPv4 peers of a dual-stack listener show up IPv4-mapped; IpAddress already normalises that.
void HandleOutbound(Worker& worker, std::shared_ptr<const Pod> pod, UniqueFd client) {
  auto peer = PeerAddress(client.get());
  if (!peer.ok()) return;
  auto orig = OutboundDestination(worker, *pod, client.get(), *peer);
  if (!orig.ok()) {
    // Fail closed: without the original destination there is nowhere safe to send the bytes.
    AMBIT_LOG(kComponent, Warning) << "outbound pod=" << pod->uid << " src=" << peer->ToString()
                                   << ": " << orig.status().message() << "; connection reset";
    CloseWithReset(client);
    return;
  }
  std::string description = absl::StrCat("outbound pod=", pod->uid, " src=", peer->ToString(),
                                         " orig_dst=", orig->address.ToString(),
                                         orig->from_nat ? " (SO_ORIGINAL_DST)" : "");
  Route route = worker.snapshot()->Resolve(orig->address, NextPick(), pod->workload.ips);
  if (route.kind == Route::Kind::kRefused) {
    AMBIT_LOG(kComponent, Warning) << description << ": " << route.refused << "; connection reset";
    CloseWithReset(client);
    FlowRecord record;
    record.direction = FlowDirection::kOutbound;
    record.pod = pod->uid;
    record.mode = "hbone";
    record.source = PeerOf(*pod, PodSide(*pod, *peer, orig->address.ip));
    record.destination = PeerOf(*worker.snapshot(), orig->address, "");
    record.policy = absl::StrCat("waypoint ", route.waypoint->key);
    worker.Refuse(std::move(record), FlowEnd{true, "DENY", route.refused});
    return;
  }
  if (route.kind == Route::Kind::kHbone) {
    HandleOutboundHbone(worker, pod, std::move(client), *peer, route, std::move(description));
    return;
  }
  AMBIT_LOG(kComponent, Info) << description << " mode=passthrough";
  auto conn = std::make_unique<Connection>(worker, description, std::move(client));
  FlowRecord& record = conn->record();
  record.direction = FlowDirection::kOutbound;
  record.pod = pod->uid;
  record.mode = "passthrough";
  record.source = PeerOf(*pod, PodSide(*pod, *peer, orig->address.ip));
  record.destination = PeerOf(*worker.snapshot(), orig->address, "");
  auto upstream = ConnectFromPod(worker, *pod, orig->address, nullptr);
  Connection* raw = conn.get();
  worker.Adopt(std::move(conn));
  if (!upstream.ok()) {
    raw->Abort(std::string(upstream.status().message()));
    return;
  }
  raw->StartRelay(std::move(upstream->fd), upstream->in_progress);
}

// PeerAuthentication for plaintext that reached a pod: STRICT refuses it, PERMISSIVE and DISABLE
// deliver it. OK, or PermissionDenied saying which policy refused.
absl::Status PlaintextAllowed(const MeshSnapshot& snapshot, const SocketAddress& local,
                              std::string* mode_text, std::string* policy_name = nullptr) {
  const mesh::Workload* workload = snapshot.WorkloadByIp(local.ip);
  if (workload == nullptr || !workload->mtls.has_value()) {
    // A pod we serve but the configuration does not describe (or not yet as a pod of this node):
    // its policies are unknown.
    *mode_text = "mtls=unknown";
    return absl::PermissionDeniedError(absl::StrCat("refused: ", local.ip.ToString(), " is not ",
                                                    workload == nullptr ? "in" : "enrolled here in",
                                                    " configuration snapshot ", snapshot.version(),
                                                    " (its policies are unknown)"));
  }
  const mesh::MtlsDecision& decision = workload->mtls->ForPort(local.port);
  const mesh::MtlsMode mode = decision.mode;
  const std::string& name = decision.policy;
  if (policy_name != nullptr) *policy_name = name.empty() ? "default" : name;
  *mode_text =
      absl::StrCat("mtls=", authz::MtlsModeName(mode), " policy=", name.empty() ? "default" : name);
  if (mode == mesh::MtlsMode::kStrict) {
    return absl::PermissionDeniedError(
        absl::StrCat("plaintext refused: PeerAuthentication ", name.empty() ? "(default)" : name,
                     " requires mTLS (STRICT) on port ", local.port));
  }
  return absl::OkStatus();
}

// Where a connection the plaintext-inbound listener accepted was going: its own destination
// (sk_lookup steered it), or, when netfilter REDIRECTed it to 15006, conntrack's original one.
// Nullopt when refused (a connection dialled to 15006 itself), which this answers and logs.
std::optional<Destination> InboundDestinationOf(Worker& worker, const Pod& pod, UniqueFd& client) {
  auto peer = PeerAddress(client.get());
  auto local = LocalAddress(client.get());
  if (!peer.ok() || !local.ok()) {
    CloseWithReset(client);
    return std::nullopt;
  }
  std::optional<SocketAddress> nat;
  if (local->port == AMBIT_INBOUND_PLAIN_PORT) {
    auto asked = NatOriginalDestination(client.get());
    if (asked.ok()) {
      nat = *asked;
    } else {
      AMBIT_LOG(kComponent, Warning) << "inbound pod=" << pod.uid << " src=" << peer->ToString()
                                     << ": " << asked.status().message();
    }
  }
  auto decided = DecideInboundDestination(*local, nat);
  if (!decided.ok()) {
    AMBIT_LOG(kComponent, Warning)
        << "inbound pod=" << pod.uid << " src=" << peer->ToString() << " dst=" << local->ToString()
        << " mode=plaintext: " << decided.status().message() << "; connection reset";
    CloseWithReset(client);
    FlowRecord record;
    record.direction = FlowDirection::kInbound;
    record.pod = pod.uid;
    record.mode = "plaintext";
    record.source = PeerOf(*worker.snapshot(), *peer, "");
    record.destination = PeerOf(pod, *local);
    worker.Refuse(std::move(record),
                  FlowEnd{false, "CONNECT", std::string(decided.status().message())});
    return std::nullopt;
  }
  if (decided->from_nat) worker.counters().nat_original_dst_inbound++;
  return Destination{decided->address, decided->from_nat};
}

void HandleInboundPlain(Worker& worker, std::shared_ptr<const Pod> pod, UniqueFd client,
                        const Destination& destination) {
  auto peer = PeerAddress(client.get());
  if (!peer.ok()) return;
  const SocketAddress* local = &destination.address;
  std::string description =
      absl::StrCat("inbound pod=", pod->uid, " src=", peer->ToString(), " dst=", local->ToString(),
                   destination.from_nat ? " (SO_ORIGINAL_DST)" : "");
  FlowRecord record;
  record.direction = FlowDirection::kInbound;
  record.pod = pod->uid;
  record.mode = "plaintext";
  record.source = PeerOf(*worker.snapshot(), *peer, "");
  record.destination = PeerOf(*pod, *local);
  // Before policy and before any socket: this destination is never delivered.
  if (auto target = CheckDeliveryTarget(*worker.snapshot(), *pod, *local); !target.ok()) {
    AMBIT_LOG(kComponent, Warning)
        << description << " mode=plaintext: " << target.message() << "; connection reset";
    CloseWithReset(client);
    worker.Refuse(std::move(record), FlowEnd{false, "CONNECT", std::string(target.message())});
    return;
  }
  std::string mode;
  auto allowed = PlaintextAllowed(*worker.snapshot(), *local, &mode, &record.policy);
  // Seen by PeerAuthentication, whatever the answer: who a STRICT port refuses, and who it would.
  // The source as `ambitctl connections` names it: namespace/pod.
  worker.plaintext_clients().Record(
      pod->uid, local->port, peer->ip,
      record.source.workload.empty()
          ? ""
          : absl::StrCat(record.source.namespace_name, "/", record.source.workload),
      !allowed.ok(), worker.Now());
  if (!allowed.ok()) {
    worker.counters().plaintext_refused++;
    worker.metrics().Decision(false);
    AMBIT_LOG(kComponent, Warning) << description << " mode=plaintext " << mode << ": "
                                   << allowed.message() << "; connection reset";
    CloseWithReset(client);
    worker.Refuse(std::move(record), FlowEnd{true, "DENY", std::string(allowed.message())});
    return;
  }
  std::string decided_by;
  auto authorized = worker.snapshot()->Authorize(*peer, *local, "", &decided_by);
  worker.metrics().Decision(authorized.ok());
  record.policy = decided_by;
  if (!authorized.ok()) {
    worker.counters().denied++;
    AMBIT_LOG(kComponent, Warning) << description << " mode=plaintext " << mode << " "
                                   << authorized.message() << "; connection reset";
    CloseWithReset(client);
    worker.Refuse(std::move(record), FlowEnd{true, "DENY", std::string(authorized.message())});
    return;
  }
  AMBIT_LOG(kComponent, Info) << description << " mode=plaintext " << mode
                              << " allowed_by=" << decided_by;
  auto conn = std::make_unique<Connection>(worker, description, std::move(client));
  conn->record() = std::move(record);
  Connection* raw = conn.get();
  worker.Adopt(std::move(conn));
  // Re-decided on every policy change: a port that becomes STRICT closes this connection.
  raw->SetRecheck([local = *local, peer = *peer](const MeshSnapshot& snapshot) {
    std::string ignored;
    AMBIT_RETURN_IF_ERROR(PlaintextAllowed(snapshot, local, &ignored));
    return snapshot.Authorize(peer, local, "", nullptr);
  });
  auto upstream = ConnectFromPod(worker, *pod, *local, &*peer);
  if (!upstream.ok()) {
    raw->Abort(std::string(upstream.status().message()));
    return;
  }
  raw->SetDeliveryEntry(*upstream->delivery_source, *local);
  raw->StartRelay(std::move(upstream->fd), upstream->in_progress);
}

// Whether `source` is one of --kubelet-probe-source's addresses and not an address of the pod's
// own network namespace: the node SNATs its probes to that address before they enter the pod,
// and a process inside the pod that holds the address (so could connect from it over lo) is no
// probe. Asked of the kernel by binding a socket in the pod's namespace to it: only a local
// address binds.
bool IsKubeletProbeSource(Worker& worker, const Pod& pod, const IpAddress& source) {
  const auto& sources = worker.settings().kubelet_probe_sources;
  if (std::find(sources.begin(), sources.end(), source) == sources.end()) return false;
  const auto& settings = worker.settings();
  auto sock = settings.sockets->SocketInNetns(pod.netns.get(), settings.host_netns, source.family(),
                                              SOCK_STREAM);
  if (!sock.ok()) {
    AMBIT_LOG(kComponent, Warning)
        << "inbound pod=" << pod.uid << " src=" << source.ToString()
        << ": cannot check the probe source: " << sock.status().message();
    return false;  // fail closed: decided as any plaintext
  }
  sockaddr_storage ss;
  socklen_t len = SocketAddress{source, 0}.ToSockaddr(&ss);
  if (bind(sock->get(), reinterpret_cast<sockaddr*>(&ss), len) < 0 && errno == EADDRNOTAVAIL) {
    return true;
  }
  AMBIT_LOG(kComponent, Warning) << "inbound pod=" << pod.uid << " src=" << source.ToString()
                                 << ": the kubelet probe source is an address of the pod's own "
                                    "network namespace; not a probe";
  return false;
}

// A connection the node's network namespace opened to this pod (sockops recorded its tuple in
// ambit_probes, see docs/ARCHITECTURE.md#kubelet-probes): delivered to the pod past
// PeerAuthentication and AuthorizationPolicy, as Istio exempts kubelet probes, and only to the
// pod's own address and the port dialled. False when the connection is not one (the entry is
// taken, so it admits this connection only).
bool HandleKubeletProbe(Worker& worker, const std::shared_ptr<const Pod>& pod, UniqueFd& client,
                        const Destination& destination) {
  auto peer = PeerAddress(client.get());
  if (!peer.ok()) return false;
  const SocketAddress* local = &destination.address;
  const char* how = nullptr;
  if (const int map_fd = worker.settings().probes_map; map_fd >= 0) {
    auto probe = bpf::TakeKubeletProbe(map_fd, *peer, *local);
    if (!probe.ok()) {
      // Fail closed: decided as any plaintext.
      AMBIT_LOG(kComponent, Warning) << "inbound pod=" << pod->uid << " src=" << peer->ToString()
                                     << ": " << probe.status().message();
    } else if (*probe) {
      how = "node socket";
    }
  }
  if (how == nullptr && IsKubeletProbeSource(worker, *pod, peer->ip)) how = "probe source";
  if (how == nullptr) return false;
  std::string description =
      absl::StrCat("inbound pod=", pod->uid, " src=", peer->ToString(), " dst=", local->ToString(),
                   " mode=kubelet-probe by=", how);
  FlowRecord record;
  record.direction = FlowDirection::kInbound;
  record.pod = pod->uid;
  record.mode = kKubeletProbe;
  record.policy = kKubeletProbe;
  record.source = PeerOf(*worker.snapshot(), *peer, "");
  record.destination = PeerOf(*pod, *local);
  if (auto target = CheckDeliveryTarget(*worker.snapshot(), *pod, *local); !target.ok()) {
    AMBIT_LOG(kComponent, Warning)
        << description << ": " << target.message() << "; connection reset";
    CloseWithReset(client);
    worker.Refuse(std::move(record), FlowEnd{false, "CONNECT", std::string(target.message())});
    return true;
  }
  worker.counters().kubelet_probes++;
  AMBIT_LOG(kComponent, Info) << description;
  auto conn = std::make_unique<Connection>(worker, description, std::move(client));
  conn->record() = std::move(record);
  Connection* raw = conn.get();
  worker.Adopt(std::move(conn));
  auto upstream = ConnectFromPod(worker, *pod, *local, &*peer);
  if (!upstream.ok()) {
    raw->Abort(std::string(upstream.status().message()));
    return true;
  }
  raw->SetDeliveryEntry(*upstream->delivery_source, *local);
  raw->StartRelay(std::move(upstream->fd), upstream->in_progress);
  return true;
}

}  // namespace

FlowPeer PeerOf(const Pod& pod, const SocketAddress& address) {
  FlowPeer p;
  p.workload = pod.workload.name;
  p.namespace_name = pod.workload.namespace_name;
  p.principal = pod.spiffe_id;
  p.address = address;
  p.workload_name = pod.workload.workload_name;
  p.canonical_service = pod.workload.canonical_service;
  p.canonical_revision = pod.workload.canonical_revision;
  return p;
}

FlowPeer PeerOf(const mesh::Workload& workload, const SocketAddress& address) {
  FlowPeer p;
  p.workload = workload.name;
  p.namespace_name = workload.namespace_name;
  p.principal = workload.identity.ToString();
  p.address = address;
  p.workload_name = workload.workload_name;
  p.canonical_service = workload.canonical_service;
  p.canonical_revision = workload.canonical_revision;
  return p;
}

FlowPeer PeerOf(const MeshSnapshot& snapshot, const SocketAddress& address, std::string principal) {
  FlowPeer p;
  p.address = address;
  p.principal = std::move(principal);
  if (const mesh::Workload* w = snapshot.WorkloadByIp(address.ip)) {
    p.workload = w->name;
    p.namespace_name = w->namespace_name;
    p.workload_name = w->workload_name;
    p.canonical_service = w->canonical_service;
    p.canonical_revision = w->canonical_revision;
  }
  return p;
}

absl::Status CheckDeliveryTarget(const MeshSnapshot& snapshot, const Pod& pod,
                                 const SocketAddress& dst) {
  bool ours = false;
  for (const auto& ip : pod.workload.ips) ours |= ip == dst.ip;
  if (!ours) {
    return absl::FailedPreconditionError(
        absl::StrCat("refused: ", dst.ip.ToString(), " is not an address of pod ", pod.uid,
                     " (inbound traffic is delivered to the pod's own addresses only)"));
  }
  if (snapshot.IsReservedPort(dst.port)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "refused: port ", dst.port, " is one of ambit's own listeners, never a delivery target"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Upstream> ConnectFromPod(const Worker& worker, const Pod& pod,
                                        const SocketAddress& dst, const SocketAddress* source) {
  if (source != nullptr) {
    AMBIT_RETURN_IF_ERROR(CheckDeliveryTarget(*worker.snapshot(), pod, dst));
  }
  Upstream up;
  const auto& settings = worker.settings();
  int family = dst.ip.family();
  auto sock = settings.sockets->SocketInNetns(pod.netns.get(), settings.host_netns, family,
                                              SOCK_STREAM | SOCK_NONBLOCK);
  if (!sock.ok()) return sock.status();
  int fd = sock->get();
  uint32_t mark = source != nullptr ? settings.delivery_mark : settings.socket_mark;
  if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) < 0) {
    return absl::ErrnoToStatus(errno, "SO_MARK on upstream socket");
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (source != nullptr) {
    int level = family == AF_INET ? SOL_IP : SOL_IPV6;
    int opt = family == AF_INET ? IP_TRANSPARENT : IPV6_TRANSPARENT;
    if (setsockopt(fd, level, opt, &one, sizeof one) < 0) {
      return absl::ErrnoToStatus(errno, "IP_TRANSPARENT on delivery socket (needs CAP_NET_ADMIN)");
    }
    SocketAddress src{source->ip, 0};
    sockaddr_storage ss;
    socklen_t len = src.ToSockaddr(&ss);
    if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) < 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("bind delivery socket to ", src.ToString()));
    }
    auto bound = LocalAddress(fd);
    if (!bound.ok()) return bound.status();
    auto status = bpf::AllowDelivery(settings.deliver_map, *bound, dst);
    if (!status.ok()) return status;
    up.delivery_source = *bound;
  }
  up.fd = std::move(*sock);
  sockaddr_storage ss;
  socklen_t len = dst.ToSockaddr(&ss);
  if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0) return up;
  if (errno != EINPROGRESS) {
    int saved = errno;
    if (up.delivery_source) bpf::ForgetDelivery(settings.deliver_map, *up.delivery_source, dst);
    return absl::ErrnoToStatus(saved, absl::StrCat("connect to ", dst.ToString()));
  }
  up.in_progress = true;
  return up;
}

void HandleAccepted(Worker& worker, std::shared_ptr<const Pod> pod, ListenerKind kind,
                    UniqueFd client) {
  // HBONE streams are refused one by one in InboundSessions::OnConnect: a pooled session
  // carries new streams without a new accept.
  if (!worker.fail_closed().empty() && kind != ListenerKind::kHbone) {
    RefuseFailClosed(
        worker, *pod,
        kind == ListenerKind::kOutbound ? FlowDirection::kOutbound : FlowDirection::kInbound,
        std::move(client));
    return;
  }
  std::optional<Destination> inbound;
  if (kind == ListenerKind::kInboundPlain) {
    inbound = InboundDestinationOf(worker, *pod, client);
    if (!inbound.has_value()) return;
    // Before the waypoint's own handling too: a waypoint's pod is probed like any other.
    if (HandleKubeletProbe(worker, pod, client, *inbound)) return;
  }
  if (worker.settings().l7 != nullptr && kind != ListenerKind::kHbone) {
    worker.settings().l7->OnAccepted(worker, pod, kind, std::move(client));
    return;
  }
  switch (kind) {
    case ListenerKind::kOutbound:
      HandleOutbound(worker, std::move(pod), std::move(client));
      return;
    case ListenerKind::kInboundPlain:
      HandleInboundPlain(worker, std::move(pod), std::move(client), *inbound);
      return;
    case ListenerKind::kHbone:
      worker.inbound().Accept(std::move(pod), std::move(client));
      return;
  }
}

Connection::Connection(Worker& worker, std::string description, UniqueFd downstream)
    : tunnel::Flow(std::move(description)), worker_(worker) {
  fds_[0] = std::move(downstream);
  for (int i = 0; i < 2; ++i) {
    sides_[i].conn = this;
    sides_[i].index = i;
  }
}

Connection::~Connection() { ForgetDelivery(); }

void Connection::SetDeliveryEntry(const SocketAddress& src, const SocketAddress& dst) {
  delivery_ = std::make_pair(src, dst);
}

void Connection::ForgetDelivery() {
  if (!delivery_) return;
  bpf::ForgetDelivery(worker_.settings().deliver_map, delivery_->first, delivery_->second);
  delivery_.reset();
}

void Connection::StartRelay(UniqueFd upstream, bool connect_in_progress) {
  fds_[1] = std::move(upstream);
  connecting_ = connect_in_progress;
  if (!connecting_) ForgetDelivery();
  for (int i = 0; i < 2; ++i) {
    auto status =
        worker_.Watch(fds_[i].get(), EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, &sides_[i]);
    if (!status.ok()) {
      ResetBoth(std::string(status.message()));
      return;
    }
  }
  if (!connecting_) Pump();
}

void Connection::Abort(const std::string& reason) {
  AMBIT_LOG(kComponent, Warning) << description() << ": " << reason << "; connection reset";
  SetEnd("CONNECT", reason);
  ResetBoth(reason);
}

void Connection::Side::OnEvents(uint32_t events) { conn->OnEvents(index, events); }

void Connection::OnEvents(int side, uint32_t events) {
  if (done_) return;
  if (connecting_) {
    if (side != 1) return;  // client bytes wait in the kernel until upstream is ready
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(fds_[1].get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0 || (events & EPOLLOUT)) ForgetDelivery();  // the SYN is past sk_lookup
    if (err != 0) {
      Abort(absl::StrCat("upstream connect failed: ", strerror(err)));
      return;
    }
    if (!(events & EPOLLOUT)) return;
    connecting_ = false;
  }
  Pump();
}

bool Connection::Flow(int from, bool* progressed) {
  Direction& d = dirs_[from];
  int src = fds_[from].get();
  int dst = fds_[1 - from].get();
  const size_t cap = worker_.settings().relay_buffer;
  if (!d.eof && d.tail < cap) {
    if (!d.buf) d.buf = std::make_unique<char[]>(cap);
    ssize_t n = read(src, d.buf.get() + d.tail, cap - d.tail);
    if (n > 0) {
      d.tail += n;
      *progressed = true;
    } else if (n == 0) {
      d.eof = true;
      *progressed = true;
    } else if (errno != EAGAIN && errno != EINTR) {
      return false;
    }
  }
  if (d.head < d.tail) {
    ssize_t n = send(dst, d.buf.get() + d.head, d.tail - d.head, MSG_NOSIGNAL);
    if (n > 0) {
      d.head += n;
      bytes_[from] += n;
      *progressed = true;
      if (d.head == d.tail) {
        d.head = d.tail = 0;
        d.buf.reset();  // idle connections hold no buffer
      }
    } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
      return false;
    }
  }
  if (d.eof && d.head == d.tail && !d.shut) {
    shutdown(dst, SHUT_WR);  // forward the FIN, keep the other direction open
    d.shut = true;
    *progressed = true;
  }
  return true;
}

void Connection::Pump() {
  bool progressed = true;
  while (progressed && !done_) {
    progressed = false;
    for (int from = 0; from < 2; ++from) {
      if (!Flow(from, &progressed)) {
        ResetBoth(absl::StrCat(from == 0 ? "downstream" : "upstream", " error: ", strerror(errno)));
        return;
      }
    }
  }
  if (dirs_[0].shut && dirs_[1].shut) Finish();
}

void Connection::ResetBoth(const std::string& reason) {
  if (done_) return;
  AMBIT_LOG(kComponent, Debug) << description() << " reset: " << reason;
  SetEnd("-", reason);
  for (auto& fd : fds_) {
    if (fd) worker_.Unwatch(fd.get());
    CloseWithReset(fd);
  }
  done_ = true;
  worker_.Retire(this);
}

void Connection::Finish() {
  AMBIT_LOG(kComponent, Debug) << description() << " closed sent=" << bytes_[0]
                               << " received=" << bytes_[1];
  for (auto& fd : fds_) {
    if (fd) worker_.Unwatch(fd.get());
    fd.Reset();
  }
  done_ = true;
  worker_.Retire(this);
}

}  // namespace ambit::tunnel
