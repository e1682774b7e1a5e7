#include "agent/waypointd/l7_handler.h"

#include <unistd.h>

#include <atomic>
#include <utility>

#include "abi/redirect.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "agent/authn/signature.h"
#include "agent/common/log.h"
#include "agent/common/log_line.h"
#include "agent/common/socket_util.h"
#include "agent/common/status.h"
#include "agent/tunnel/connection.h"
#include "agent/tunnel/hbone_pool.h"
#include "agent/tunnel/mesh_snapshot.h"
#include "agent/tunnel/tls_contexts.h"
#include "agent/tunnel/worker.h"
#include "agent/waypoint/authn_filter.h"
#include "agent/waypoint/authz_filter.h"
#include "agent/waypoint/socket_stream.h"
#include "agent/waypointd/hbone_stream.h"

namespace ambit::waypointd {
namespace {

constexpr const char* kComponent = "waypoint";
constexpr const char* kAccessLog = "access";  // the component proxy.cc logs requests under

uint64_t NextPick() {
  static std::atomic<uint64_t> next{0};
  return next.fetch_add(1, std::memory_order_relaxed);
}

// An upstream that could not be opened: reports the error from the loop, as a failed connect
// would, and takes nothing.
class FailedStream final : public waypoint::ByteStream {
 public:
  FailedStream(EventLoop* loop, Observer* observer, absl::Status status)
      : alive_(std::make_shared<bool>(true)) {
    loop->Defer([alive = std::weak_ptr<bool>(alive_), observer, status = std::move(status)] {
      if (alive.lock()) observer->OnError(status);
    });
  }
  void SetObserver(Observer*) override {}
  void Write(absl::string_view) override {}
  size_t buffered() const override { return 0; }
  void SetReadEnabled(bool) override {}
  void ShutdownWrite() override {}
  void Close(bool) override { alive_.reset(); }
  std::string Describe() const override { return "refused"; }

 private:
  std::shared_ptr<bool> alive_;
};

// Where an upstream CONNECT the destination refused unprocessed (its data plane draining for a
// successor) is opened again: a pooled session that can take it, else a new one. Counted per
// retry; refused once the source pod is gone.
HboneStream::SessionSource Reopener(tunnel::Worker& worker, std::weak_ptr<const tunnel::Pod> pod,
                                    std::shared_ptr<const hbone::TlsContext> client_ctx,
                                    std::string identity, SocketAddress hbone) {
  return [&worker, pod = std::move(pod), client_ctx = std::move(client_ctx),
          identity = std::move(identity),
          hbone]() -> absl::StatusOr<std::shared_ptr<hbone::HboneSession>> {
    auto src = pod.lock();
    if (!src) return absl::UnavailableError("the source pod is no longer enrolled");
    worker.counters().connect_retries++;
    return worker.pool().Get(*src, client_ctx, identity, hbone);
  };
}

// A fetcher for a machine without usable roots: every fetch fails with why.
class UnavailableFetcher final : public authn::JwksFetcher {
 public:
  explicit UnavailableFetcher(absl::Status why) : why_(std::move(why)) {}
  absl::StatusOr<std::string> Fetch(const std::string&, absl::Duration) override { return why_; }

 private:
  absl::Status why_;
};

// Where the waypoint forwards one downstream's requests: over HBONE from the waypoint's pod to
// the destination's tunnel, resolved against the configuration in force at each connect.
class HboneUpstream final : public waypoint::UpstreamConnector {
 public:
  HboneUpstream(tunnel::Worker& worker, std::shared_ptr<const tunnel::Pod> pod, SocketAddress dst,
                SocketAddress client)
      : worker_(worker), pod_(std::move(pod)), dst_(dst), client_(client) {}

