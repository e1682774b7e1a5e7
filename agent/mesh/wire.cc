#include "agent/mesh/wire.h"

#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "agent/authz_wire/policy_proto.h"
#include "agent/common/status.h"

namespace ambit::mesh {
namespace {

namespace pb = ::ambit::dataplane::v1;

absl::Status WorkloadError(absl::string_view key, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("workload ", key, ": ", field, ": ", what));
}

absl::Status WaypointError(absl::string_view key, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("waypoint ", key, ": ", field, ": ", what));
}

absl::Status ServiceError(absl::string_view key, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("service ", key, ": ", field, ": ", what));
}

std::string Quoted(absl::string_view text) { return absl::StrCat("'", text, "'"); }

// kUnset has no wire form: a resolved mode is always one of the three.
absl::StatusOr<pb::MtlsMode> ModeToProto(MtlsMode mode) {
  switch (mode) {
    case MtlsMode::kStrict:
      return pb::MTLS_MODE_STRICT;
    case MtlsMode::kPermissive:
      return pb::MTLS_MODE_PERMISSIVE;
    case MtlsMode::kDisable:
      return pb::MTLS_MODE_DISABLE;
    case MtlsMode::kUnset:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("mode ", authz::MtlsModeName(mode), " is not a resolved mode"));
}

