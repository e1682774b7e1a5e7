#include "agent/tunnel/mesh_snapshot.h"

#include <malloc.h>

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
  snap->reserved_ports_.insert(s.reserved_ports.begin(), s.reserved_ports.end());
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
  if (!s.services.empty()) {
    by_key.reserve(snap->workloads_.size());
    for (const auto& w : snap->workloads_) by_key[{w.namespace_name, w.name}] = &w;
  }
  for (auto& svc : s.services) {
    auto info = std::make_shared<ServiceInfo>();
    info->namespace_name = std::move(svc.namespace_name);
    info->name = std::move(svc.name);
    for (const auto& p : svc.ports) {
      // Connections reaching the data plane are TCP: a UDP or SCTP port routes none of them.
      if (p.protocol == mesh::Protocol::kTcp) info->target_ports[p.port] = p.target_port;
    }
    for (const absl::string_view key : svc.endpoints) {
      const size_t slash = key.find('/');
      if (slash == absl::string_view::npos) continue;
      auto it = by_key.find(std::make_pair(key.substr(0, slash), key.substr(slash + 1)));
      if (it != by_key.end()) info->endpoints.push_back(it->second);
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
  auto engine = authz::Engine::Create(std::move(compiled), options);
  if (engine.ok()) {
    snap->authz_ = std::move(*engine);
  } else {
    snap->authz_errors_.push_back(std::string(engine.status().message()));
  }
  return snap;
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

Route MeshSnapshot::Resolve(const SocketAddress& dst, uint64_t pick) const {
  Route route;
  route.target = dst;
  if (const mesh::Workload* w = WorkloadByIp(dst.ip); w != nullptr) {
    if (w->in_mesh) {
      route.kind = Route::Kind::kHbone;
      route.workload = w;
    }
    return route;
  }
  auto svc = services_.find(dst.ip);
  if (svc == services_.end()) return route;
  const ServiceInfo& s = *svc->second;
  auto port = s.target_ports.find(dst.port);
  if (port == s.target_ports.end() || port->second == 0 || s.endpoints.empty()) return route;
  const mesh::Workload* endpoint = s.endpoints[pick % s.endpoints.size()];
  // Same family as the destination the application dialled.
  for (const auto& ip : endpoint->ips) {
    if (ip.is_v4() != dst.ip.is_v4()) continue;
    route.service = &s;
    route.target = SocketAddress{ip, port->second};
    if (endpoint->in_mesh) {
      route.kind = Route::Kind::kHbone;
      route.workload = endpoint;
    }
    return route;
  }
  return route;
}

bool MeshSnapshot::IsReservedPort(uint16_t port) const {
  return port == AMBIT_OUTBOUND_PORT || port == AMBIT_INBOUND_PLAIN_PORT ||
         port == AMBIT_HBONE_PORT || reserved_ports_.contains(port);
}

}  // namespace ambit::tunnel