  std::unique_ptr<waypoint::ByteStream> Connect(waypoint::ByteStream::Observer* observer) override {
    EventLoop* loop = &worker_.loop();
    const auto& snapshot = worker_.snapshot();
    tunnel::Route route = snapshot->Resolve(dst_, NextPick(), pod_->workload.ips);
    if (route.kind != tunnel::Route::Kind::kHbone) {
      // Only mesh workloads use a waypoint; anything else here is a configuration that changed
      // under the connection. Never sent in plaintext.
      return std::make_unique<FailedStream>(
          loop, observer,
          absl::UnavailableError(route.kind == tunnel::Route::Kind::kRefused
                                     ? route.refused
                                     : absl::StrCat(dst_.ToString(), " is not in the mesh")));
    }
    const std::string identity = route.workload->identity.ToString();
    auto contexts = worker_.tls();
    const tunnel::TlsContexts::Pair* ctx = contexts ? contexts->Find(pod_->spiffe_id) : nullptr;
    if (ctx == nullptr || !ctx->client) {
      return std::make_unique<FailedStream>(
          loop, observer,
          absl::UnavailableError(absl::StrCat("no valid certificate for ", pod_->spiffe_id)));
    }
    auto session = worker_.pool().Get(*pod_, ctx->client, identity,
                                      SocketAddress{route.hbone_ip, AMBIT_HBONE_PORT});
    if (!session.ok()) return std::make_unique<FailedStream>(loop, observer, session.status());
    hbone::ConnectHeaders headers;
    // The original client, as ztunnel's waypoint hop passes it on.
    headers.forwarded = absl::StrCat("for=\"", client_.ip.ToString(), "\"");
    headers.baggage = absl::StrCat("k8s.namespace.name=", pod_->workload.namespace_name,
                                   ",k8s.pod.name=", pod_->workload.name);
    return HboneStream::Open(loop, *session, route.target.ToString(), headers, observer,
                             absl::StrCat(route.target.ToString(), " via ",
                                          route.hbone_ip.ToString(), " (", identity, ")"),
                             Reopener(worker_, pod_, ctx->client, identity,
                                      SocketAddress{route.hbone_ip, AMBIT_HBONE_PORT}));
  }
  std::string Describe() const override { return dst_.ToString(); }

 private:
  tunnel::Worker& worker_;
  std::shared_ptr<const tunnel::Pod> pod_;
  SocketAddress dst_;
  SocketAddress client_;
};

// Where one ext_authz provider's checks go from one waypoint pod: the provider's Service
// (ExtAuthzTarget), resolved at each connect against the worker's configuration in force, like a
// forwarded request. In the mesh: HBONE with the waypoint pod's certificate to the chosen
// endpoint's tunnel. Outside it (passthrough): a plain TCP connect from the pod's network
// namespace, as the tunnel opens passthrough connections. A refused route fails the connect,
// and with it the check.
class AuthorizerConnector final : public waypoint::UpstreamConnector {
 public:
  AuthorizerConnector(tunnel::Worker& worker, std::weak_ptr<const tunnel::Pod> pod,
                      std::string provider)
      : worker_(worker), pod_(std::move(pod)), provider_(std::move(provider)) {}

  std::unique_ptr<waypoint::ByteStream> Connect(waypoint::ByteStream::Observer* observer) override {
    EventLoop* loop = &worker_.loop();
    auto fail = [&](std::string why) -> std::unique_ptr<waypoint::ByteStream> {
      return std::make_unique<FailedStream>(
          loop, observer,
          absl::UnavailableError(absl::StrCat("ext_authz provider \"", provider_, "\": ", why)));
    };
    std::shared_ptr<const tunnel::Pod> pod = pod_.lock();
    if (pod == nullptr) return fail("the waypoint's pod is gone");
    const auto& snapshot = worker_.snapshot();
    const authz::ExtAuthzProvider* provider = snapshot->FindExtAuthzProvider(provider_);
    if (provider == nullptr) {
      return fail(absl::StrCat("not in configuration ", snapshot->version()));
    }
    std::string why;
    std::optional<SocketAddress> target = snapshot->ExtAuthzTarget(*provider, &why);
    if (!target.has_value()) return fail(why);
    tunnel::Route route = snapshot->Resolve(*target, NextPick(), pod->workload.ips);
    switch (route.kind) {
      case tunnel::Route::Kind::kRefused:
        return fail(route.refused);
      case tunnel::Route::Kind::kPassthrough: {
        auto up = tunnel::ConnectFromPod(worker_, *pod, route.target, /*source=*/nullptr);
        if (!up.ok()) return fail(std::string(up.status().message()));
        return waypoint::SocketStream::Connecting(
            loop, std::move(up->fd), absl::StrCat(route.target.ToString(), " (", provider_, ")"),
            observer);
      }
      case tunnel::Route::Kind::kHbone:
        break;
    }
    const std::string identity = route.workload->identity.ToString();
    auto contexts = worker_.tls();
    const tunnel::TlsContexts::Pair* ctx = contexts ? contexts->Find(pod->spiffe_id) : nullptr;
    if (ctx == nullptr || !ctx->client) {
      return fail(absl::StrCat("no valid certificate for ", pod->spiffe_id));
    }
    auto session = worker_.pool().Get(*pod, ctx->client, identity,
                                      SocketAddress{route.hbone_ip, AMBIT_HBONE_PORT});
    if (!session.ok()) return fail(std::string(session.status().message()));
    hbone::ConnectHeaders headers;
    headers.baggage = absl::StrCat("k8s.namespace.name=", pod->workload.namespace_name,
                                   ",k8s.pod.name=", pod->workload.name);
    return HboneStream::Open(loop, *session, route.target.ToString(), headers, observer,
                             absl::StrCat(route.target.ToString(), " via ",
                                          route.hbone_ip.ToString(), " (", identity, ")"),
                             Reopener(worker_, pod, ctx->client, identity,
                                      SocketAddress{route.hbone_ip, AMBIT_HBONE_PORT}));
  }
  std::string Describe() const override { return absl::StrCat("ext_authz ", provider_); }

