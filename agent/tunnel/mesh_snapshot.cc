#include "agent/tunnel/mesh_snapshot.h"

#include <malloc.h>

#include <algorithm>
#include <utility>

#include "abi/redirect.h"
#include "absl/strings/str_cat.h"
#include "agent/authz/compile.h"
#include "agent/common/log.h"
#include "agent/common/status.h"
#include "agent/mesh/wire.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::tunnel {

absl::StatusOr<std::shared_ptr<const MeshSnapshot>> MeshSnapshot::FromProto(
    const ambit::dataplane::v1::Snapshot& s) {
  AMBIT_ASSIGN_OR_RETURN(mesh::Snapshot snapshot, mesh::FromProto(s));
  return Create(std::move(snapshot));
}

absl::StatusOr<std::shared_ptr<const MeshSnapshot>> MeshSnapshot::Decode(absl::string_view bytes) {
  AMBIT_ASSIGN_OR_RETURN(mesh::Snapshot snapshot, mesh::DecodeSnapshot(bytes));
  return Create(std::move(snapshot));
}

std::shared_ptr<const MeshSnapshot> MeshSnapshot::Create(mesh::Snapshot s) {
  auto snap = std::make_shared<MeshSnapshot>();
  snap->version_ = s.version;
  snap->trust_domain_ = std::move(s.trust_domain);
  snap->trust_domain_aliases_ = std::move(s.trust_domain_aliases);
  if (!s.root_namespace.empty()) snap->root_namespace_ = s.root_namespace;
  snap->cluster_id_ = s.cluster_id;
  snap->reserved_ports_.insert(s.reserved_ports.begin(), s.reserved_ports.end());
  snap->request_authentications_ = std::move(s.request_authentications);
  snap->ext_authz_providers_ = std::move(s.ext_authz_providers);
  // The records move in whole (no copy per peer); the index points at them.
  snap->workloads_ = std::move(s.workloads);
  snap->workloads_.shrink_to_fit();
  size_t addresses = 0;
  for (const auto& w : snap->workloads_) addresses += w.ips.size();
  snap->by_ip_.reserve(addresses);
  for (const auto& w : snap->workloads_) {
    for (const auto& ip : w.ips) snap->by_ip_[ip] = &w;
  }
  // Endpoints name workloads by "namespace/name". The index holds views of the records' own
  // strings (workloads_ no longer moves), not a key string per peer, and only when needed.
  absl::flat_hash_map<std::pair<absl::string_view, absl::string_view>, const mesh::Workload*>
      by_key;
  if (!s.services.empty() || !s.waypoints.empty()) {
    by_key.reserve(snap->workloads_.size());
    for (const auto& w : snap->workloads_) by_key[{w.namespace_name, w.name}] = &w;
  }
  for (const auto& wp : s.waypoints) {
    auto info = std::make_unique<WaypointInfo>();
    info->key = wp.Key();
    for (const absl::string_view key : wp.instances) {
      const size_t slash = key.find('/');
      if (slash == absl::string_view::npos) continue;
      auto it = by_key.find(std::make_pair(key.substr(0, slash), key.substr(slash + 1)));
      if (it != by_key.end()) info->instances.push_back(it->second);
    }
    snap->waypoints_[info->key] = std::move(info);
  }
  auto waypoint = [&snap](const std::string& key) -> const WaypointInfo* {
    if (key.empty()) return nullptr;
    auto it = snap->waypoints_.find(key);
    return it == snap->waypoints_.end() ? nullptr : it->second.get();
  };
  auto bind = [&snap](const mesh::Workload* w, const WaypointInfo* wp) {
    if (wp == nullptr || !w->enrolled_here) return;
    auto& list = snap->bound_to_[w];
    if (std::find(list.begin(), list.end(), wp) == list.end()) list.push_back(wp);
  };
  for (const auto& w : snap->workloads_) bind(&w, waypoint(w.waypoint));
  // Only the services providers name are indexed by key: a key string per service would make
  // every data plane's memory grow with the cluster for the waypoint's few.
  absl::flat_hash_set<std::string> provider_services;
  for (const auto& p : snap->ext_authz_providers_) {
    if (!p.service_key.empty()) provider_services.insert(p.service_key);
  }
  for (auto& svc : s.services) {
    auto info = std::make_shared<ServiceInfo>();
    if (!provider_services.empty() && provider_services.contains(svc.Key())) {
      snap->ext_authz_services_[svc.Key()] = info;
    }
    info->waypoint = waypoint(svc.waypoint);
    info->namespace_name = std::move(svc.namespace_name);
    info->name = std::move(svc.name);
    for (const auto& p : svc.ports) {
      // Connections reaching the data plane are TCP: a UDP or SCTP port routes none of them.
      if (p.protocol != mesh::Protocol::kTcp) continue;
      info->target_ports[p.port] = p.target_port;
      if (p.app != mesh::AppProtocol::kDetect) info->app_protocols[p.port] = p.app;
    }
    for (const absl::string_view key : svc.endpoints) {
      const size_t slash = key.find('/');
      if (slash == absl::string_view::npos) continue;
      auto it = by_key.find(std::make_pair(key.substr(0, slash), key.substr(slash + 1)));
      if (it != by_key.end()) {
        info->endpoints.push_back(it->second);
        if (it->second->enrolled_here) snap->local_services_[it->second].push_back(info);
        // Istio's advice for a waypoint's workloads (an ALLOW for the waypoint's identity
        // alone), built in: a service's pod addressed directly would skip its L7 policy.
        bind(it->second, info->waypoint);
      }
    }
    info->cluster_ips = std::move(svc.cluster_ips);
    for (const auto& ip : info->cluster_ips) snap->services_[ip] = info;
  }
  std::vector<authz::CompiledPolicy> compiled;
  for (const auto& p : s.authorization_policies) {
    std::string name = absl::StrCat(p.namespace_name, "/", p.name);
    auto c = authz::Compile(p);
    if (!c.ok()) {
      // The agent validated it; a failure here means the two sides disagree. Say so, skip it.
      snap->authz_errors_.push_back(
          absl::StrCat("AuthorizationPolicy ", name, ": ", c.status().message()));
      continue;
    }
    compiled.push_back(std::move(*c));
  }
  // One policy the data plane cannot compile makes every decision unknowable (a dropped DENY
  // allows, a dropped ALLOW opens the workload): build no engine, so Authorize fails closed.
  if (!snap->authz_errors_.empty()) return snap;
  authz::EngineOptions options;
  if (!s.root_namespace.empty()) options.root_namespace = s.root_namespace;
  // As the agent's engine (config::AuthzEngineOptions): an empty trust domain is Istio's default.
  options.trust_domains = authz::TrustDomainBundle::Of(snap->trust_domain_.empty()
                                                           ? authz::kClusterLocalTrustDomain
                                                           : absl::string_view(snap->trust_domain_),
                                                       snap->trust_domain_aliases_);
  auto engine = authz::Engine::Create(std::move(compiled), options);
  if (engine.ok()) {
    snap->authz_ = std::move(*engine);
  } else {
    snap->authz_errors_.push_back(std::string(engine.status().message()));
  }
  return snap;
}

