#include "agent/xds/mapping.h"

#include <arpa/inet.h>

#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "agent/authz/compile.h"
#include "agent/common/ip_address.h"
#include "agent/common/status.h"
#include "agent/state/waypoint.h"

namespace ambit::xds {
namespace {

namespace iw = ::istio::workload;
namespace is = ::istio::security;

absl::Status Refuse(absl::string_view object, absl::string_view field, absl::string_view message) {
  return absl::InvalidArgumentError(field.empty()
                                        ? absl::StrCat(object, ": ", message)
                                        : absl::StrCat(object, ": field ", field, ": ", message));
}

absl::StatusOr<IpAddress> AddressOf(absl::string_view bytes, absl::string_view object,
                                    absl::string_view field) {
  if (bytes.size() == 4) {
    in_addr a;
    std::memcpy(&a, bytes.data(), 4);
    return IpAddress::FromV4(a);
  }
  if (bytes.size() == 16) {
    in6_addr a;
    std::memcpy(&a, bytes.data(), 16);
    return IpAddress::FromV6(a);
  }
  return Refuse(object, field, absl::StrCat("an address is 4 or 16 bytes, not ", bytes.size()));
}

// The Istio string-pattern syntax the model keeps ("*", "p*", "*s", exact).
absl::StatusOr<std::string> PatternOf(const is::StringMatch& m, absl::string_view object,
                                      absl::string_view field) {
  switch (m.match_type_case()) {
    case is::StringMatch::kExact:
      // The model reads a leading or trailing '*' as a wildcard; istiod never sends one as exact.
      if (absl::StartsWith(m.exact(), "*") || absl::EndsWith(m.exact(), "*")) {
        return Refuse(object, field,
                      absl::StrCat("exact '", m.exact(),
                                   "' starts or ends with '*', which would "
                                   "match as a wildcard"));
      }
      return m.exact();
    case is::StringMatch::kPrefix:
      return absl::StrCat(m.prefix(), "*");
    case is::StringMatch::kSuffix:
      return absl::StrCat("*", m.suffix());
    case is::StringMatch::kPresence:
      return std::string("*");
    case is::StringMatch::MATCH_TYPE_NOT_SET:
      break;
  }
  return Refuse(object, field, "no match type (exact, prefix, suffix or presence)");
}

absl::StatusOr<std::vector<std::string>> Patterns(
    const google::protobuf::RepeatedPtrField<is::StringMatch>& list, absl::string_view object,
    absl::string_view field) {
  std::vector<std::string> out;
  for (int i = 0; i < list.size(); ++i) {
    AMBIT_ASSIGN_OR_RETURN(std::string p,
                           PatternOf(list[i], object, absl::StrCat(field, "[", i, "]")));
    out.push_back(std::move(p));
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> Cidrs(
    const google::protobuf::RepeatedPtrField<is::Address>& list, absl::string_view object,
    absl::string_view field) {
  std::vector<std::string> out;
  for (int i = 0; i < list.size(); ++i) {
    const std::string f = absl::StrCat(field, "[", i, "]");
    AMBIT_ASSIGN_OR_RETURN(IpAddress ip, AddressOf(list[i].address(), object, f));
    const uint32_t max = ip.is_v4() ? 32 : 128;
    if (list[i].length() > max) {
      return Refuse(object, absl::StrCat(f, ".length"),
                    absl::StrCat(list[i].length(), " is longer than ", max, " bits"));
    }
    out.push_back(absl::StrCat(ip.ToString(), "/", list[i].length()));
  }
  return out;
}

std::vector<std::string> Ports(const google::protobuf::RepeatedField<uint32_t>& list) {
  std::vector<std::string> out;
  for (uint32_t p : list) out.push_back(absl::StrCat(p));
  return out;
}

std::vector<std::string> ServiceAccounts(
    const google::protobuf::RepeatedPtrField<is::ServiceAccountMatch>& list) {
  std::vector<std::string> out;
  for (const auto& sa : list) {
    out.push_back(sa.namespace_().empty()
                      ? sa.serviceaccount()
                      : absl::StrCat(sa.namespace_(), "/", sa.serviceaccount()));
  }
  return out;
}

bool HasSourceFields(const is::Match& m) {
  return m.namespaces_size() + m.not_namespaces_size() + m.principals_size() +
             m.not_principals_size() + m.service_accounts_size() + m.not_service_accounts_size() +
             m.source_ips_size() + m.not_source_ips_size() >
         0;
}
bool HasPortFields(const is::Match& m) {
  return m.destination_ports_size() + m.not_destination_ports_size() > 0;
}
bool HasDestinationIpFields(const is::Match& m) {
  return m.destination_ips_size() + m.not_destination_ips_size() > 0;
}

// One match's fields as a Source (only its source fields).
absl::StatusOr<authz::Source> SourceOf(const is::Match& m, absl::string_view object,
                                       absl::string_view field) {
  authz::Source s;
  AMBIT_ASSIGN_OR_RETURN(s.namespaces,
                         Patterns(m.namespaces(), object, absl::StrCat(field, ".namespaces")));
  AMBIT_ASSIGN_OR_RETURN(s.not_namespaces, Patterns(m.not_namespaces(), object,
                                                    absl::StrCat(field, ".not_namespaces")));
  AMBIT_ASSIGN_OR_RETURN(s.principals,
                         Patterns(m.principals(), object, absl::StrCat(field, ".principals")));
  AMBIT_ASSIGN_OR_RETURN(s.not_principals, Patterns(m.not_principals(), object,
                                                    absl::StrCat(field, ".not_principals")));
  s.service_accounts = ServiceAccounts(m.service_accounts());
  s.not_service_accounts = ServiceAccounts(m.not_service_accounts());
  AMBIT_ASSIGN_OR_RETURN(s.ip_blocks,
                         Cidrs(m.source_ips(), object, absl::StrCat(field, ".source_ips")));
  AMBIT_ASSIGN_OR_RETURN(s.not_ip_blocks,
                         Cidrs(m.not_source_ips(), object, absl::StrCat(field, ".not_source_ips")));
  return s;
}

// One match as conditions (ANDed), for a clause that cannot be the rule's `from` or `to`.
absl::StatusOr<std::vector<authz::Condition>> ConditionsOf(const is::Match& m,
                                                           absl::string_view object,
                                                           absl::string_view field) {
  if (m.service_accounts_size() + m.not_service_accounts_size() > 0) {
    // Istio has no condition on service accounts, and a principal would bake in a trust domain.
    return Refuse(object, absl::StrCat(field, ".service_accounts"),
                  "service accounts are supported only in a clause of source matches alone");
  }
  std::vector<authz::Condition> out;
  auto add = [&out](const char* key, std::vector<std::string> values, bool negated) {
    if (values.empty()) return;
    authz::Condition c{.key = key};
    (negated ? c.not_values : c.values) = std::move(values);
    out.push_back(std::move(c));
  };
  AMBIT_ASSIGN_OR_RETURN(auto ns,
                         Patterns(m.namespaces(), object, absl::StrCat(field, ".namespaces")));
  add("source.namespace", std::move(ns), false);
  AMBIT_ASSIGN_OR_RETURN(
      auto not_ns, Patterns(m.not_namespaces(), object, absl::StrCat(field, ".not_namespaces")));
  add("source.namespace", std::move(not_ns), true);
  AMBIT_ASSIGN_OR_RETURN(auto pr,
                         Patterns(m.principals(), object, absl::StrCat(field, ".principals")));
  add("source.principal", std::move(pr), false);
  AMBIT_ASSIGN_OR_RETURN(
      auto not_pr, Patterns(m.not_principals(), object, absl::StrCat(field, ".not_principals")));
  add("source.principal", std::move(not_pr), true);
  AMBIT_ASSIGN_OR_RETURN(auto sip,
                         Cidrs(m.source_ips(), object, absl::StrCat(field, ".source_ips")));
  add("source.ip", std::move(sip), false);
  AMBIT_ASSIGN_OR_RETURN(auto not_sip,
                         Cidrs(m.not_source_ips(), object, absl::StrCat(field, ".not_source_ips")));
  add("source.ip", std::move(not_sip), true);
  AMBIT_ASSIGN_OR_RETURN(
      auto dip, Cidrs(m.destination_ips(), object, absl::StrCat(field, ".destination_ips")));
  add("destination.ip", std::move(dip), false);
  AMBIT_ASSIGN_OR_RETURN(auto not_dip, Cidrs(m.not_destination_ips(), object,
                                             absl::StrCat(field, ".not_destination_ips")));
  add("destination.ip", std::move(not_dip), true);
  add("destination.port", Ports(m.destination_ports()), false);
  add("destination.port", Ports(m.not_destination_ports()), true);
  return out;
}

// ztunnel's rule (clauses ANDed, a clause's matches ORed, a match's fields ANDed) as ambit rules
// (from ORed, to ORed, conditions ANDed; rules ORed). A clause of source matches becomes `from`,
// one of port matches `to`, a clause of one match conditions; a clause that fits none of these
// distributes: one ambit rule per match, each with that match's conditions.
absl::StatusOr<std::vector<authz::Rule>> RulesOf(const is::Rule& rule, absl::string_view object,
                                                 absl::string_view field) {
  std::vector<authz::Rule> acc(1);
  bool from_used = false, to_used = false;
  for (int c = 0; c < rule.clauses_size(); ++c) {
    const is::Clause& clause = rule.clauses(c);
    const std::string cf = absl::StrCat(field, ".clauses[", c, "]");
    if (clause.matches_size() == 0) return std::vector<authz::Rule>{};  // matches nothing
    bool always = false, sources = true, ports = true;
    for (int m = 0; m < clause.matches_size(); ++m) {
      const is::Match& match = clause.matches(m);
      if (match.extensions_size() > 0) {
        return Refuse(
            object, absl::StrCat(cf, ".matches[", m, "].extensions"),
            absl::StrCat("extension '", match.extensions(0).name(), "' is not supported"));
      }
      const bool src = HasSourceFields(match), port = HasPortFields(match),
                 dip = HasDestinationIpFields(match);
      if (!src && !port && !dip) always = true;  // an empty match matches everything
      if (port || dip) sources = false;
      if (src || dip) ports = false;
    }
    if (always) continue;
    if (sources && !from_used) {
      std::vector<authz::Source> from;
      for (int m = 0; m < clause.matches_size(); ++m) {
        AMBIT_ASSIGN_OR_RETURN(authz::Source s, SourceOf(clause.matches(m), object,
                                                         absl::StrCat(cf, ".matches[", m, "]")));
        from.push_back(std::move(s));
      }
      for (authz::Rule& r : acc) r.from = from;
      from_used = true;
      continue;
    }
    if (ports && !to_used) {
      std::vector<authz::Operation> to;
      for (const is::Match& m : clause.matches()) {
        to.push_back(authz::Operation{.ports = Ports(m.destination_ports()),
                                      .not_ports = Ports(m.not_destination_ports())});
      }
      for (authz::Rule& r : acc) r.to = to;
      to_used = true;
      continue;
    }
    std::vector<std::vector<authz::Condition>> alternatives;
    for (int m = 0; m < clause.matches_size(); ++m) {
      AMBIT_ASSIGN_OR_RETURN(auto conds, ConditionsOf(clause.matches(m), object,
                                                      absl::StrCat(cf, ".matches[", m, "]")));
      alternatives.push_back(std::move(conds));
    }
    if (acc.size() * alternatives.size() > kMaxRulesPerPolicy) {
      return Refuse(object, cf,
                    absl::StrCat("the rule expands to more than ", kMaxRulesPerPolicy,
                                 " rules (clauses of several matches that mix fields)"));
    }
    std::vector<authz::Rule> next;
    for (const authz::Rule& r : acc) {
      for (const auto& conds : alternatives) {
        authz::Rule n = r;
        n.when.insert(n.when.end(), conds.begin(), conds.end());
        next.push_back(std::move(n));
      }
    }
    acc = std::move(next);
  }
  return acc;
}

// Istio's waypoint reference by hostname ("<name>.<namespace>.svc.<domain>") as the model's
// labels on the user plus the waypoint's Gateway. An address waypoint has no name to bind to.
absl::Status MapWaypoint(const iw::GatewayAddress& waypoint, absl::string_view object,
                         absl::string_view field, std::map<std::string, std::string>* labels,
                         Mapped* out) {
  if (waypoint.destination_case() == iw::GatewayAddress::DESTINATION_NOT_SET)
    return absl::OkStatus();
  if (waypoint.destination_case() != iw::GatewayAddress::kHostname) {
    return Refuse(object, absl::StrCat(field, ".address"),
                  "a waypoint given by address is not supported (ambit binds waypoints by "
                  "name); its traffic would bypass the waypoint's policy");
  }
  const iw::NamespacedHostname& h = waypoint.hostname();
  std::vector<absl::string_view> parts = absl::StrSplit(h.hostname(), '.');
  if (h.namespace_().empty() || parts.empty() || parts[0].empty()) {
    return Refuse(object, absl::StrCat(field, ".hostname"),
                  absl::StrCat("'", h.namespace_(), "/", h.hostname(),
                               "' names no waypoint (namespace and hostname are required)"));
  }
  const std::string name(parts[0]);
  (*labels)[state::kUseWaypointLabel] = name;
  (*labels)[state::kUseWaypointNamespaceLabel] = h.namespace_();
  state::Gateway gw;
  gw.name = name;
  gw.namespace_name = h.namespace_();
  gw.gateway_class = std::string(state::kWaypointGatewayClass);
  gw.source_file = std::string(kSourceName);
  out->push_back({absl::StrCat("Gateway ", gw.Key()), std::move(gw)});
  return absl::OkStatus();
}

absl::StatusOr<Mapped> MapWorkload(const iw::Workload& w, const MapContext& ctx) {
  const std::string object = absl::StrCat("Workload ", w.uid());
  if (w.uid().empty()) return Refuse("Workload", "uid", "must not be empty");
  if (w.name().empty()) return Refuse(object, "name", "must not be empty");
  if (w.namespace_().empty()) return Refuse(object, "namespace", "must not be empty");
  const std::string trust_domain = w.trust_domain().empty() ? "cluster.local" : w.trust_domain();
  if (trust_domain != ctx.trust_domain) {
    return Refuse(object, "trust_domain",
                  absl::StrCat("'", trust_domain, "' is not the mesh's trust domain '",
                               ctx.trust_domain, "' (mesh.yaml trustDomain)"));
  }
  if (!iw::TunnelProtocol_IsValid(w.tunnel_protocol())) {
    return Refuse(object, "tunnel_protocol", absl::StrCat("unknown value ", w.tunnel_protocol()));
  }
  if (!iw::NetworkMode_IsValid(w.network_mode())) {
    return Refuse(object, "network_mode", absl::StrCat("unknown value ", w.network_mode()));
  }
  if (!iw::WorkloadStatus_IsValid(w.status())) {
    return Refuse(object, "status", absl::StrCat("unknown value ", w.status()));
  }
  if (!iw::WorkloadType_IsValid(w.workload_type())) {
    return Refuse(object, "workload_type", absl::StrCat("unknown value ", w.workload_type()));
  }
  if (w.application_tunnel().protocol() != iw::ApplicationTunnel::NONE) {
    // The application expects every connection behind a PROXY header ambit does not write.
    return Refuse(object, "application_tunnel.protocol",
                  iw::ApplicationTunnel::Protocol_IsValid(w.application_tunnel().protocol())
                      ? "application tunnels (PROXY protocol) are not supported"
                      : absl::StrCat("unknown value ", w.application_tunnel().protocol()));
  }
  if (w.has_network_gateway()) {
    return Refuse(object, "network_gateway",
                  "workloads behind a network gateway (multi-network) are not supported");
  }
  Mapped out;
  state::Pod pod;
  pod.uid = w.uid();
  pod.name = w.name();
  pod.namespace_name = w.namespace_();
  pod.service_account = w.service_account().empty() ? "default" : w.service_account();
  pod.node_name = w.node();
  pod.workload_name = w.workload_name();
  pod.canonical_service = w.canonical_name();
  pod.canonical_revision = w.canonical_revision();
  pod.source_file = std::string(kSourceName);
  for (int i = 0; i < w.addresses_size(); ++i) {
    AMBIT_ASSIGN_OR_RETURN(IpAddress ip,
                           AddressOf(w.addresses(i), object, absl::StrCat("addresses[", i, "]")));
    pod.ips.push_back(ip);
  }
  // Only HBONE workloads are ztunnel's to capture; a host-network one shares the node's
  // addresses and is never captured.
  if (w.tunnel_protocol() == iw::HBONE && w.network_mode() != iw::HOST_NETWORK) {
    pod.labels[std::string(state::kDataplaneModeLabel)] = "ambient";
  }
  AMBIT_RETURN_IF_ERROR(MapWaypoint(w.waypoint(), object, "waypoint", &pod.labels.Mutable(), &out));
  for (int i = 0; i < w.authorization_policies_size(); ++i) {
    std::vector<absl::string_view> parts =
        absl::StrSplit(w.authorization_policies(i), absl::MaxSplits('/', 1));
    if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) {
      return Refuse(object, absl::StrCat("authorization_policies[", i, "]"),
                    absl::StrCat("'", w.authorization_policies(i), "' is not <namespace>/<name>"));
    }
    pod.labels[PolicyLabel(parts[0], parts[1])] = "true";
  }
  for (const auto& [key, ports] : w.services()) {
    std::vector<absl::string_view> parts = absl::StrSplit(key, absl::MaxSplits('/', 1));
    if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) {
      return Refuse(object, absl::StrCat("services[", key, "]"),
                    "the key is not <namespace>/<hostname>");
    }
    pod.labels[ServiceLabel(parts[0], parts[1])] = "true";
  }
  out.push_back({absl::StrCat("Pod ", pod.Key()), std::move(pod)});
  return out;
}

absl::StatusOr<std::string> AppProtocolName(int value, absl::string_view object,
                                            absl::string_view field) {
  switch (value) {
    case iw::UNKNOWN:
      return std::string();
    case iw::HTTP11:
      return std::string("http");
    case iw::HTTP2:
      return std::string("http2");
    case iw::GRPC:
      return std::string("grpc");
    case iw::TCP:
      return std::string("tcp");
    case iw::TLS:
      return std::string("tls");
    default:
      return Refuse(object, field, absl::StrCat("unknown value ", value));
  }
}

absl::StatusOr<Mapped> MapService(const iw::Service& s, const MapContext&) {
  const std::string object = absl::StrCat("Service ", s.namespace_(), "/", s.hostname());
  if (s.namespace_().empty()) return Refuse(object, "namespace", "must not be empty");
  if (s.hostname().empty()) return Refuse(object, "hostname", "must not be empty");
  if (s.name().empty()) return Refuse(object, "name", "must not be empty");
  if (!iw::Service::Visibility_IsValid(s.visibility())) {
    return Refuse(object, "visibility", absl::StrCat("unknown value ", s.visibility()));
  }
  if (!iw::IPFamilies_IsValid(s.ip_families())) {
    return Refuse(object, "ip_families", absl::StrCat("unknown value ", s.ip_families()));
  }
  if (s.has_load_balancing()) {
    const iw::LoadBalancing& lb = s.load_balancing();
    if (!iw::LoadBalancing::Mode_IsValid(lb.mode()) ||
        !iw::LoadBalancing::HealthPolicy_IsValid(lb.health_policy())) {
      return Refuse(object, "load_balancing", "unknown mode or health policy value");
    }
    for (int i = 0; i < lb.routing_preference_size(); ++i) {
      if (!iw::LoadBalancing::Scope_IsValid(lb.routing_preference(i))) {
        return Refuse(object, absl::StrCat("load_balancing.routing_preference[", i, "]"),
                      absl::StrCat("unknown value ", lb.routing_preference(i)));
      }
    }
  }
  Mapped out;
  state::Service svc;
  svc.name = s.name();
  svc.namespace_name = s.namespace_();
  svc.source_file = std::string(kSourceName);
  svc.selector[ServiceLabel(s.namespace_(), s.hostname())] = "true";
  for (int i = 0; i < s.addresses_size(); ++i) {
    AMBIT_ASSIGN_OR_RETURN(IpAddress ip, AddressOf(s.addresses(i).address(), object,
                                                   absl::StrCat("addresses[", i, "].address")));
    svc.cluster_ips.push_back(ip);
  }
  for (int i = 0; i < s.ports_size(); ++i) {
    const iw::Port& p = s.ports(i);
    const std::string f = absl::StrCat("ports[", i, "]");
    if (p.service_port() == 0 || p.service_port() > 65535) {
      return Refuse(object, absl::StrCat(f, ".service_port"),
                    absl::StrCat(p.service_port(), " is not a port (1-65535)"));
    }
    if (p.target_port() > 65535) {
      return Refuse(object, absl::StrCat(f, ".target_port"),
                    absl::StrCat(p.target_port(), " is not a port (0-65535)"));
    }
    state::ServicePort port;
    port.port = static_cast<uint16_t>(p.service_port());
    port.name = absl::StrCat("port-", p.service_port());
    port.target_port = absl::StrCat(p.target_port() == 0 ? p.service_port() : p.target_port());
    AMBIT_ASSIGN_OR_RETURN(port.app_protocol, AppProtocolName(p.app_protocol(), object,
                                                              absl::StrCat(f, ".app_protocol")));
    svc.ports.push_back(std::move(port));
  }
  AMBIT_RETURN_IF_ERROR(MapWaypoint(s.waypoint(), object, "waypoint", &svc.labels, &out));
  out.push_back({absl::StrCat("Service ", svc.Key()), std::move(svc)});
  return out;
}

}  // namespace

std::string PolicyLabel(absl::string_view policy_namespace, absl::string_view policy_name) {
  return absl::StrCat(kLabelPrefix, "authz/", policy_namespace, "/", policy_name);
}

std::string ServiceLabel(absl::string_view service_namespace, absl::string_view hostname) {
  return absl::StrCat(kLabelPrefix, "service/", service_namespace, "/", hostname);
}

absl::StatusOr<Mapped> MapAddress(const iw::Address& address, const MapContext& ctx) {
  switch (address.type_case()) {
    case iw::Address::kWorkload:
      return MapWorkload(address.workload(), ctx);
    case iw::Address::kService:
      return MapService(address.service(), ctx);
    case iw::Address::TYPE_NOT_SET:
      break;
  }
  return Refuse("Address", "type", "neither a workload nor a service");
}

absl::StatusOr<Mapped> MapAuthorization(const is::Authorization& a, const MapContext& ctx) {
  const std::string object = absl::StrCat("Authorization ", a.namespace_(), "/", a.name());
  if (a.name().empty()) return Refuse(object, "name", "must not be empty");
  if (a.namespace_().empty()) return Refuse(object, "namespace", "must not be empty");
  if (a.extensions_size() > 0) {
    return Refuse(object, "extensions",
                  absl::StrCat("extension '", a.extensions(0).name(), "' is not supported"));
  }
  authz::Policy p;
  p.name = a.name();
  p.namespace_name = a.namespace_();
  p.dry_run = a.dry_run();
  p.source_file = std::string(kSourceName);
  switch (a.action()) {
    case is::ALLOW:
      p.action = authz::Action::kAllow;
      break;
    case is::DENY:
      p.action = authz::Action::kDeny;
      break;
    default:
      return Refuse(object, "action", absl::StrCat("unknown value ", a.action()));
  }
  switch (a.scope()) {
    case is::GLOBAL:
      // A root-namespace policy without selector is what applies mesh-wide in the model.
      p.namespace_name = ctx.root_namespace;
      break;
    case is::NAMESPACE:
      if (a.namespace_() == ctx.root_namespace) {
        // Without a selector the model would apply it mesh-wide; the root namespace's own
        // workloads are not told apart from the mesh's, so refuse rather than widen it.
        return Refuse(object, "scope",
                      "a NAMESPACE policy of the root namespace would apply mesh-wide");
      }
      break;
    case is::WORKLOAD_SELECTOR:
      p.selector =
          std::map<std::string, std::string>{{PolicyLabel(a.namespace_(), a.name()), "true"}};
      break;
    default:
      return Refuse(object, "scope", absl::StrCat("unknown value ", a.scope()));
  }
  std::vector<authz::Rule> rules;
  for (int i = 0; i < a.rules_size(); ++i) {
    AMBIT_ASSIGN_OR_RETURN(std::vector<authz::Rule> r,
                           RulesOf(a.rules(i), object, absl::StrCat("rules[", i, "]")));
    rules.insert(rules.end(), std::make_move_iterator(r.begin()), std::make_move_iterator(r.end()));
    if (rules.size() > kMaxRulesPerPolicy) {
      return Refuse(object, absl::StrCat("rules[", i, "]"),
                    absl::StrCat("the policy expands to more than ", kMaxRulesPerPolicy, " rules"));
    }
  }
  p.rules = std::move(rules);
  if (absl::StatusOr<authz::CompiledPolicy> compiled = authz::Compile(p); !compiled.ok()) {
    return Refuse(object, "", compiled.status().message());
  }
  Mapped out;
  out.push_back({absl::StrCat("AuthorizationPolicy ", p.Key()), std::move(p)});
  return out;
}

absl::StatusOr<Mapped> MapResource(absl::string_view type_url, absl::string_view name,
                                   absl::string_view bytes, const MapContext& ctx) {
  if (type_url == kAddressType) {
    iw::Address address;
    if (!address.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
      return Refuse(absl::StrCat("Address ", name), "", "not a valid istio.workload.Address");
    }
    std::string expected;
    if (address.has_workload()) expected = address.workload().uid();
    if (address.has_service()) {
      expected = absl::StrCat(address.service().namespace_(), "/", address.service().hostname());
    }
    if (expected != name) {
      return Refuse(absl::StrCat("Address ", name), "",
                    absl::StrCat("the resource holds '", expected,
                                 "'; a workload is named by its uid, a service by "
                                 "<namespace>/<hostname>"));
    }
    return MapAddress(address, ctx);
  }
  if (type_url == kAuthorizationType) {
    is::Authorization authorization;
    if (!authorization.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
      return Refuse(absl::StrCat("Authorization ", name), "",
                    "not a valid istio.security.Authorization");
    }
    const std::string expected =
        absl::StrCat(authorization.namespace_(), "/", authorization.name());
    if (expected != name) {
      return Refuse(absl::StrCat("Authorization ", name), "",
                    absl::StrCat("the resource holds '", expected,
                                 "'; an authorization is named <namespace>/<name>"));
    }
    return MapAuthorization(authorization, ctx);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown type URL '", type_url, "'"));
}

}  // namespace ambit::xds