 private:
  tunnel::Worker& worker_;
  std::weak_ptr<const tunnel::Pod> pod_;  // the connector may outlive the pod's enrolment
  std::string provider_;
};

// One provider's client with the connector it dials through; the client goes first.
struct ClientHolder {
  std::unique_ptr<AuthorizerConnector> connector;
  std::unique_ptr<waypoint::AuthorizerClient> client;
};

// A check that keeps its client (and the client's connector) alive: a new configuration may
// replace the client while the check runs, and the check must then still finish or fail
// cleanly. The check goes first.
class KeptCheck final : public waypoint::AsyncCheck {
 public:
  KeptCheck(std::shared_ptr<waypoint::AuthorizerClient> client,
            std::unique_ptr<waypoint::AsyncCheck> check)
      : client_(std::move(client)), check_(std::move(check)) {}

 private:
  std::shared_ptr<waypoint::AuthorizerClient> client_;
  std::unique_ptr<waypoint::AsyncCheck> check_;
};

// What the filters see of a client: each check it starts holds the client.
class SharedClient final : public waypoint::AuthorizerClient {
 public:
  explicit SharedClient(std::shared_ptr<waypoint::AuthorizerClient> inner)
      : inner_(std::move(inner)) {}
  std::unique_ptr<waypoint::AsyncCheck> Check(
      const waypoint::AuthzCheckRequest& request,
      std::function<void(waypoint::AuthzCheckResponse)> done) override {
    auto check = inner_->Check(request, std::move(done));
    if (check == nullptr) return nullptr;
    return std::make_unique<KeptCheck>(inner_, std::move(check));
  }
  const authz::ExtAuthzProvider& provider() const override { return inner_->provider(); }

 private:
  std::shared_ptr<waypoint::AuthorizerClient> inner_;
};

// One generation of a pod's clients, by provider name; immutable (a new configuration makes a
// new set, reusing the unchanged clients), so a flow keeps the set it was accepted with.
class ClientSet final : public waypoint::AuthorizerSet {
 public:
  using Map = absl::flat_hash_map<std::string, std::shared_ptr<SharedClient>>;
  explicit ClientSet(Map clients) : clients_(std::move(clients)) {}
  waypoint::AuthorizerClient* Find(const std::string& provider) override {
    auto it = clients_.find(provider);
    return it == clients_.end() ? nullptr : it->second.get();
  }
  const Map& clients() const { return clients_; }

 private:
  Map clients_;
};

std::shared_ptr<SharedClient> NewClient(tunnel::Worker& worker,
                                        const std::shared_ptr<const tunnel::Pod>& pod,
                                        const authz::ExtAuthzProvider& provider) {
  auto holder = std::make_shared<ClientHolder>();
  holder->connector = std::make_unique<AuthorizerConnector>(worker, pod, provider.name);
  const Clock* clock = worker.settings().clock;
  holder->client = provider.kind == authz::ExtAuthzProvider::Kind::kGrpc
                       ? waypoint::NewGrpcAuthorizerClient(provider, holder->connector.get(),
                                                           &worker.loop(), clock)
                       : waypoint::NewHttpAuthorizerClient(provider, holder->connector.get(),
                                                           &worker.loop(), clock);
  waypoint::AuthorizerClient* client = holder->client.get();
  return std::make_shared<SharedClient>(
      std::shared_ptr<waypoint::AuthorizerClient>(std::move(holder), client));
}

// One CONNECT through the waypoint, as the worker accounts for it: owns what the HTTP engine
// reads for this downstream (the context, whose engine keeps its snapshot alive, and the upstream
// connector).
class WaypointFlow final : public tunnel::Flow {
 public:
  WaypointFlow(std::string description, std::unique_ptr<HboneUpstream> upstream)
      : tunnel::Flow(std::move(description)), upstream_(std::move(upstream)) {}