const WaypointInfo* MeshSnapshot::WaypointOf(const mesh::Workload& pod) const {
  for (const auto& [key, wp] : waypoints_) {
    for (const mesh::Workload* w : wp->instances) {
      if (w->namespace_name == pod.namespace_name && w->name == pod.name) return wp.get();
    }
  }
  return nullptr;
}

std::optional<authz::Workload> MeshSnapshot::WaypointTarget(const WaypointInfo& wp,
                                                            const SocketAddress& dst,
                                                            std::string* why,
                                                            mesh::AppProtocol* app) const {
  if (app != nullptr) *app = mesh::AppProtocol::kDetect;
  authz::Workload target;
  authz::WaypointRef ref;
  const size_t slash = wp.key.find('/');
  ref.namespace_name = wp.key.substr(0, slash);
  ref.name = slash == std::string::npos ? wp.key : wp.key.substr(slash + 1);
  if (auto it = services_.find(dst.ip); it != services_.end()) {
    const ServiceInfo& svc = *it->second;
    if (svc.waypoint != &wp) {
      *why = absl::StrCat("service ", svc.namespace_name, "/", svc.name, " (", dst.ToString(),
                          ") does not use waypoint ", wp.key);
      return std::nullopt;
    }
    if (!svc.target_ports.contains(dst.port)) {
      *why = absl::StrCat("port ", dst.port, " is not a TCP port of service ", svc.namespace_name,
                          "/", svc.name);
      return std::nullopt;
    }
    if (auto declared = svc.app_protocols.find(dst.port);
        app != nullptr && declared != svc.app_protocols.end()) {
      *app = declared->second;
    }
    target.namespace_name = svc.namespace_name;
    ref.services.push_back({svc.name, svc.namespace_name});
    target.waypoint = std::move(ref);
    return target;
  }
  const mesh::Workload* w = WorkloadByIp(dst.ip);
  if (w == nullptr || w->waypoint != wp.key) {
    *why = absl::StrCat(dst.ip.ToString(), " (",
                        w == nullptr ? std::string("not in the snapshot") : w->Key(),
                        ") does not use waypoint ", wp.key);
    return std::nullopt;
  }
  target.namespace_name = w->namespace_name;
  target.labels = w->labels;
  target.waypoint = std::move(ref);
  return target;
}

