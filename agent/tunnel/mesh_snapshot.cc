#include "agent/tunnel/mesh_snapshot.h"

#include "abi/redirect.h"
#include "absl/strings/str_cat.h"
#include "agent/authz/compile.h"
#include "agent/authz_wire/policy_proto.h"
#include "agent/common/log.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::tunnel {
namespace {
MtlsMode ModeFromProto(ambit::dataplane::v1::MtlsMode m) {
  switch (m) {
    case ambit::dataplane::v1::MTLS_MODE_STRICT: return MtlsMode::kStrict;
    case ambit::dataplane::v1::MTLS_MODE_DISABLE: return MtlsMode::kDisable;
    default: return MtlsMode::kPermissive;
  }
}
}  // namespace

const char* MtlsModeName(MtlsMode mode) {
  switch (mode) {
    case MtlsMode::kStrict: return "STRICT";
    case MtlsMode::kPermissive: return "PERMISSIVE";
    case MtlsMode::kDisable: return "DISABLE";
  }
  return "?";
}

std::shared_ptr<const MeshSnapshot> MeshSnapshot::FromProto(
    const ambit::dataplane::v1::Snapshot& s) {
  auto snap = std::make_shared<MeshSnapshot>();
  snap->version_ = s.version();
  snap->trust_domain_ = s.trust_domain();
  for (uint32_t port : s.reserved_ports()) {
    if (port > 0 && port <= 65535) snap->reserved_ports_.insert(static_cast<uint16_t>(port));
  }
  absl::flat_hash_map<std::string, std::shared_ptr<const WorkloadInfo>> by_uid;
  for (const auto& w : s.workloads()) {
    auto info = std::make_shared<WorkloadInfo>();
    info->uid = w.uid();
    info->namespace_name = w.namespace_();
    info->name = w.name();
    info->service_account = w.service_account();
    info->spiffe_id = w.spiffe_id();
    info->node = w.node();
    info->enrolled_here = w.enrolled_here();
    info->in_mesh = w.in_mesh();
    info->labels.insert(w.labels().begin(), w.labels().end());
    if (w.has_mtls()) {
      info->mtls.mode = ModeFromProto(w.mtls().mode());
      info->mtls.policy = w.mtls().policy();
      for (const auto& [port, mode] : w.mtls().port_modes()) {
        if (port == 0 || port > 65535) continue;
        auto pol = w.mtls().port_policies().find(port);
        info->mtls.ports[static_cast<uint16_t>(port)] = {
            ModeFromProto(static_cast<ambit::dataplane::v1::MtlsMode>(mode)),
            pol == w.mtls().port_policies().end() ? std::string() : pol->second};
      }
    }
    for (const auto& text : w.ips()) {
      auto ip = IpAddress::Parse(text);
      if (ip.ok()) info->ips.push_back(*ip);
    }
    for (const auto& ip : info->ips) snap->workloads_[ip] = info;
    by_uid[info->uid] = info;
  }
  for (const auto& svc : s.services()) {
    auto info = std::make_shared<ServiceInfo>();
    info->namespace_name = svc.namespace_();
    info->name = svc.name();
    for (const auto& p : svc.ports()) {
      if (p.port() > 0 && p.port() < 65536 && p.target_port() < 65536) {
        info->target_ports[static_cast<uint16_t>(p.port())] =
            static_cast<uint16_t>(p.target_port());
      }
    }
    for (const auto& uid : svc.endpoints()) {
      auto it = by_uid.find(uid);
      if (it != by_uid.end()) info->endpoints.push_back(it->second);
    }
    for (const auto& text : svc.cluster_ips()) {
      auto ip = IpAddress::Parse(text);
      if (!ip.ok()) continue;
      info->cluster_ips.push_back(*ip);
      snap->services_[*ip] = info;
    }
  }
  std::vector<authz::CompiledPolicy> compiled;
  for (const auto& p : s.authorization_policies()) {
    auto c = authz::Compile(authz_wire::FromProto(p));
    if (!c.ok()) {
      // The agent validated it; a failure here means the two sides disagree. Say so, skip it.
      snap->authz_errors_.push_back(absl::StrCat("AuthorizationPolicy ", p.namespace_(), "/",
                                                 p.name(), ": ", c.status().message()));
      continue;
    }
    compiled.push_back(std::move(*c));
  }
  // One policy the data plane cannot compile makes every decision unknowable (a dropped DENY
  // allows, a dropped ALLOW opens the workload): build no engine, so Authorize fails closed.
  if (!snap->authz_errors_.empty()) return snap;
  authz::EngineOptions options;
  if (!s.root_namespace().empty()) options.root_namespace = s.root_namespace();
  auto engine = authz::Engine::Create(std::move(compiled), options);
  if (engine.ok()) {
    snap->authz_ = std::move(*engine);
  } else {
    snap->authz_errors_.push_back(std::string(engine.status().message()));
  }
  return snap;
}

absl::Status MeshSnapshot::Authorize(const SocketAddress& source,
                                     const SocketAddress& destination,
                                     const std::string& principal,
                                     std::string* decided_by) const {
  auto workload = WorkloadByIp(destination.ip);
  if (workload == nullptr) {
    return absl::PermissionDeniedError(absl::StrCat(
        "denied: ", destination.ip.ToString(), " is not in configuration snapshot ", version_,
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
  if (decided_by != nullptr) *decided_by = !d.policy.empty() ? d.policy : d.allowed ? "default" : "";
  if (d.allowed) return absl::OkStatus();
  return absl::PermissionDeniedError(d.explanation);
}

std::shared_ptr<const WorkloadInfo> MeshSnapshot::WorkloadByIp(const IpAddress& ip) const {
  auto it = workloads_.find(ip);
  return it == workloads_.end() ? nullptr : it->second;
}

Route MeshSnapshot::Resolve(const SocketAddress& dst, uint64_t pick) const {
  Route route;
  route.target = dst;
  if (auto w = WorkloadByIp(dst.ip); w != nullptr) {
    if (w->in_mesh) {
      route.kind = Route::Kind::kHbone;
      route.workload = std::move(w);
    }
    return route;
  }
  auto svc = services_.find(dst.ip);
  if (svc == services_.end()) return route;
  const ServiceInfo& s = *svc->second;
  auto port = s.target_ports.find(dst.port);
  if (port == s.target_ports.end() || port->second == 0 || s.endpoints.empty()) return route;
  const auto& endpoint = s.endpoints[pick % s.endpoints.size()];
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