  void Reset(const std::string& reason) override {
    if (fail_) fail_(absl::AbortedError(reason));
  }
  void Bytes(uint64_t* from_client, uint64_t* to_client) const override {
    *from_client = counts_ ? counts_->in : 0;
    *to_client = counts_ ? counts_->out : 0;
  }

  waypoint::ProxyContext ctx;
  std::unique_ptr<HboneUpstream> upstream_;
  std::shared_ptr<const HboneStream::Counts> counts_;
  std::function<void(const absl::Status&)> fail_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<L7Handler>> L7Handler::Create(WaypointOptions options) {
  std::shared_ptr<L7Handler> h(new L7Handler(std::move(options)));
  h->authn_.resize(std::max(1, h->options_.workers));
  h->authorizers_.resize(h->authn_.size());
  h->per_worker_.resize(h->authn_.size());
  for (PerWorker& w : h->per_worker_) w.jwt_cache = std::make_shared<authn::VerifiedJwtCache>();
  auto fetcher = tls::HttpsJwksFetcher::Create({.ca_file = h->options_.jwks_ca_file});
  if (fetcher.ok()) {
    h->fetcher_ = std::move(*fetcher);
  } else if (!h->options_.jwks_ca_file.empty()) {
    return fetcher.status();  // the operator named roots that do not load: a usage error
  } else {
    // No system roots on this machine: jwksUri key sets cannot be fetched, so tokens of those
    // issuers are rejected (as while a key set is unavailable); everything else is served.
    AMBIT_LOG(kComponent, Error) << "jwksUri key sets cannot be fetched: "
                                 << fetcher.status().message()
                                 << " (tokens of issuers whose rules name a jwksUri are rejected; "
                                    "--jwks-ca-file names other roots)";
    h->fetcher_ = std::make_unique<UnavailableFetcher>(fetcher.status());
  }
  h->jwks_ = std::make_unique<authn::JwksCache>(h->fetcher_.get(), &RealClock::Get());
  h->refresher_ = std::make_unique<waypoint::JwksRefresher>(h->jwks_.get(), &RealClock::Get());
  return h;
}

L7Handler::~L7Handler() {
  // The refresher's thread reads the cache and the fetcher: it goes first.
  if (refresher_) refresher_->Stop();
}

L7Handler::Authn L7Handler::Build(const std::shared_ptr<const tunnel::MeshSnapshot>& snapshot) {
  Authn a{snapshot, nullptr, ""};
  auto built = authn::Authenticator::Create(snapshot->request_authentications(),
                                            {.root_namespace = snapshot->root_namespace()},
                                            &authn::CryptoSignatureVerifier(), jwks_.get());
  if (built.ok()) {
    a.authenticator = std::move(*built);
  } else {
    a.error = absl::StrCat("RequestAuthentication could not be loaded: ", built.status().message());
    AMBIT_LOG(kComponent, Error) << "configuration " << snapshot->version() << ": " << a.error
                                 << " (every request through the waypoint is refused)";
  }
  return a;
}

const L7Handler::Authn& L7Handler::AuthnFor(
    tunnel::Worker& worker, const std::shared_ptr<const tunnel::MeshSnapshot>& snapshot) {
  Authn& mine = authn_[worker.index()];
  if (mine.snapshot == snapshot) return mine;
  absl::MutexLock lock(&mu_);
  if (current_.snapshot != snapshot) {
    if (current_.snapshot != nullptr && snapshot->version() < current_.snapshot->version()) {
      // A worker that has not switched to the newest configuration yet decides by its own.
      mine = Build(snapshot);
      return mine;
    }
    current_ = Build(snapshot);
    refresher_->SetRules(snapshot->request_authentications());
  }
  mine = current_;
  return mine;
}

// One waypoint pod's authorizer clients on one worker: the set in force and what it was built
// from. Only its worker's thread touches it.
class L7Handler::PodAuthorizers {
 public:
  explicit PodAuthorizers(std::weak_ptr<const tunnel::Pod> pod) : pod_(std::move(pod)) {}

  bool IsFor(const std::shared_ptr<const tunnel::Pod>& pod) const { return pod_.lock() == pod; }
  bool Expired() const { return pod_.expired(); }