MeshSnapshot::~MeshSnapshot() {
  // Below this the memory is small enough to leave to the allocator.
  constexpr size_t kTrimAtWorkloads = 10000;
  if (workloads_.size() < kTrimAtWorkloads) return;
  // Freed first, so the trim sees the pages free.
  services_ = {};
  by_ip_ = {};
  workloads_ = {};
  authz_.reset();
  malloc_trim(0);
}

absl::Status MeshSnapshot::Authorize(const SocketAddress& source, const SocketAddress& destination,
                                     const std::string& principal, std::string* decided_by) const {
  const mesh::Workload* workload = WorkloadByIp(destination.ip);
  if (workload == nullptr) {
    return absl::PermissionDeniedError(absl::StrCat("denied: ", destination.ip.ToString(),
                                                    " is not in configuration snapshot ", version_,
                                                    " (its policies are unknown)"));
  }
  if (auto bound = bound_to_.find(workload);
      bound != bound_to_.end() && !workload->waypoint_bypass_allowed) {
    for (const WaypointInfo* wp : bound->second) {
      if (wp->IsIdentity(principal)) continue;
      if (decided_by != nullptr) *decided_by = absl::StrCat("waypoint ", wp->key);
      return absl::PermissionDeniedError(
          mesh::BypassRefusal(workload->Key(), wp->key, wp->instances.empty(), principal));
    }
  }
  if (authz_ == nullptr) {
    // No engine means the configuration could not be turned into one: fail closed.
    if (!authz_errors_.empty()) {
      return absl::PermissionDeniedError("authorization policies could not be loaded");
    }
    return absl::OkStatus();  // no snapshot yet: nothing configured, Istio allows
  }
  authz::Workload target;
  target.namespace_name = workload->namespace_name;
  target.labels = workload->labels;
  authz::Request request;
  request.layer = authz::Layer::kL4;
  request.source_principal = principal;
  request.source_ip = source.ip;
  request.destination_ip = destination.ip;
  request.destination_port = destination.port;
  authz::Decision d = authz_->Evaluate(target, request);
  for (const auto& dry : d.dry_run) {
    AMBIT_LOG("authz", Info) << "dry-run " << dry.policy << " for " << source.ToString() << " -> "
                             << destination.ToString() << ": " << dry.explanation;
  }
  for (const auto& audit : d.audits) {
    AMBIT_LOG("authz", Info) << "audit " << audit.policy << " matched " << source.ToString()
                             << " -> " << destination.ToString();
  }
  // "default": nothing applied and Istio allows; a denial without a policy (no ALLOW matched)
  // names none, its explanation says why.
  if (decided_by != nullptr)
    *decided_by = !d.policy.empty() ? d.policy : d.allowed ? "default" : "";
  if (d.allowed) return absl::OkStatus();
  return absl::PermissionDeniedError(d.explanation);
}

const mesh::Workload* MeshSnapshot::WorkloadByIp(const IpAddress& ip) const {
  auto it = by_ip_.find(ip);
  return it == by_ip_.end() ? nullptr : it->second;
}

bool WaypointInfo::IsIdentity(const std::string& principal) const {
  if (principal.empty()) return false;
  for (const mesh::Workload* w : instances) {
    if (w->identity.ToString() == principal) return true;
  }
  return false;
}

namespace {

// Whether the client is one of the waypoint's own pods: its forwarded traffic goes on to the
// destination, never back to the waypoint (ztunnel's check_from_waypoint).
bool FromWaypoint(const WaypointInfo& wp, const std::vector<IpAddress>& source_ips) {
  for (const mesh::Workload* w : wp.instances) {
    for (const auto& ip : w->ips) {
      if (std::find(source_ips.begin(), source_ips.end(), ip) != source_ips.end()) return true;
    }
  }
  return false;
}

// Over HBONE to one of the waypoint's pods, the CONNECT target left as dialled. A waypoint
// without a pod with an address refuses the connection: sending it straight to the destination
// would skip the L7 policy it is bound to.
Route ThroughWaypoint(const WaypointInfo& wp, const SocketAddress& dst, uint64_t pick) {
  Route route;
  route.target = dst;
  route.waypoint = &wp;
  std::vector<std::pair<const mesh::Workload*, IpAddress>> candidates, other_family;
  for (const mesh::Workload* w : wp.instances) {
    for (const auto& ip : w->ips) {
      (ip.is_v4() == dst.ip.is_v4() ? candidates : other_family).emplace_back(w, ip);
      if (ip.is_v4() == dst.ip.is_v4()) break;
    }
  }
  if (candidates.empty()) candidates = std::move(other_family);
  if (candidates.empty()) {
    route.kind = Route::Kind::kRefused;
    route.refused = absl::StrCat("destination ", dst.ToString(), " uses waypoint ", wp.key,
                                 ", which has no pod with an address");
    return route;
  }
  const auto& [workload, ip] = candidates[pick % candidates.size()];
  route.kind = Route::Kind::kHbone;
  route.workload = workload;
  route.hbone_ip = ip;
  return route;
}

}  // namespace