// Takes the raw number: a value this build does not know arrives as itself, not as a default.
absl::StatusOr<MtlsMode> ModeFromProto(int mode) {
  switch (mode) {
    case pb::MTLS_MODE_STRICT:
      return MtlsMode::kStrict;
    case pb::MTLS_MODE_PERMISSIVE:
      return MtlsMode::kPermissive;
    case pb::MTLS_MODE_DISABLE:
      return MtlsMode::kDisable;
    case pb::MTLS_MODE_UNSPECIFIED:
      return absl::InvalidArgumentError("MTLS_MODE_UNSPECIFIED is not a mode");
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown mode ", mode));
}

pb::ServiceProtocol ProtocolToProto(Protocol protocol) {
  switch (protocol) {
    case Protocol::kTcp:
      return pb::SERVICE_PROTOCOL_TCP;
    case Protocol::kUdp:
      return pb::SERVICE_PROTOCOL_UDP;
    case Protocol::kSctp:
      return pb::SERVICE_PROTOCOL_SCTP;
  }
  return pb::SERVICE_PROTOCOL_UNSPECIFIED;
}

absl::StatusOr<Protocol> ProtocolFromProto(int protocol) {
  switch (protocol) {
    case pb::SERVICE_PROTOCOL_TCP:
      return Protocol::kTcp;
    case pb::SERVICE_PROTOCOL_UDP:
      return Protocol::kUdp;
    case pb::SERVICE_PROTOCOL_SCTP:
      return Protocol::kSctp;
    case pb::SERVICE_PROTOCOL_UNSPECIFIED:
      return absl::InvalidArgumentError("SERVICE_PROTOCOL_UNSPECIFIED is not a protocol");
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown protocol ", protocol));
}

// Addresses travel as text; each must parse.
template <typename R>
absl::Status ParseIps(const R& texts, std::vector<IpAddress>* out, absl::string_view owner,
                      absl::string_view key, absl::string_view field) {
  out->reserve(texts.size());
  for (int i = 0; i < texts.size(); ++i) {
    auto ip = IpAddress::Parse(texts[i]);
    if (!ip.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          owner, " ", key, ": ", field, "[", i, "]: ", Quoted(texts[i]), " is not an IP address"));
    }
    out->push_back(*ip);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint16_t> Port(uint32_t value, bool zero_allowed) {
  if (value > 65535 || (value == 0 && !zero_allowed)) {
    return absl::InvalidArgumentError(absl::StrCat(value, " is not a port (1..65535)"));
  }
  return static_cast<uint16_t>(value);
}

}  // namespace

absl::Status ToProto(const Workload& w, pb::Workload* out) {
  const std::string key = w.Key();
  if (w.identity.trust_domain.empty()) {
    return WorkloadError(key, "identity", "missing: every workload has a SPIFFE ID");
  }
  if (w.waypoint_bypass_allowed && !w.enrolled_here) {
    return WorkloadError(key, "waypoint_bypass_allowed", "set for a workload not enrolled here");
  }
  if (w.enrolled_here != w.mtls.has_value()) {
    return WorkloadError(key, "mtls",
                         w.enrolled_here ? "missing for a workload enrolled here"
                                         : "set for a workload not enrolled here");
  }
  out->set_namespace_(w.namespace_name);
  out->set_name(w.name);
  out->set_service_account(w.service_account);
  out->set_node(w.node);
  out->set_spiffe_id(w.identity.ToString());
  for (const auto& ip : w.ips) out->add_ips(ip.ToString());
  out->set_enrolled_here(w.enrolled_here);
  out->set_in_mesh(w.in_mesh);
  for (const auto& [k, v] : w.labels) (*out->mutable_labels())[k] = v;
  out->set_waypoint(w.waypoint);
  out->set_waypoint_bypass_allowed(w.waypoint_bypass_allowed);
  if (w.mtls) {
    auto* m = out->mutable_mtls();
    auto mode = ModeToProto(w.mtls->workload.mode);
    if (!mode.ok()) return WorkloadError(key, "mtls.mode", mode.status().message());
    m->set_mode(*mode);
    m->set_policy(w.mtls->workload.policy);
    for (const auto& [port, decision] : w.mtls->ports) {
      auto port_mode = ModeToProto(decision.mode);
      if (!port_mode.ok()) {
        return WorkloadError(key, absl::StrCat("mtls.ports[", port, "].mode"),
                             port_mode.status().message());
      }
      auto* p = m->add_ports();
      p->set_port(port);
      p->set_mode(*port_mode);
      p->set_policy(decision.policy);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Workload> FromProto(const pb::Workload& in) {
  Workload w;
  w.namespace_name = in.namespace_();
  w.name = in.name();
  const std::string key = w.Key();
  if (in.namespace_().empty() || in.name().empty()) {
    return WorkloadError(key, in.name().empty() ? "name" : "namespace", "missing");
  }
  if (in.spiffe_id().empty()) {
    return WorkloadError(key, "spiffe_id", "missing: every workload has a SPIFFE ID");
  }
  auto id = identity::ParseSpiffeId(in.spiffe_id());
  if (!id.ok()) return WorkloadError(key, "spiffe_id", id.status().message());
  w.identity = *std::move(id);
  w.service_account = in.service_account();
  w.node = in.node();
  AMBIT_RETURN_IF_ERROR(ParseIps(in.ips(), &w.ips, "workload", key, "ips"));
  w.enrolled_here = in.enrolled_here();
  w.in_mesh = in.in_mesh();
  w.labels.insert(in.labels().begin(), in.labels().end());
  w.waypoint = in.waypoint();
  if (in.waypoint_bypass_allowed() && !in.enrolled_here()) {
    // Only the destination's own tunnel decides; a peer's flag would mean nothing here.
    return WorkloadError(key, "waypoint_bypass_allowed", "set for a workload not enrolled here");
  }
  w.waypoint_bypass_allowed = in.waypoint_bypass_allowed();
  if (in.enrolled_here() && !in.has_mtls()) {
    // Without it plaintext to a STRICT workload would be judged by a guess.
    return WorkloadError(key, "mtls", "missing for a workload enrolled here");
  }
  if (in.has_mtls()) {
    const auto& m = in.mtls();
    MtlsPolicy policy;
    auto mode = ModeFromProto(m.mode());
    if (!mode.ok()) return WorkloadError(key, "mtls.mode", mode.status().message());
    policy.workload = {*mode, m.policy()};
    for (int i = 0; i < m.ports_size(); ++i) {
      const auto& p = m.ports(i);
      auto port = Port(p.port(), /*zero_allowed=*/false);
      if (!port.ok()) {
        return WorkloadError(key, absl::StrCat("mtls.ports[", i, "].port"),
                             port.status().message());
      }
      auto port_mode = ModeFromProto(p.mode());
      if (!port_mode.ok()) {
        return WorkloadError(key, absl::StrCat("mtls.ports[", *port, "].mode"),
                             port_mode.status().message());
      }
      if (!policy.ports.emplace(*port, MtlsDecision{*port_mode, p.policy()}).second) {
        return WorkloadError(key, absl::StrCat("mtls.ports[", *port, "]"), "listed twice");
      }
    }
    // Only the data plane's own workloads carry one; a peer's is not used (and not kept).
    if (in.enrolled_here()) w.mtls = std::move(policy);
  }
  return w;
}

absl::Status ToProto(const Service& s, pb::Service* out) {
  out->set_namespace_(s.namespace_name);
  out->set_name(s.name);
  for (const auto& ip : s.cluster_ips) out->add_cluster_ips(ip.ToString());
  for (const auto& p : s.ports) {
    if (p.port == 0) return ServiceError(s.Key(), "ports", "port 0");
    auto* pp = out->add_ports();
    pp->set_port(p.port);
    pp->set_target_port(p.target_port);
    pp->set_protocol(ProtocolToProto(p.protocol));
  }
  for (const auto& e : s.endpoints) out->add_endpoints(e);
  out->set_waypoint(s.waypoint);
  return absl::OkStatus();
}

absl::StatusOr<Service> FromProto(const pb::Service& in) {
  Service s;
  s.namespace_name = in.namespace_();
  s.name = in.name();
  const std::string key = s.Key();
  if (in.namespace_().empty() || in.name().empty()) {
    return ServiceError(key, in.name().empty() ? "name" : "namespace", "missing");
  }
  AMBIT_RETURN_IF_ERROR(ParseIps(in.cluster_ips(), &s.cluster_ips, "service", key, "cluster_ips"));
  for (int i = 0; i < in.ports_size(); ++i) {
    const auto& p = in.ports(i);
    auto port = Port(p.port(), /*zero_allowed=*/false);
    if (!port.ok()) {
      return ServiceError(key, absl::StrCat("ports[", i, "].port"), port.status().message());
    }
    auto target = Port(p.target_port(), /*zero_allowed=*/true);
    if (!target.ok()) {
      return ServiceError(key, absl::StrCat("ports[", i, "].target_port"),
                          target.status().message());
    }
    auto protocol = ProtocolFromProto(p.protocol());
    if (!protocol.ok()) {
      return ServiceError(key, absl::StrCat("ports[", i, "].protocol"),
                          protocol.status().message());
    }
    s.ports.push_back({*port, *target, *protocol});
  }
  s.endpoints.assign(in.endpoints().begin(), in.endpoints().end());
  s.waypoint = in.waypoint();
  return s;
}

absl::Status ToProto(const Snapshot& s, pb::Snapshot* out) {
  out->set_version(s.version);
  out->set_trust_domain(s.trust_domain);
  out->set_root_namespace(s.root_namespace);
  for (uint16_t port : s.reserved_ports) out->add_reserved_ports(port);
  out->mutable_workloads()->Reserve(static_cast<int>(s.workloads.size()));
  for (const auto& w : s.workloads) AMBIT_RETURN_IF_ERROR(ToProto(w, out->add_workloads()));
  for (const auto& svc : s.services) AMBIT_RETURN_IF_ERROR(ToProto(svc, out->add_services()));
  for (const auto& wp : s.waypoints) {
    auto* p = out->add_waypoints();
    p->set_namespace_(wp.namespace_name);
    p->set_name(wp.name);
    for (const auto& i : wp.instances) p->add_instances(i);
  }
  for (const auto& policy : s.authorization_policies) {
    authz_wire::ToProto(policy, out->add_authorization_policies());
  }
  return absl::OkStatus();
}

absl::StatusOr<Snapshot> FromProto(const pb::Snapshot& in) {
  Snapshot s;
  s.version = in.version();
  s.trust_domain = in.trust_domain();
  s.root_namespace = in.root_namespace();
  for (int i = 0; i < in.reserved_ports_size(); ++i) {
    auto port = Port(in.reserved_ports(i), /*zero_allowed=*/false);
    if (!port.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("reserved_ports[", i, "]: ", port.status().message()));
    }
    s.reserved_ports.push_back(*port);
  }
  s.workloads.reserve(in.workloads_size());
  absl::flat_hash_set<std::string> keys;
  absl::flat_hash_map<IpAddress, size_t> owner;  // address -> index in s.workloads
  keys.reserve(in.workloads_size());
  owner.reserve(in.workloads_size());
  for (const auto& pw : in.workloads()) {
    AMBIT_ASSIGN_OR_RETURN(Workload w, FromProto(pw));
    std::string key = w.Key();
    for (const auto& ip : w.ips) {
      auto [it, inserted] = owner.emplace(ip, s.workloads.size());
      if (!inserted) {
        return WorkloadError(key, "ips",
                             absl::StrCat(ip.ToString(), " is also the address of workload ",
                                          s.workloads[it->second].Key()));
      }
    }
    if (!keys.insert(std::move(key)).second) {
      return WorkloadError(w.Key(), "namespace/name", "listed twice");
    }
    s.workloads.push_back(std::move(w));
  }
  // Waypoints before anything names them; their pods are workloads of this snapshot.
  absl::flat_hash_set<std::string> waypoints;
  for (const auto& pw : in.waypoints()) {
    Waypoint wp;
    wp.namespace_name = pw.namespace_();
    wp.name = pw.name();
    const std::string key = wp.Key();
    if (pw.namespace_().empty() || pw.name().empty()) {
      return WaypointError(key, pw.name().empty() ? "name" : "namespace", "missing");
    }
    for (int i = 0; i < pw.instances_size(); ++i) {
      if (!keys.contains(pw.instances(i))) {
        return WaypointError(
            key, absl::StrCat("instances[", i, "]"),
            absl::StrCat(Quoted(pw.instances(i)), " is not a workload of the snapshot"));
      }
      wp.instances.push_back(pw.instances(i));
    }
    if (!waypoints.insert(key).second) return WaypointError(key, "namespace/name", "listed twice");
    s.waypoints.push_back(std::move(wp));
  }
  // A binding to a waypoint the data plane does not know could only be guessed at: refuse.
  for (const auto& w : s.workloads) {
    if (!w.waypoint.empty() && !waypoints.contains(w.waypoint)) {
      return WorkloadError(w.Key(), "waypoint",
                           absl::StrCat(Quoted(w.waypoint), " is not a waypoint of the snapshot"));
    }
  }
  for (const auto& ps : in.services()) {
    AMBIT_ASSIGN_OR_RETURN(Service svc, FromProto(ps));
    if (!svc.waypoint.empty() && !waypoints.contains(svc.waypoint)) {
      return ServiceError(svc.Key(), "waypoint",
                          absl::StrCat(Quoted(svc.waypoint), " is not a waypoint of the snapshot"));
    }
    for (size_t i = 0; i < svc.endpoints.size(); ++i) {
      if (!keys.contains(svc.endpoints[i])) {
        return ServiceError(
            svc.Key(), absl::StrCat("endpoints[", i, "]"),
            absl::StrCat(Quoted(svc.endpoints[i]), " is not a workload of the snapshot"));
      }
    }
    s.services.push_back(std::move(svc));
  }
  for (const auto& pp : in.authorization_policies()) {
    AMBIT_ASSIGN_OR_RETURN(authz::Policy policy, authz_wire::FromProto(pp));
    s.authorization_policies.push_back(std::move(policy));
  }
  return s;
}

absl::StatusOr<pb::Envelope> ParseEnvelope(absl::string_view bytes, absl::string_view peer,
                                           absl::string_view self, absl::string_view advice) {
  pb::Envelope env;
  if (!env.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError("undecodable control message");
  }
  if (env.protocol_version() != pb::PROTOCOL_VERSION_CURRENT) {
    return absl::FailedPreconditionError(
        absl::StrCat(peer, " speaks control protocol ", env.protocol_version(), ", this ", self,
                     " ", static_cast<int>(pb::PROTOCOL_VERSION_CURRENT), "; ", advice));
  }
  return env;
}

}  // namespace ambit::mesh