  // Brings the set up to `snapshot`: a provider whose definition is unchanged keeps its client
  // (and its open connections); a changed or new one gets a new client; a removed one goes
  // (checks in flight hold their client until they end).
  void Sync(tunnel::Worker& worker, const std::shared_ptr<const tunnel::Pod>& pod,
            const tunnel::MeshSnapshot& snapshot) {
    if (set_ != nullptr && version_ == snapshot.version()) return;
    ClientSet::Map next;
    for (const authz::ExtAuthzProvider& p : snapshot.ext_authz_providers()) {
      std::shared_ptr<SharedClient> client;
      if (set_ != nullptr) {
        auto it = set_->clients().find(p.name);
        if (it != set_->clients().end() && it->second->provider() == p) client = it->second;
      }
      if (client == nullptr) {
        client = NewClient(worker, pod, p);
        if (!p.unresolved.empty()) {
          AMBIT_LOG(kComponent, Warning)
              << "configuration " << snapshot.version() << ": ext_authz provider \"" << p.name
              << "\" is unresolved: " << p.unresolved
              << " (CUSTOM policies naming it deny every request)";
        }
      }
      next.emplace(p.name, std::move(client));
    }
    set_ = std::make_shared<ClientSet>(std::move(next));
    version_ = snapshot.version();
  }

  const std::shared_ptr<ClientSet>& set() const { return set_; }