Route MeshSnapshot::Resolve(const SocketAddress& dst, uint64_t pick,
                            const std::vector<IpAddress>& source_ips) const {
  Route route;
  route.target = dst;
  if (const mesh::Workload* w = WorkloadByIp(dst.ip); w != nullptr) {
    if (auto wp = waypoints_.find(w->waypoint);
        !w->waypoint.empty() && wp != waypoints_.end() && !FromWaypoint(*wp->second, source_ips)) {
      return ThroughWaypoint(*wp->second, dst, pick);
    }
    if (w->in_mesh) {
      route.kind = Route::Kind::kHbone;
      route.workload = w;
      route.hbone_ip = dst.ip;
    }
    return route;
  }
  auto svc = services_.find(dst.ip);
  if (svc == services_.end()) return route;
  const ServiceInfo& s = *svc->second;
  if (s.waypoint != nullptr && !FromWaypoint(*s.waypoint, source_ips)) {
    Route via = ThroughWaypoint(*s.waypoint, dst, pick);
    via.service = &s;
    return via;
  }
  auto port = s.target_ports.find(dst.port);
  if (port == s.target_ports.end() || port->second == 0 || s.endpoints.empty()) return route;
  const mesh::Workload* endpoint = s.endpoints[pick % s.endpoints.size()];
  // Same family as the destination the application dialled.
  for (const auto& ip : endpoint->ips) {
    if (ip.is_v4() != dst.ip.is_v4()) continue;
    const SocketAddress pod_address{ip, port->second};
    // ztunnel sends this straight to the pod; but the pod's tunnel accepts only its waypoint
    // (bypass closed), so it goes through the pod's waypoint as pod-addressed traffic.
    if (auto wp = waypoints_.find(endpoint->waypoint); !endpoint->waypoint.empty() &&
                                                       wp != waypoints_.end() &&
                                                       !FromWaypoint(*wp->second, source_ips)) {
      Route via = ThroughWaypoint(*wp->second, pod_address, pick);
      via.service = &s;
      return via;
    }
    route.service = &s;
    route.target = pod_address;
    if (endpoint->in_mesh) {
      route.kind = Route::Kind::kHbone;
      route.workload = endpoint;
      route.hbone_ip = ip;
    }
    return route;
  }
  return route;
}

bool MeshSnapshot::IsReservedPort(uint16_t port) const {
  return port == AMBIT_OUTBOUND_PORT || port == AMBIT_INBOUND_PLAIN_PORT ||
         port == AMBIT_HBONE_PORT || reserved_ports_.contains(port);
}

const authz::ExtAuthzProvider* MeshSnapshot::FindExtAuthzProvider(std::string_view name) const {
  // A handful at most: a scan beats an index.
  for (const auto& p : ext_authz_providers_) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

std::optional<SocketAddress> MeshSnapshot::ExtAuthzTarget(const authz::ExtAuthzProvider& provider,
                                                          std::string* why) const {
  auto fail = [why](std::string text) -> std::optional<SocketAddress> {
    if (why != nullptr) *why = std::move(text);
    return std::nullopt;
  };
  if (!provider.unresolved.empty()) return fail(provider.unresolved);
  auto it = ext_authz_services_.find(provider.service_key);
  if (it == ext_authz_services_.end()) {
    return fail(
        absl::StrCat("service ", provider.service_key, " is not in configuration ", version_));
  }
  const ServiceInfo& svc = *it->second;
  if (svc.cluster_ips.empty()) {
    return fail(absl::StrCat("service ", provider.service_key,
                             " is headless (no cluster IP to send checks to)"));
  }
  if (!svc.target_ports.contains(provider.port)) {
    return fail(absl::StrCat("service ", provider.service_key, " has no TCP port ", provider.port));
  }
  return SocketAddress{svc.cluster_ips.front(), provider.port};
}

const ServiceInfo* MeshSnapshot::InboundService(const mesh::Workload& workload,
                                                uint16_t port) const {
  auto it = local_services_.find(&workload);
  if (it == local_services_.end()) return nullptr;
  for (const auto& svc : it->second) {
    for (const auto& [service_port, target] : svc->target_ports) {
      if (target == port) return svc.get();
    }
  }
  return nullptr;
}

}  // namespace ambit::tunnel
