#pragma once

// ambit-waypoint's part of the data-plane shell (tunnel::InboundHandler, agent/tunnel/l7_hook.h):
// on a waypoint pod's 15008, each CONNECT a node tunnel sends is checked (the destination must use
// this waypoint), answered 200 and handed to the HTTP engine (agent/waypoint) as its downstream;
// each request the engine forwards goes upstream over HBONE, from the waypoint's pod with the
// waypoint's own certificate, to the destination's tunnel (a cluster IP is resolved to one of the
// service's endpoints). The engine decides per request: JWT authentication, then L7
// AuthorizationPolicy attached to the waypoint (targetRefs to its Gateway or the addressed
// Service). The RequestAuthentications travel in the configuration snapshot; their jwksUri key
// sets are fetched over HTTPS by one refresher thread (the workers only read the cache). The pod's
// outbound and plaintext listeners take nothing: a waypoint is reached only over HBONE, and its own
// connections carry the socket mark the redirect skips.
//
// CUSTOM AuthorizationPolicy: the providers (MeshConfig extensionProviders) travel in the snapshot;
// each worker keeps, per waypoint pod, one authorizer client per provider (connections are reused
// across requests), rebuilt only for a provider whose definition changes. A check leaves from the
// waypoint's pod like a forwarded request: over HBONE with the pod's certificate when the
// authorizer's Service is in the mesh, else a plain TCP connect from the pod's network namespace.
//
// Per worker, as the hot path takes no locks: the authorizer clients, a cache of verified JWTs
// (authn/jwt_cache.h) and the access log's batch (waypoint/access_log_buffer.h; written by size,
// within 50 ms, and when the worker stops).
//
// Thread-safety: OnConnect, OnAccepted and ClientFor run on the worker given; per-worker state
// is indexed by Worker::index().

#include <atomic>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agent/authn/authenticator.h"
#include "agent/authn/jwks_provider.h"
#include "agent/authn/jwt_cache.h"
#include "agent/tls/https_fetch.h"
#include "agent/tunnel/l7_hook.h"
#include "agent/tunnel/mesh_snapshot.h"
#include "agent/waypoint/access_log_buffer.h"
#include "agent/waypoint/ext_authz_client.h"
#include "agent/waypoint/jwks_refresher.h"
#include "agent/waypoint/metrics.h"
#include "agent/waypoint/proxy.h"

namespace ambit::waypointd {

struct WaypointOptions {
  waypoint::ProxyOptions proxy;  // Envoy's default limits and timeouts
  int workers = 2;
  std::string jwks_ca_file;  // roots for jwksUri servers; empty: the system's
};

class L7Handler final : public tunnel::InboundHandler {
 public:
  static absl::StatusOr<std::shared_ptr<L7Handler>> Create(WaypointOptions options);
  ~L7Handler() override;

  hbone::StreamObserver* OnConnect(tunnel::Worker& worker, hbone::HboneSession& session,
                                   hbone::StreamId stream, const hbone::ConnectRequest& request,
                                   const std::shared_ptr<const tunnel::Pod>& pod,
                                   const SocketAddress& peer, tunnel::FlowRecord record) override;
  void OnAccepted(tunnel::Worker& worker, const std::shared_ptr<const tunnel::Pod>& pod,
                  tunnel::ListenerKind kind, UniqueFd client) override;

  std::string RenderMetrics() const override { return metrics_.RenderPrometheus(); }
  // Drops the worker's authorizer clients while its loop still exists.
  void OnWorkerStopped(tunnel::Worker& worker) override;

  // `ambitctl check`: asks the provider with the client this worker's requests from the pod use
  // (ClientFor), bounded by min(provider timeout, `bound`).
  void ProbeExtAuthz(tunnel::Worker& worker,
                     const std::vector<std::shared_ptr<const tunnel::Pod>>& pods,
                     const tunnel::ExtAuthzProbe& probe, absl::Duration bound,
                     std::function<void(tunnel::ExtAuthzProbeResult)> done) override;

  // The client of `provider` for requests through `pod` on `worker` (the one OnConnect's filters
  // use, so its connections are shared), under the worker's current snapshot. NotFound when the
  // snapshot has no such provider; FailedPrecondition when its service is unresolved (the message
  // says why). Call on the worker's thread. The client stays valid while the caller holds it, also
  // after a new snapshot replaces it.
  absl::StatusOr<std::shared_ptr<waypoint::AuthorizerClient>> ClientFor(
      tunnel::Worker& worker, const std::shared_ptr<const tunnel::Pod>& pod,
      const std::string& provider);

 private:
  class PodAuthorizers;  // one waypoint pod's clients on one worker (l7_handler.cc)
  // The worker's clients for `pod`, brought up to date with the worker's snapshot.
  std::shared_ptr<PodAuthorizers> AuthorizersFor(tunnel::Worker& worker,
                                                 const std::shared_ptr<const tunnel::Pod>& pod);

  // The RequestAuthentications of one configuration, built once for every worker.
  struct Authn {
    std::shared_ptr<const tunnel::MeshSnapshot> snapshot;  // what it was built from
    std::shared_ptr<const authn::Authenticator> authenticator;
    std::string error;  // why it could not be built: every CONNECT is refused (fail closed)
  };
  explicit L7Handler(WaypointOptions options) : options_(std::move(options)) {}
  // Istio's labels of the requests of one downstream connection to `destination` (the source
  // and destination workloads, the Service, principals, cluster); forgets the series of
  // workloads gone from `snapshot` first, once per configuration version.
  waypoint::HttpMetrics::RequestLabels RequestLabels(const tunnel::MeshSnapshot& snapshot,
                                                     const tunnel::Pod& pod,
                                                     const tunnel::FlowRecord& record,
                                                     const SocketAddress& destination);
  Authn Build(const std::shared_ptr<const tunnel::MeshSnapshot>& snapshot);
  // The worker's copy when it is for `snapshot` (no lock); otherwise the shared one, built by the
  // first worker to see the configuration (which also hands its jwksUris to the refresher).
  const Authn& AuthnFor(tunnel::Worker& worker,
                        const std::shared_ptr<const tunnel::MeshSnapshot>& snapshot)
      ABSL_LOCKS_EXCLUDED(mu_);

  WaypointOptions options_;
  waypoint::HttpMetrics metrics_;            // every worker's requests
  std::atomic<uint64_t> pruned_version_{0};  // the configuration metrics_ was last pruned for
  std::vector<Authn> authn_;  // by worker index: each worker's own copy of `current_`
  // By worker index, only that worker's thread touches its entry: tokens verified on that
  // worker (kept across configurations: an entry matches only the key set it verified under),
  // and its access-log lines waiting for their batch's write (made on its first flow).
  struct PerWorker {
    std::shared_ptr<authn::VerifiedJwtCache> jwt_cache;
    std::shared_ptr<waypoint::AccessLogBuffer> access_log;
  };
  std::vector<PerWorker> per_worker_;
  // By worker index, then pod uid: only that worker's thread touches its map.
  std::vector<absl::flat_hash_map<std::string, std::shared_ptr<PodAuthorizers>>> authorizers_;
  // jwksUri key sets: fetched by the refresher's thread, read by the workers.
  std::unique_ptr<authn::JwksFetcher> fetcher_;
  std::unique_ptr<authn::JwksCache> jwks_;
  std::unique_ptr<waypoint::JwksRefresher> refresher_;
  absl::Mutex mu_;
  Authn current_ ABSL_GUARDED_BY(mu_);  // the newest configuration's
};

}  // namespace ambit::waypointd