 private:
  std::weak_ptr<const tunnel::Pod> pod_;
  uint64_t version_ = 0;
  std::shared_ptr<ClientSet> set_;
};

std::shared_ptr<L7Handler::PodAuthorizers> L7Handler::AuthorizersFor(
    tunnel::Worker& worker, const std::shared_ptr<const tunnel::Pod>& pod) {
  auto& by_pod = authorizers_[worker.index()];
  auto it = by_pod.find(pod->uid);
  if (it == by_pod.end() || !it->second->IsFor(pod)) {
    // A pod seen for the first time, or enrolled again (new network namespace): new clients.
    // Pods that are gone drop theirs now, so the map stays as small as the pods served.
    absl::erase_if(by_pod, [](const auto& kv) { return kv.second->Expired(); });
    it = by_pod.insert_or_assign(pod->uid, std::make_shared<PodAuthorizers>(pod)).first;
  }
  it->second->Sync(worker, pod, *worker.snapshot());
  return it->second;
}

absl::StatusOr<std::shared_ptr<waypoint::AuthorizerClient>> L7Handler::ClientFor(
    tunnel::Worker& worker, const std::shared_ptr<const tunnel::Pod>& pod,
    const std::string& provider) {
  const auto& snapshot = worker.snapshot();
  const authz::ExtAuthzProvider* p = snapshot->FindExtAuthzProvider(provider);
  if (p == nullptr) {
    return absl::NotFoundError(absl::StrCat("no ext_authz provider \"", provider,
                                            "\" in configuration ", snapshot->version(),
                                            " (MeshConfig extensionProviders)"));
  }
  if (!p->unresolved.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("ext_authz provider \"", provider, "\" is unresolved: ", p->unresolved));
  }
  std::shared_ptr<PodAuthorizers> pa = AuthorizersFor(worker, pod);
  auto it = pa->set()->clients().find(provider);
  if (it == pa->set()->clients().end()) {
    return absl::InternalError(absl::StrCat("no client for ext_authz provider \"", provider, "\""));
  }
  return std::shared_ptr<waypoint::AuthorizerClient>(it->second);
}

waypoint::HttpMetrics::RequestLabels L7Handler::RequestLabels(const tunnel::MeshSnapshot& snapshot,
                                                              const tunnel::Pod& pod,
                                                              const tunnel::FlowRecord& record,
                                                              const SocketAddress& destination) {
  // The series of workloads that left the configuration go, once per configuration version.
  const uint64_t version = snapshot.version();
  if (pruned_version_.exchange(version) != version) {
    std::vector<std::string> gone = metrics_.Workloads();
    absl::flat_hash_set<std::string> present;
    std::string key;
    for (const mesh::Workload& w : snapshot.workloads()) {
      key.assign(w.namespace_name);
      key += '/';
      key += w.workload_name.empty() ? w.name : w.workload_name;
      present.insert(key);
    }
    std::erase_if(gone, [&](const std::string& k) { return present.contains(k); });
    metrics_.Forget(gone);
  }
  // The destination as Istio's waypoint names it: the Service dialled (a cluster IP), and the
  // workload when it is known for every request of the connection (a pod address, or a
  // Service with one endpoint; the waypoint picks an endpoint per request otherwise).
  tunnel::FlowRecord r = record;
  tunnel::Route route = snapshot.Resolve(destination, 0, pod.workload.ips);
  if (route.service != nullptr) {
    r.destination.service = absl::StrCat(route.service->namespace_name, "/", route.service->name);
    if (route.service->endpoints.size() == 1) {
      r.destination = tunnel::PeerOf(*route.service->endpoints[0], route.target);
      r.destination.service = absl::StrCat(route.service->namespace_name, "/", route.service->name);
    }
  }
  r.cluster = snapshot.cluster_id();
  std::vector<std::pair<std::string, std::string>> labels = tunnel::IstioLabels(r);
  labels.erase(labels.begin());  // the reporter: the waypoint's own
  for (auto& [name, value] : labels) {
    if (name == "request_protocol") value = "http";
  }
  return {waypoint::HttpMetrics::RenderLabels(labels), tunnel::WorkloadKey(r.source),
          tunnel::WorkloadKey(r.destination)};
}

hbone::StreamObserver* L7Handler::OnConnect(tunnel::Worker& worker, hbone::HboneSession& session,
                                            hbone::StreamId stream,
                                            const hbone::ConnectRequest& request,
                                            const std::shared_ptr<const tunnel::Pod>& pod,
                                            const SocketAddress& peer, tunnel::FlowRecord record) {
  std::shared_ptr<const tunnel::MeshSnapshot> snapshot = worker.snapshot();
  std::string description =
      absl::StrCat("waypoint pod=", pod->uid, " src=", peer.ip.ToString(),
                   " dst=", request.destination.ToString(), " peer=", request.peer_identity);
  record.destination = tunnel::PeerOf(*snapshot, request.destination, "");
  auto refuse = [&](int status, const std::string& why) -> hbone::StreamObserver* {
    AMBIT_LOG(kComponent, Warning) << description << ": " << why << "; answered " << status;
    (void)session.Respond(stream, status, why);
    worker.Refuse(std::move(record), tunnel::FlowEnd{false, "CONNECT", why});
    return nullptr;
  };
  const tunnel::WaypointInfo* wp = snapshot->WaypointOf(pod->workload);
  if (wp == nullptr) {
    return refuse(503, absl::StrCat("pod ", pod->uid, " is no waypoint's pod in configuration ",
                                    snapshot->version()));
  }
  std::string why;
  mesh::AppProtocol app = mesh::AppProtocol::kDetect;
  std::optional<authz::Workload> target =
      snapshot->WaypointTarget(*wp, request.destination, &why, &app);
  if (!target.has_value()) return refuse(400, why);
  if (snapshot->engine() == nullptr) {
    return refuse(503, "the configuration's policies did not compile (fail closed)");
  }
  const Authn& authn = AuthnFor(worker, snapshot);
  if (authn.authenticator == nullptr) return refuse(503, authn.error);
  if (auto s = session.Respond(stream, 200); !s.ok()) {
    return refuse(503, std::string(s.message()));
  }
  record.policy = absl::StrCat("waypoint ", wp->key);
  AMBIT_LOG(kComponent, Debug) << description << " waypoint=" << wp->key;

  auto flow = std::make_unique<WaypointFlow>(
      description, std::make_unique<HboneUpstream>(worker, pod, request.destination, peer));
  WaypointFlow* raw = flow.get();
  raw->record() = std::move(record);
  waypoint::ProxyContext& ctx = raw->ctx;
  ctx.loop = &worker.loop();
  ctx.options = options_.proxy;
  // Istio's protocol selection: declared opaque ports are TCP, declared HTTP ones HTTP, the rest
  // is detected from the first bytes.
  ctx.options.tcp_only = app == mesh::AppProtocol::kOpaque;
  ctx.options.detect_protocol = app == mesh::AppProtocol::kDetect;
  // The engine lives as long as the snapshot the flow holds.
  std::shared_ptr<const authz::Engine> engine(snapshot, snapshot->engine());
  ctx.engine = engine;
  ctx.target = *target;
  // JWT authentication first (it fills request.auth), then authorization (filter.h).
  PerWorker& mine = per_worker_[worker.index()];
  ctx.filters.push_back(std::make_shared<waypoint::AuthnFilter>(
      authn.authenticator, *target, worker.settings().clock, mine.jwt_cache));
  // CUSTOM policies ask the providers' clients of this pod on this worker (shared by its flows,
  // so their connections are reused); the check's destination principal is the waypoint's own.
  // The checks are counted in the process's HTTP metrics (ambitd's /metrics shows them).
  ctx.filters.push_back(std::make_shared<waypoint::AuthzFilter>(
      engine, *target, AuthorizersFor(worker, pod)->set(), pod->spiffe_id, &metrics_));
  ctx.upstream = raw->upstream_.get();
  ctx.destination = request.destination;
  ctx.metrics = &metrics_;
  ctx.request_labels = RequestLabels(*snapshot, *pod, raw->record(), request.destination);
  ctx.clock = worker.settings().clock;
  if (mine.access_log == nullptr) {
    mine.access_log = waypoint::AccessLogBuffer::Create(STDERR_FILENO, &worker.loop());
  }
  ctx.access_log =
      [weak = std::weak_ptr<waypoint::AccessLogBuffer>(mine.access_log)](const std::string& line) {
        if (!log::Enabled(kAccessLog, log::Level::kInfo)) return;
        if (auto buffer = weak.lock()) {
          buffer->Append(log::FormatLine(kAccessLog, log::Level::kInfo, line));
        } else {
          AMBIT_LOG(kAccessLog, Info) << line;  // the worker is stopping
        }
      };
  // Re-decided when the configuration changes: a destination that no longer uses this waypoint
  // (or a waypoint that is gone) ends its streams.
  raw->SetRecheck([dst = request.destination,
                   uid = pod->workload](const tunnel::MeshSnapshot& next) -> absl::Status {
    const tunnel::WaypointInfo* now = next.WaypointOf(uid);
    if (now == nullptr) return absl::PermissionDeniedError("no longer a waypoint's pod");
    std::string why;
    if (!next.WaypointTarget(*now, dst, &why).has_value()) {
      return absl::PermissionDeniedError(why);
    }
    return absl::OkStatus();
  });

  auto down =
      HboneStream::Accepted(&worker.loop(), session.shared_from_this(), stream, peer.ToString());
  hbone::StreamObserver* observer = down->stream_observer();
  raw->counts_ = down->counts();
  raw->fail_ = down->FailHandle();
  worker.Adopt(std::move(flow));
  waypoint::DownstreamInfo info;
  info.peer = peer;
  info.identity = request.peer_identity;
  waypoint::ServeConnection(&raw->ctx, std::move(down), std::move(info),
                            [&worker, raw] { worker.Retire(raw); });
  return observer;
}

void L7Handler::OnWorkerStopped(tunnel::Worker& worker) {
  if (static_cast<size_t>(worker.index()) < authorizers_.size()) {
    authorizers_[worker.index()].clear();
  }
  if (static_cast<size_t>(worker.index()) < per_worker_.size()) {
    // Its flows are gone: every line they will write is buffered. Written now, and the buffer
    // goes with the loop its timer was armed on.
    per_worker_[worker.index()].access_log.reset();
  }
}

namespace {

tunnel::ExtAuthzProbeResult::HeaderEdit ProbeEdit(const waypoint::HeaderEdit& e) {
  using Op = tunnel::ExtAuthzProbeResult::HeaderEdit::Op;
  return {e.op == waypoint::HeaderEdit::Op::kSet      ? Op::kSet
          : e.op == waypoint::HeaderEdit::Op::kAppend ? Op::kAppend
                                                      : Op::kRemove,
          e.name, e.value};
}

// One probe in flight: keeps the client alive for its check, and answers once.
struct ProbeState {
  std::shared_ptr<waypoint::AuthorizerClient> client;
  std::unique_ptr<waypoint::AsyncCheck> check;
  tunnel::ExtAuthzProbeResult result;
  std::function<void(tunnel::ExtAuthzProbeResult)> done;
  bool answered = false;

