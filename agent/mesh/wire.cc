#include "agent/mesh/wire.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "agent/authz_wire/policy_proto.h"
#include "agent/common/status.h"
#include "agent/identity/spiffe_id.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"

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

absl::Status AuthnError(absl::string_view key, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("RequestAuthentication ", key, ": ", field, ": ", what));
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

pb::AppProtocol AppProtocolToProto(AppProtocol protocol) {
  switch (protocol) {
    case AppProtocol::kDetect:
      return pb::APP_PROTOCOL_DETECT;
    case AppProtocol::kHttp:
      return pb::APP_PROTOCOL_HTTP;
    case AppProtocol::kOpaque:
      return pb::APP_PROTOCOL_OPAQUE;
  }
  return pb::APP_PROTOCOL_UNSPECIFIED;
}

absl::StatusOr<AppProtocol> AppProtocolFromProto(int protocol) {
  switch (protocol) {
    case pb::APP_PROTOCOL_DETECT:
      return AppProtocol::kDetect;
    case pb::APP_PROTOCOL_HTTP:
      return AppProtocol::kHttp;
    case pb::APP_PROTOCOL_OPAQUE:
      return AppProtocol::kOpaque;
    case pb::APP_PROTOCOL_UNSPECIFIED:
      return absl::InvalidArgumentError("APP_PROTOCOL_UNSPECIFIED is not an application protocol");
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown application protocol ", protocol));
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
  out->set_workload_name(w.workload_name);
  out->set_canonical_service(w.canonical_service);
  out->set_canonical_revision(w.canonical_revision);
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
  if (absl::StrContains(in.namespace_(), '/')) {
    // The key "namespace/name" would be ambiguous.
    return WorkloadError(key, "namespace", "contains '/'");
  }
  if (in.spiffe_id().empty()) {
    return WorkloadError(key, "spiffe_id", "missing: every workload has a SPIFFE ID");
  }
  auto id = identity::ParseSpiffeId(in.spiffe_id());
  if (!id.ok()) return WorkloadError(key, "spiffe_id", id.status().message());
  w.identity = *std::move(id);
  w.service_account = in.service_account();
  w.node = in.node();
  w.workload_name = in.workload_name();
  w.canonical_service = in.canonical_service();
  w.canonical_revision = in.canonical_revision();
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

absl::Status PodToProto(const Workload& w, pb::Pod* out) {
  if (w.namespace_name.empty() || w.name.empty()) {
    return WorkloadError(w.Key(), w.name.empty() ? "name" : "namespace", "missing");
  }
  out->set_uid(w.Key());
  out->set_namespace_(w.namespace_name);
  out->set_name(w.name);
  out->set_service_account(w.service_account);
  out->set_workload_name(w.workload_name);
  out->set_canonical_service(w.canonical_service);
  out->set_canonical_revision(w.canonical_revision);
  if (!w.identity.trust_domain.empty()) out->set_spiffe_id(w.identity.ToString());
  for (const auto& ip : w.ips) out->add_ips(ip.ToString());
  return absl::OkStatus();
}

absl::StatusOr<Workload> PodFromProto(const pb::Pod& in) {
  Workload w;
  w.namespace_name = in.namespace_();
  w.name = in.name();
  w.enrolled_here = true;
  const std::string key = w.Key();
  if (in.namespace_().empty() || in.name().empty()) {
    return WorkloadError(in.uid(), in.name().empty() ? "name" : "namespace", "missing");
  }
  // The uid keys every later message about the pod (remove_pod, pong); one that is not the
  // workload's key would let two pods share it.
  if (in.uid() != key) {
    return WorkloadError(key, "uid", absl::StrCat(Quoted(in.uid()), " is not namespace/name"));
  }
  w.service_account = in.service_account();
  w.workload_name = in.workload_name();
  w.canonical_service = in.canonical_service();
  w.canonical_revision = in.canonical_revision();
  if (!in.spiffe_id().empty()) {
    auto id = identity::ParseSpiffeId(in.spiffe_id());
    if (!id.ok()) return WorkloadError(key, "spiffe_id", id.status().message());
    w.identity = *std::move(id);
  }
  AMBIT_RETURN_IF_ERROR(ParseIps(in.ips(), &w.ips, "workload", key, "ips"));
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
    pp->set_app_protocol(AppProtocolToProto(p.app));
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
    auto app = AppProtocolFromProto(p.app_protocol());
    if (!app.ok()) {
      return ServiceError(key, absl::StrCat("ports[", i, "].app_protocol"), app.status().message());
    }
    s.ports.push_back({*port, *target, *protocol, *app});
  }
  s.endpoints.assign(in.endpoints().begin(), in.endpoints().end());
  s.waypoint = in.waypoint();
  return s;
}

namespace {

constexpr int64_t kNanosPerSecond = 1'000'000'000;

// What the config layer refuses when it loads a RequestAuthentication, checked on the model, so
// that both directions refuse alike and the waypoint never applies a rule the agent could not
// have loaded (a newer agent's relaxed rule is refused, not guessed at).
absl::Status CheckRequestAuthentication(const authn::RequestAuthentication& ra) {
  const std::string key = ra.Key();
  if (ra.namespace_name.empty() || ra.name.empty()) {
    return AuthnError(key, ra.name.empty() ? "name" : "namespace", "missing");
  }
  if (absl::StrContains(ra.namespace_name, '/')) {
    // The key "namespace/name" would be ambiguous.
    return AuthnError(key, "namespace", "contains '/'");
  }
  if (ra.selector.has_value() && !ra.target_refs.empty()) {
    return AuthnError(key, "target_refs", "set together with a selector; only one may be");
  }
  for (size_t i = 0; i < ra.target_refs.size(); ++i) {
    std::vector<authn::TargetRefProblem> problems = authn::TargetRefProblems(ra.target_refs[i]);
    if (!problems.empty()) {
      const authn::TargetRefProblem& p = problems.front();
      return AuthnError(key,
                        absl::StrCat("target_refs[", i, "]", p.field.empty() ? "" : ".", p.field),
                        p.message);
    }
  }
  for (size_t i = 0; i < ra.jwt_rules.size(); ++i) {
    const authn::JwtRule& rule = ra.jwt_rules[i];
    const std::string path = absl::StrCat("jwt_rules[", i, "]");
    if (rule.issuer.empty()) return AuthnError(key, path + ".issuer", "missing");
    if (!rule.jwks.empty() && !rule.jwks_uri.empty()) {
      return AuthnError(key, path, "jwks and jwks_uri are both set; only one may be");
    }
    for (size_t j = 0; j < rule.from_headers.size(); ++j) {
      if (rule.from_headers[j].name.empty()) {
        return AuthnError(key, absl::StrCat(path, ".from_headers[", j, "].name"), "missing");
      }
    }
    for (size_t j = 0; j < rule.output_claim_to_headers.size(); ++j) {
      const authn::ClaimToHeader& c = rule.output_claim_to_headers[j];
      if (c.header.empty() || c.claim.empty()) {
        return AuthnError(key,
                          absl::StrCat(path, ".output_claim_to_headers[", j, "].",
                                       c.header.empty() ? "header" : "claim"),
                          "missing");
      }
    }
    if (rule.timeout <= absl::ZeroDuration()) {
      return AuthnError(key, path + ".timeout",
                        absl::StrCat(absl::FormatDuration(rule.timeout), " is not longer than 0s"));
    }
    if (rule.timeout >= authn::kJwksFetchTimeoutLimit) {
      return AuthnError(key, path + ".timeout",
                        absl::StrCat(absl::FormatDuration(rule.timeout), " is not shorter than ",
                                     absl::ToInt64Seconds(authn::kJwksFetchTimeoutLimit),
                                     "s (2^32 s, Envoy's limit)"));
    }
    if (absl::Trunc(rule.timeout, absl::Nanoseconds(1)) != rule.timeout) {
      return AuthnError(key, path + ".timeout",
                        absl::StrCat(absl::FormatDuration(rule.timeout),
                                     " is not a whole number of nanoseconds"));
    }
  }
  return absl::OkStatus();
}

absl::Status ProviderError(absl::string_view name, absl::string_view field,
                           absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("ext_authz provider ", name, ": ", field, ": ", what));
}

// RFC 7230 tchar, upper case excluded: the names are compared as written.
bool IsLowerToken(absl::string_view name) {
  if (name.empty()) return false;
  for (char c : name) {
    const unsigned char u = static_cast<unsigned char>(c);
    if ((u >= 'a' && u <= 'z') || (u >= '0' && u <= '9')) continue;
    if (absl::string_view("!#$%&'*+-.^_`|~").find(c) != absl::string_view::npos) continue;
    return false;
  }
  return true;
}

bool HasCrLfNul(absl::string_view value) {
  return value.find_first_of(absl::string_view("\r\n\0", 3)) != absl::string_view::npos;
}

absl::Status CheckHeaderNames(absl::string_view provider, absl::string_view field,
                              const std::vector<std::string>& names) {
  for (size_t i = 0; i < names.size(); ++i) {
    if (!IsLowerToken(names[i])) {
      return ProviderError(
          provider, absl::StrCat(field, "[", i, "]"),
          absl::StrCat(Quoted(absl::CHexEscape(names[i])), " is not a lower-case header name"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<pb::ExtAuthzKind> KindToProto(authz::ExtAuthzProvider::Kind kind) {
  switch (kind) {
    case authz::ExtAuthzProvider::Kind::kHttp:
      return pb::EXT_AUTHZ_KIND_HTTP;
    case authz::ExtAuthzProvider::Kind::kGrpc:
      return pb::EXT_AUTHZ_KIND_GRPC;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown kind ", static_cast<int>(kind)));
}

absl::StatusOr<authz::ExtAuthzProvider::Kind> KindFromProto(int kind) {
  switch (kind) {
    case pb::EXT_AUTHZ_KIND_HTTP:
      return authz::ExtAuthzProvider::Kind::kHttp;
    case pb::EXT_AUTHZ_KIND_GRPC:
      return authz::ExtAuthzProvider::Kind::kGrpc;
    case pb::EXT_AUTHZ_KIND_UNSPECIFIED:
      return absl::InvalidArgumentError("EXT_AUTHZ_KIND_UNSPECIFIED is not a kind");
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown kind ", kind));
}

}  // namespace

absl::Status CheckExtAuthzProvider(const authz::ExtAuthzProvider& p) {
  const std::string& name = p.name;
  if (name.empty()) return ProviderError("''", "name", "missing");
  if (HasCrLfNul(name))
    return ProviderError(Quoted(absl::CHexEscape(name)), "name", "holds CR, LF or NUL");
  AMBIT_RETURN_IF_ERROR(KindToProto(p.kind).status());
  if (p.port == 0) return ProviderError(name, "port", "0 is not a port");
  if (p.status_on_error < 100 || p.status_on_error > 599) {
    return ProviderError(name, "status_on_error",
                         absl::StrCat(p.status_on_error, " is not an HTTP status (100..599)"));
  }
  if (p.service_key.empty() == p.unresolved.empty()) {
    return ProviderError(name, "service_key",
                         p.service_key.empty() ? "missing, and unresolved does not say why"
                                               : "set together with unresolved; only one may be");
  }
  if (!p.service_key.empty()) {
    const size_t slash = p.service_key.find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 == p.service_key.size() ||
        p.service_key.find('/', slash + 1) != std::string::npos) {
      return ProviderError(
          name, "service_key",
          absl::StrCat(Quoted(absl::CHexEscape(p.service_key)), " is not namespace/name"));
    }
  }
  if (p.timeout <= absl::ZeroDuration() || p.timeout >= kExtAuthzTimeoutLimit ||
      absl::Trunc(p.timeout, absl::Nanoseconds(1)) != p.timeout) {
    return ProviderError(name, "timeout",
                         absl::StrCat(absl::FormatDuration(p.timeout),
                                      " is not a whole number of nanoseconds longer than 0s and "
                                      "shorter than 2^32 s"));
  }
  if (p.include_request_body &&
      p.include_request_body->max_request_bytes > kMaxExtAuthzRequestBytes) {
    return ProviderError(name, "include_request_body.max_request_bytes",
                         absl::StrCat(p.include_request_body->max_request_bytes, " is over ",
                                      kMaxExtAuthzRequestBytes, " (8 MiB, the waypoint's bound)"));
  }
  if (HasCrLfNul(p.path_prefix)) return ProviderError(name, "path_prefix", "holds CR, LF or NUL");
  if (HasCrLfNul(p.service)) return ProviderError(name, "service", "holds CR, LF or NUL");
  AMBIT_RETURN_IF_ERROR(
      CheckHeaderNames(name, "include_request_headers", p.include_request_headers));
  for (size_t i = 0; i < p.include_additional_headers.size(); ++i) {
    const auto& [header, value] = p.include_additional_headers[i];
    const std::string field = absl::StrCat("include_additional_headers[", i, "]");
    if (!IsLowerToken(header)) {
      return ProviderError(
          name, field + ".name",
          absl::StrCat(Quoted(absl::CHexEscape(header)), " is not a lower-case header name"));
    }
    if (HasCrLfNul(value)) return ProviderError(name, field + ".value", "holds CR, LF or NUL");
  }
  AMBIT_RETURN_IF_ERROR(
      CheckHeaderNames(name, "headers_to_upstream_on_allow", p.headers_to_upstream_on_allow));
  AMBIT_RETURN_IF_ERROR(
      CheckHeaderNames(name, "headers_to_downstream_on_deny", p.headers_to_downstream_on_deny));
  AMBIT_RETURN_IF_ERROR(
      CheckHeaderNames(name, "headers_to_downstream_on_allow", p.headers_to_downstream_on_allow));
  return absl::OkStatus();
}

absl::Status ToProto(const authz::ExtAuthzProvider& p, pb::ExtAuthzProvider* out) {
  AMBIT_RETURN_IF_ERROR(CheckExtAuthzProvider(p));
  out->set_name(p.name);
  AMBIT_ASSIGN_OR_RETURN(pb::ExtAuthzKind kind, KindToProto(p.kind));
  out->set_kind(kind);
  out->set_service(p.service);
  out->set_service_key(p.service_key);
  out->set_unresolved(p.unresolved);
  out->set_port(p.port);
  // Checked above: whole nanoseconds below 2^32 s.
  const int64_t nanos = absl::ToInt64Nanoseconds(p.timeout);
  out->mutable_timeout()->set_seconds(nanos / kNanosPerSecond);
  out->mutable_timeout()->set_nanos(static_cast<int32_t>(nanos % kNanosPerSecond));
  out->set_fail_open(p.fail_open);
  out->set_status_on_error(p.status_on_error);
  if (p.include_request_body) {
    auto* b = out->mutable_include_request_body();
    b->set_max_request_bytes(p.include_request_body->max_request_bytes);
    b->set_allow_partial_message(p.include_request_body->allow_partial_message);
    b->set_pack_as_bytes(p.include_request_body->pack_as_bytes);
  }
  out->set_path_prefix(p.path_prefix);
  for (const auto& h : p.include_request_headers) out->add_include_request_headers(h);
  for (const auto& [k, v] : p.include_additional_headers) {
    auto* h = out->add_include_additional_headers();
    h->set_name(k);
    h->set_value(v);
  }
  for (const auto& h : p.headers_to_upstream_on_allow) out->add_headers_to_upstream_on_allow(h);
  for (const auto& h : p.headers_to_downstream_on_deny) out->add_headers_to_downstream_on_deny(h);
  for (const auto& h : p.headers_to_downstream_on_allow) out->add_headers_to_downstream_on_allow(h);
  return absl::OkStatus();
}

absl::StatusOr<authz::ExtAuthzProvider> FromProto(const pb::ExtAuthzProvider& in) {
  authz::ExtAuthzProvider p;
  p.name = in.name();
  const std::string name = p.name.empty() ? "''" : p.name;
  auto kind = KindFromProto(in.kind());
  if (!kind.ok()) return ProviderError(name, "kind", kind.status().message());
  p.kind = *kind;
  p.service = in.service();
  p.service_key = in.service_key();
  p.unresolved = in.unresolved();
  if (in.port() > 65535) {
    return ProviderError(name, "port", absl::StrCat(in.port(), " is not a port"));
  }
  p.port = static_cast<uint16_t>(in.port());
  // No default: the agent always sends the timeout it resolved.
  if (!in.has_timeout()) return ProviderError(name, "timeout", "missing");
  const int64_t seconds = in.timeout().seconds();
  const int32_t nanos = in.timeout().nanos();
  if (seconds < 0 || nanos < 0 || nanos >= kNanosPerSecond ||
      seconds >= absl::ToInt64Seconds(kExtAuthzTimeoutLimit)) {
    return ProviderError(name, "timeout",
                         absl::StrCat(seconds, "s ", nanos,
                                      "ns is not a duration longer than 0s and shorter than "
                                      "2^32 s"));
  }
  p.timeout = absl::Seconds(seconds) + absl::Nanoseconds(nanos);
  p.fail_open = in.fail_open();
  p.status_on_error = in.status_on_error();
  if (in.has_include_request_body()) {
    const auto& b = in.include_request_body();
    p.include_request_body = authz::ExtAuthzBodyOptions{
        b.max_request_bytes(), b.allow_partial_message(), b.pack_as_bytes()};
  }
  p.path_prefix = in.path_prefix();
  p.include_request_headers.assign(in.include_request_headers().begin(),
                                   in.include_request_headers().end());
  for (const auto& h : in.include_additional_headers()) {
    p.include_additional_headers.emplace_back(h.name(), h.value());
  }
  p.headers_to_upstream_on_allow.assign(in.headers_to_upstream_on_allow().begin(),
                                        in.headers_to_upstream_on_allow().end());
  p.headers_to_downstream_on_deny.assign(in.headers_to_downstream_on_deny().begin(),
                                         in.headers_to_downstream_on_deny().end());
  p.headers_to_downstream_on_allow.assign(in.headers_to_downstream_on_allow().begin(),
                                          in.headers_to_downstream_on_allow().end());
  AMBIT_RETURN_IF_ERROR(CheckExtAuthzProvider(p));
  return p;
}

namespace {

// A snapshot's providers: each once by name, each service_key naming one of its services.
absl::Status CheckProviderServices(const std::vector<authz::ExtAuthzProvider>& providers,
                                   const std::vector<Service>& services) {
  absl::flat_hash_set<std::string> names;
  absl::flat_hash_set<std::string> keys;
  for (const auto& s : services) keys.insert(s.Key());
  for (const auto& p : providers) {
    if (!names.insert(p.name).second) return ProviderError(p.name, "name", "listed twice");
    if (!p.service_key.empty() && !keys.contains(p.service_key)) {
      return ProviderError(
          p.name, "service_key",
          absl::StrCat(Quoted(p.service_key), " is not a service of the snapshot"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ToProto(const authn::RequestAuthentication& ra, pb::RequestAuthentication* out) {
  AMBIT_RETURN_IF_ERROR(CheckRequestAuthentication(ra));
  out->set_name(ra.name);
  out->set_namespace_(ra.namespace_name);
  out->set_has_selector(ra.selector.has_value());
  if (ra.selector) {
    for (const auto& [k, v] : *ra.selector) (*out->mutable_selector())[k] = v;
  }
  for (const auto& t : ra.target_refs) {
    auto* r = out->add_target_refs();
    r->set_group(t.group);
    r->set_kind(t.kind);
    r->set_name(t.name);
  }
  for (const auto& rule : ra.jwt_rules) {
    auto* r = out->add_jwt_rules();
    r->set_issuer(rule.issuer);
    for (const auto& a : rule.audiences) r->add_audiences(a);
    r->set_jwks(rule.jwks);
    r->set_jwks_uri(rule.jwks_uri);
    for (const auto& h : rule.from_headers) {
      auto* ph = r->add_from_headers();
      ph->set_name(h.name);
      ph->set_prefix(h.prefix);
    }
    for (const auto& p : rule.from_params) r->add_from_params(p);
    for (const auto& c : rule.from_cookies) r->add_from_cookies(c);
    r->set_output_payload_to_header(rule.output_payload_to_header);
    r->set_forward_original_token(rule.forward_original_token);
    for (const auto& c : rule.output_claim_to_headers) {
      auto* pc = r->add_output_claim_to_headers();
      pc->set_header(c.header);
      pc->set_claim(c.claim);
    }
    // Checked above: whole nanoseconds below 2^32 s, which an int64 holds.
    const int64_t nanos = absl::ToInt64Nanoseconds(rule.timeout);
    r->mutable_timeout()->set_seconds(nanos / kNanosPerSecond);
    r->mutable_timeout()->set_nanos(static_cast<int32_t>(nanos % kNanosPerSecond));
    for (const auto& c : rule.space_delimited_claims) r->add_space_delimited_claims(c);
  }
  out->set_source_file(ra.source_file);
  return absl::OkStatus();
}

absl::StatusOr<authn::RequestAuthentication> FromProto(const pb::RequestAuthentication& in) {
  authn::RequestAuthentication ra;
  ra.name = in.name();
  ra.namespace_name = in.namespace_();
  const std::string key = ra.Key();
  if (in.namespace_().empty() || in.name().empty()) {
    return AuthnError(key, in.name().empty() ? "name" : "namespace", "missing");
  }
  if (in.has_selector()) {
    ra.selector = std::map<std::string, std::string>(in.selector().begin(), in.selector().end());
  } else if (!in.selector().empty()) {
    // Read as "no selector", the policy would apply to the whole namespace instead.
    return AuthnError(key, "selector", "has labels but has_selector is not set");
  }
  ra.target_refs.reserve(in.target_refs_size());
  for (const auto& t : in.target_refs()) ra.target_refs.push_back({t.group(), t.kind(), t.name()});
  ra.jwt_rules.reserve(in.jwt_rules_size());
  for (int i = 0; i < in.jwt_rules_size(); ++i) {
    const pb::JwtRule& r = in.jwt_rules(i);
    const std::string path = absl::StrCat("jwt_rules[", i, "]");
    authn::JwtRule rule;
    rule.issuer = r.issuer();
    rule.audiences.assign(r.audiences().begin(), r.audiences().end());
    rule.jwks = r.jwks();
    rule.jwks_uri = r.jwks_uri();
    for (const auto& h : r.from_headers()) rule.from_headers.push_back({h.name(), h.prefix()});
    rule.from_params.assign(r.from_params().begin(), r.from_params().end());
    rule.from_cookies.assign(r.from_cookies().begin(), r.from_cookies().end());
    rule.output_payload_to_header = r.output_payload_to_header();
    rule.forward_original_token = r.forward_original_token();
    for (const auto& c : r.output_claim_to_headers()) {
      rule.output_claim_to_headers.push_back({c.header(), c.claim()});
    }
    // No default: the agent always sends the timeout it resolved, so a missing one is a peer
    // that does not speak this mapping.
    if (!r.has_timeout()) return AuthnError(key, path + ".timeout", "missing");
    const int64_t seconds = r.timeout().seconds();
    const int32_t nanos = r.timeout().nanos();
    if (seconds < 0 || nanos < 0) {
      return AuthnError(key, path + ".timeout",
                        absl::StrCat("negative (", seconds, "s ", nanos, "ns)"));
    }
    if (nanos >= kNanosPerSecond) {
      return AuthnError(key, path + ".timeout",
                        absl::StrCat("nanos ", nanos, " is not below one second"));
    }
    if (seconds >= absl::ToInt64Seconds(authn::kJwksFetchTimeoutLimit)) {
      return AuthnError(key, path + ".timeout",
                        absl::StrCat(seconds, "s is not shorter than ",
                                     absl::ToInt64Seconds(authn::kJwksFetchTimeoutLimit),
                                     "s (2^32 s, Envoy's limit)"));
    }
    rule.timeout = absl::Seconds(seconds) + absl::Nanoseconds(nanos);
    rule.space_delimited_claims.assign(r.space_delimited_claims().begin(),
                                       r.space_delimited_claims().end());
    ra.jwt_rules.push_back(std::move(rule));
  }
  ra.source_file = in.source_file();
  AMBIT_RETURN_IF_ERROR(CheckRequestAuthentication(ra));
  return ra;
}

namespace {

// Everything of a snapshot but its workloads, which travel and are read one at a time.
absl::Status HeadToProto(const Snapshot& s, pb::Snapshot* out) {
  out->set_version(s.version);
  out->set_trust_domain(s.trust_domain);
  out->set_root_namespace(s.root_namespace);
  out->set_cluster_id(s.cluster_id);
  for (const auto& alias : s.trust_domain_aliases) out->add_trust_domain_aliases(alias);
  for (uint16_t port : s.reserved_ports) out->add_reserved_ports(port);
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
  for (const auto& ra : s.request_authentications) {
    AMBIT_RETURN_IF_ERROR(ToProto(ra, out->add_request_authentications()));
  }
  AMBIT_RETURN_IF_ERROR(CheckProviderServices(s.ext_authz_providers, s.services));
  for (const auto& p : s.ext_authz_providers) {
    AMBIT_RETURN_IF_ERROR(ToProto(p, out->add_ext_authz_providers()));
  }
  return absl::OkStatus();
}

// Builds a Snapshot workload by workload, checking keys and addresses as they arrive. The
// indexes hold views of the workloads' own strings instead of copies of their keys: a key per
// workload would be one more small allocation per peer, freed among the ones the model keeps.
class SnapshotBuilder {
 public:
  // `workloads` is exact: the views point into the vector, which must never reallocate.
  explicit SnapshotBuilder(size_t workloads) {
    s_.workloads.reserve(workloads);
    keys_.reserve(workloads);
    owner_.reserve(workloads);
  }

  absl::Status AddWorkload(const pb::Workload& pw) {
    if (s_.workloads.size() == s_.workloads.capacity()) {
      return absl::InternalError("more workloads than counted");
    }
    AMBIT_ASSIGN_OR_RETURN(Workload w, FromProto(pw));
    for (const auto& ip : w.ips) {
      auto [it, inserted] = owner_.emplace(ip, s_.workloads.size());
      if (!inserted) {
        return WorkloadError(w.Key(), "ips",
                             absl::StrCat(ip.ToString(), " is also the address of workload ",
                                          s_.workloads[it->second].Key()));
      }
    }
    s_.workloads.push_back(std::move(w));
    const Workload& kept = s_.workloads.back();
    if (!keys_.emplace(kept.namespace_name, kept.name).second) {
      std::string key = kept.Key();
      // The addresses it claimed are its own again for no one: the snapshot is refused anyway.
      return WorkloadError(key, "namespace/name", "listed twice");
    }
    return absl::OkStatus();
  }

  // Everything else comes from `head`; its own workloads, if any, are not read.
  absl::StatusOr<Snapshot> Finish(const pb::Snapshot& head) && {
    s_.version = head.version();
    s_.trust_domain = head.trust_domain();
    s_.root_namespace = head.root_namespace();
    s_.cluster_id = head.cluster_id();
    // An alias widens who the tunnel accepts: anything not a plain trust domain is refused.
    if (head.trust_domain_aliases_size() > kMaxTrustDomainAliases) {
      return absl::InvalidArgumentError(
          absl::StrCat("trust_domain_aliases: ", head.trust_domain_aliases_size(),
                       " aliases; at most ", kMaxTrustDomainAliases));
    }
    for (int i = 0; i < head.trust_domain_aliases_size(); ++i) {
      const std::string& alias = head.trust_domain_aliases(i);
      absl::Status valid = identity::ValidateTrustDomain(alias);
      if (valid.ok() && (alias == s_.trust_domain ||
                         std::find(s_.trust_domain_aliases.begin(), s_.trust_domain_aliases.end(),
                                   alias) != s_.trust_domain_aliases.end())) {
        valid = absl::InvalidArgumentError(absl::StrCat("'", alias, "' is listed twice"));
      }
      if (!valid.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("trust_domain_aliases[", i, "]: ", valid.message()));
      }
      s_.trust_domain_aliases.push_back(alias);
    }
    for (int i = 0; i < head.reserved_ports_size(); ++i) {
      auto port = Port(head.reserved_ports(i), /*zero_allowed=*/false);
      if (!port.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("reserved_ports[", i, "]: ", port.status().message()));
      }
      s_.reserved_ports.push_back(*port);
    }
    // Waypoints before anything names them; their pods are workloads of this snapshot.
    absl::flat_hash_set<std::string> waypoints;
    for (const auto& pw : head.waypoints()) {
      Waypoint wp;
      wp.namespace_name = pw.namespace_();
      wp.name = pw.name();
      const std::string key = wp.Key();
      if (pw.namespace_().empty() || pw.name().empty()) {
        return WaypointError(key, pw.name().empty() ? "name" : "namespace", "missing");
      }
      for (int i = 0; i < pw.instances_size(); ++i) {
        if (!keys_.contains(SplitKey(pw.instances(i)))) {
          return WaypointError(
              key, absl::StrCat("instances[", i, "]"),
              absl::StrCat(Quoted(pw.instances(i)), " is not a workload of the snapshot"));
        }
        wp.instances.push_back(pw.instances(i));
      }
      if (!waypoints.insert(key).second) {
        return WaypointError(key, "namespace/name", "listed twice");
      }
      s_.waypoints.push_back(std::move(wp));
    }
    // A binding to a waypoint the data plane does not know could only be guessed at: refuse.
    for (const auto& w : s_.workloads) {
      if (!w.waypoint.empty() && !waypoints.contains(w.waypoint)) {
        return WorkloadError(
            w.Key(), "waypoint",
            absl::StrCat(Quoted(w.waypoint), " is not a waypoint of the snapshot"));
      }
    }
    for (const auto& ps : head.services()) {
      AMBIT_ASSIGN_OR_RETURN(Service svc, FromProto(ps));
      if (!svc.waypoint.empty() && !waypoints.contains(svc.waypoint)) {
        return ServiceError(
            svc.Key(), "waypoint",
            absl::StrCat(Quoted(svc.waypoint), " is not a waypoint of the snapshot"));
      }
      for (size_t i = 0; i < svc.endpoints.size(); ++i) {
        if (!keys_.contains(SplitKey(svc.endpoints[i]))) {
          return ServiceError(
              svc.Key(), absl::StrCat("endpoints[", i, "]"),
              absl::StrCat(Quoted(svc.endpoints[i]), " is not a workload of the snapshot"));
        }
      }
      s_.services.push_back(std::move(svc));
    }
    for (const auto& pp : head.authorization_policies()) {
      AMBIT_ASSIGN_OR_RETURN(authz::Policy policy, authz_wire::FromProto(pp));
      s_.authorization_policies.push_back(std::move(policy));
    }
    absl::flat_hash_set<std::string> request_authentications;
    s_.request_authentications.reserve(head.request_authentications_size());
    for (const auto& pr : head.request_authentications()) {
      AMBIT_ASSIGN_OR_RETURN(authn::RequestAuthentication ra, FromProto(pr));
      // Two with one key would leave the waypoint to pick one of them.
      if (!request_authentications.insert(ra.Key()).second) {
        return AuthnError(ra.Key(), "namespace/name", "listed twice");
      }
      s_.request_authentications.push_back(std::move(ra));
    }
    s_.ext_authz_providers.reserve(head.ext_authz_providers_size());
    for (const auto& pp : head.ext_authz_providers()) {
      AMBIT_ASSIGN_OR_RETURN(authz::ExtAuthzProvider p, FromProto(pp));
      s_.ext_authz_providers.push_back(std::move(p));
    }
    AMBIT_RETURN_IF_ERROR(CheckProviderServices(s_.ext_authz_providers, s_.services));
    return std::move(s_);
  }

 private:
  using Key = std::pair<absl::string_view, absl::string_view>;  // namespace, name

  // "namespace/name" as the two parts; a namespace never holds '/' (FromProto checks).
  static Key SplitKey(absl::string_view key) {
    size_t slash = key.find('/');
    if (slash == absl::string_view::npos) return {key, absl::string_view()};
    return {key.substr(0, slash), key.substr(slash + 1)};
  }

  Snapshot s_;
  absl::flat_hash_set<Key> keys_;
  absl::flat_hash_map<IpAddress, size_t> owner_;  // address -> index in s_.workloads
};

}  // namespace

absl::Status ToProto(const Snapshot& s, pb::Snapshot* out) {
  AMBIT_RETURN_IF_ERROR(HeadToProto(s, out));
  out->mutable_workloads()->Reserve(static_cast<int>(s.workloads.size()));
  for (const auto& w : s.workloads) AMBIT_RETURN_IF_ERROR(ToProto(w, out->add_workloads()));
  return absl::OkStatus();
}

absl::StatusOr<Snapshot> FromProto(const pb::Snapshot& in) {
  SnapshotBuilder builder(in.workloads_size());
  for (const auto& pw : in.workloads()) AMBIT_RETURN_IF_ERROR(builder.AddWorkload(pw));
  return std::move(builder).Finish(in);
}

namespace {

constexpr int kWorkloadsField = pb::Snapshot::kWorkloadsFieldNumber;
constexpr uint32_t kWorkloadTag =
    (static_cast<uint32_t>(kWorkloadsField) << 3) |
    google::protobuf::internal::WireFormatLite::WIRETYPE_LENGTH_DELIMITED;

void AppendVarint(uint64_t value, std::string* out) {
  uint8_t buf[10];  // the longest varint
  uint8_t* end = google::protobuf::io::CodedOutputStream::WriteVarint64ToArray(value, buf);
  out->append(reinterpret_cast<const char*>(buf), static_cast<size_t>(end - buf));
}

}  // namespace

absl::Status EncodeSnapshot(const Snapshot& s, std::string* out) {
  out->clear();
  pb::Snapshot head;
  AMBIT_RETURN_IF_ERROR(HeadToProto(s, &head));
  if (!head.AppendToString(out)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "snapshot ", s.version, " does not serialize (the wire format stops at 2 GiB)"));
  }
  // One message, cleared and refilled: its strings keep their buffers, so encoding allocates
  // nothing per workload besides the output.
  pb::Workload scratch;
  std::string one;
  for (const auto& w : s.workloads) {
    scratch.Clear();
    AMBIT_RETURN_IF_ERROR(ToProto(w, &scratch));
    one.clear();
    if (!scratch.AppendToString(&one)) {
      return WorkloadError(w.Key(), "", "does not serialize");
    }
    AppendVarint(kWorkloadTag, out);
    AppendVarint(one.size(), out);
    out->append(one);
    if (out->size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
      return absl::ResourceExhaustedError(absl::StrCat("snapshot ", s.version,
                                                       " does not serialize (over ", out->size(),
                                                       " bytes; the wire format stops at 2 GiB)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Snapshot> DecodeSnapshot(absl::string_view bytes) {
  using google::protobuf::internal::WireFormatLite;
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return absl::DataLossError("not a Snapshot message: larger than 2 GiB");
  }
  // One pass over the top level: where each workload is, and every other field's bytes, which
  // parse as an ordinary (small) Snapshot message.
  std::vector<std::pair<uint32_t, uint32_t>> workloads;  // offset, size
  std::string head_bytes;
  {
    google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                              static_cast<int>(bytes.size()));
    while (true) {
      const int start = in.CurrentPosition();
      const uint32_t tag = in.ReadTag();
      if (tag == 0) {
        // The end, or a tag of field 0, which no message has.
        if (in.CurrentPosition() != start || static_cast<size_t>(start) != bytes.size()) {
          return absl::DataLossError(
              absl::StrCat("not a Snapshot message: bad field tag at byte ", start));
        }
        break;
      }
      if (tag == kWorkloadTag) {
        uint32_t size = 0;
        if (!in.ReadVarint32(&size) ||
            static_cast<size_t>(size) > bytes.size() - static_cast<size_t>(in.CurrentPosition())) {
          return absl::DataLossError(absl::StrCat("not a Snapshot message: workloads[",
                                                  workloads.size(), "] is cut short"));
        }
        workloads.emplace_back(static_cast<uint32_t>(in.CurrentPosition()), size);
        if (!in.Skip(static_cast<int>(size))) {
          return absl::DataLossError("not a Snapshot message: a workload is cut short");
        }
        continue;
      }
      if (!WireFormatLite::SkipField(&in, tag)) {
        return absl::DataLossError(
            absl::StrCat("not a Snapshot message: undecodable field at byte ", start));
      }
      head_bytes.append(bytes.data() + start, static_cast<size_t>(in.CurrentPosition() - start));
    }
  }
  pb::Snapshot head;
  if (!head.ParseFromString(head_bytes)) {
    return absl::DataLossError("not a Snapshot message: its fields besides workloads do not parse");
  }
  SnapshotBuilder builder(workloads.size());
  // One message, reused: parsing clears it but keeps its strings' buffers, so the only
  // allocations per workload are the model's own.
  pb::Workload scratch;
  for (size_t i = 0; i < workloads.size(); ++i) {
    const auto [offset, size] = workloads[i];
    if (!scratch.ParseFromArray(bytes.data() + offset, static_cast<int>(size))) {
      return absl::DataLossError(
          absl::StrCat("not a Snapshot message: workloads[", i, "] does not parse"));
    }
    AMBIT_RETURN_IF_ERROR(builder.AddWorkload(scratch));
  }
  return std::move(builder).Finish(head);
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