  void Answer() {
    if (answered) return;
    answered = true;
    done(std::move(result));
  }
};

}  // namespace

void L7Handler::ProbeExtAuthz(tunnel::Worker& worker,
                              const std::vector<std::shared_ptr<const tunnel::Pod>>& pods,
                              const tunnel::ExtAuthzProbe& probe, absl::Duration bound,
                              std::function<void(tunnel::ExtAuthzProbeResult)> done) {
  using Outcome = tunnel::ExtAuthzProbeResult::Outcome;
  tunnel::ExtAuthzProbeResult result;
  const std::shared_ptr<const tunnel::MeshSnapshot>& snapshot = worker.snapshot();
  std::shared_ptr<const tunnel::Pod> pod;
  for (const auto& p : pods) {
    const tunnel::WaypointInfo* wp = snapshot->WaypointOf(p->workload);
    if (wp == nullptr) continue;
    if (probe.waypoint_pod.empty() ? wp->key == probe.waypoint : p->uid == probe.waypoint_pod) {
      pod = p;
      break;
    }
  }
  if (pod == nullptr) {
    result.error =
        probe.waypoint_pod.empty()
            ? absl::StrCat("no pod of waypoint ", probe.waypoint,
                           " is served by the waypoint data plane on this node")
            : absl::StrCat("pod ", probe.waypoint_pod, " is no waypoint pod served on this node");
    return done(std::move(result));
  }
  result.waypoint_pod = pod->uid;
  result.outcome = Outcome::kError;
  absl::StatusOr<std::shared_ptr<waypoint::AuthorizerClient>> client =
      ClientFor(worker, pod, probe.provider);
  if (!client.ok()) {
    const absl::StatusCode code = client.status().code();
    if (code == absl::StatusCode::kNotFound || code == absl::StatusCode::kFailedPrecondition) {
      // No such provider, or its service does not resolve: the filter denies 403 without asking.
      result.unresolved = std::string(client.status().message());
    } else {
      result = tunnel::ExtAuthzProbeResult();
      result.error = absl::StrCat("the waypoint has no client for ext_authz provider \"",
                                  probe.provider, "\": ", client.status().message());
    }
    return done(std::move(result));
  }
  const authz::ExtAuthzProvider& provider = (*client)->provider();
  result.provider_kind = provider.kind == authz::ExtAuthzProvider::Kind::kGrpc ? "grpc" : "http";
  result.fail_open = provider.fail_open;
  result.status_on_error = provider.status_on_error;
  result.timeout = provider.timeout;

  waypoint::AuthzCheckRequest request;
  request.method = probe.method;
  request.path = probe.path;
  request.host = probe.host;
  request.protocol = "HTTP/1.1";
  request.headers = probe.headers;
  request.source = probe.source;
  request.destination = probe.destination;
  request.source_principal = probe.source_principal;
  request.destination_principal = pod->spiffe_id;
  request.time = worker.Now();
  for (const auto& [name, value] : probe.headers) {
    if (name == "x-request-id") request.request_id = value;
  }
  request.body = probe.body;

  auto state = std::make_shared<ProbeState>();
  state->client = *std::move(client);
  state->result = std::move(result);
  state->done = std::move(done);
  std::weak_ptr<ProbeState> weak = state;
  state->check = state->client->Check(request, [weak](waypoint::AuthzCheckResponse r) {
    auto s = weak.lock();
    if (s == nullptr) return;
    tunnel::ExtAuthzProbeResult& out = s->result;
    out.outcome = r.outcome == waypoint::AuthzCheckResponse::Outcome::kAllow  ? Outcome::kAllow
                  : r.outcome == waypoint::AuthzCheckResponse::Outcome::kDeny ? Outcome::kDeny
                                                                              : Outcome::kError;
    out.status = r.status;
    out.deny_headers = r.deny_headers;
    out.deny_body = r.deny_body;
    for (const auto& e : r.upstream_edits) out.upstream_edits.push_back(ProbeEdit(e));
    for (const auto& e : r.downstream_edits) out.downstream_edits.push_back(ProbeEdit(e));
    out.detail = r.detail;
    out.latency = r.latency;
    s->Answer();
  });
  // The timer holds the state (and so the client and the check) until it fires: a check still
  // running then is cancelled and reported as an error.
  const absl::Duration wait = std::min(provider.timeout, bound);
  const absl::Time started = worker.Now();
  worker.loop().RunAfter(wait, [state, wait, started, &worker] {
    if (state->answered) return;
    state->check.reset();
    state->result.outcome = Outcome::kError;
    state->result.detail = absl::StrCat("no answer within ", absl::FormatDuration(wait),
                                        wait < state->result.timeout ? " (the check's bound)" : "");
    state->result.latency = worker.Now() - started;
    state->Answer();
  });
}

void L7Handler::OnAccepted(tunnel::Worker& worker, const std::shared_ptr<const tunnel::Pod>& pod,
                           tunnel::ListenerKind kind, UniqueFd client) {
  auto peer = PeerAddress(client.get());
  auto local = LocalAddress(client.get());
  const bool outbound = kind == tunnel::ListenerKind::kOutbound;
  const std::string why = outbound ? std::string("a waypoint's pod opens no redirected connections")
                                   : std::string("a waypoint takes only HBONE (port 15008)");
  AMBIT_LOG(kComponent, Warning) << (outbound ? "outbound" : "inbound") << " pod=" << pod->uid
                                 << " src=" << (peer.ok() ? peer->ToString() : "?")
                                 << " dst=" << (local.ok() ? local->ToString() : "?") << ": " << why
                                 << "; connection reset";
  CloseWithReset(client);
  tunnel::FlowRecord record;
  record.direction = outbound ? tunnel::FlowDirection::kOutbound : tunnel::FlowDirection::kInbound;
  record.pod = pod->uid;
  record.mode = outbound ? "unknown" : "plaintext";
  if (peer.ok()) record.source = tunnel::PeerOf(*worker.snapshot(), *peer, "");
  if (local.ok()) record.destination = tunnel::PeerOf(*pod, *local);
  worker.Refuse(std::move(record), tunnel::FlowEnd{true, "DENY", why});
}

}  // namespace ambit::waypointd
