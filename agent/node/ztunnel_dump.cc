#include "agent/node/ztunnel_dump.h"

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"

namespace ambit::node {
namespace {

using json = nlohmann::ordered_json;

// ztunnel's constants for what ambit has no notion of: one network, no locality.
constexpr uint16_t kHboneMtlsPort = 15008;

std::string Hostname(const std::string& ns, const std::string& name) {
  return absl::StrCat(name, ".", ns, ".svc.cluster.local");
}

// istiod's UID of a Kubernetes pod as workload: cluster, group (empty), kind, namespace, name.
std::string WorkloadUid(const std::string& cluster, const mesh::Workload& w) {
  return absl::StrCat(cluster, "//Pod/", w.namespace_name, "/", w.name);
}

// A waypoint as ztunnel's GatewayAddress with a hostname destination ("namespace/hostname").
json GatewayAddress(const std::string& waypoint_key) {
  std::pair<std::string, std::string> p = absl::StrSplit(waypoint_key, absl::MaxSplits('/', 1));
  return json{{"destination", absl::StrCat(p.first, "/", Hostname(p.first, p.second))},
              {"hboneMtlsPort", kHboneMtlsPort}};
}

// Istio's string match of an AuthorizationPolicy value: "*" any, "*x" suffix, "x*" prefix.
json StringMatch(std::string v) {
  if (v == "*") return json{{"Presence", json::array()}};
  if (absl::StartsWith(v, "*")) return json{{"Suffix", v.substr(1)}};
  if (absl::EndsWith(v, "*")) return json{{"Prefix", v.substr(0, v.size() - 1)}};
  return json{{"Exact", std::move(v)}};
}

// Principals as istiod sends them to ztunnel: without spiffe://.
json PrincipalMatches(const std::vector<std::string>& values) {
  json out = json::array();
  for (std::string v : values) {
    if (absl::StartsWith(v, "spiffe://")) v = v.substr(9);
    out.push_back(StringMatch(std::move(v)));
  }
  return out;
}

json StringMatches(const std::vector<std::string>& values) {
  json out = json::array();
  for (const auto& v : values) out.push_back(StringMatch(v));
  return out;
}

json Ports(const std::vector<std::string>& values) {
  json out = json::array();
  for (const auto& v : values) {
    uint32_t port = 0;
    if (absl::SimpleAtoi(v, &port) && port > 0 && port <= 65535) out.push_back(port);
  }
  return out;
}

json Cidrs(const std::vector<std::string>& values) {
  json out = json::array();
  for (const auto& v : values) {
    out.push_back(absl::StrContains(v, '/')
                      ? v
                      : absl::StrCat(v, absl::StrContains(v, ':') ? "/128" : "/32"));
  }
  return out;
}

json ServiceAccounts(const std::vector<std::string>& values, const std::string& policy_ns) {
  json out = json::array();
  for (const auto& v : values) {
    std::pair<std::string, std::string> p = absl::StrSplit(v, absl::MaxSplits('/', 1));
    if (p.second.empty()) p = {policy_ns, p.first};
    out.push_back(json{{"namespace", p.first}, {"serviceAccount", p.second}});
  }
  return out;
}

// One RbacMatch: only the non-empty lists, as ztunnel skips empty ones.
void Put(json& m, const char* key, json values) {
  if (!values.empty()) m[key] = std::move(values);
}

json SourceMatch(const authz::Source& s, const std::string& policy_ns) {
  json m = json::object();
  Put(m, "namespaces", StringMatches(s.namespaces));
  Put(m, "notNamespaces", StringMatches(s.not_namespaces));
  Put(m, "serviceAccounts", ServiceAccounts(s.service_accounts, policy_ns));
  Put(m, "notServiceAccounts", ServiceAccounts(s.not_service_accounts, policy_ns));
  Put(m, "principals", PrincipalMatches(s.principals));
  Put(m, "notPrincipals", PrincipalMatches(s.not_principals));
  Put(m, "sourceIps", Cidrs(s.ip_blocks));
  Put(m, "notSourceIps", Cidrs(s.not_ip_blocks));
  return m;
}

json OperationMatch(const authz::Operation& o) {
  json m = json::object();
  Put(m, "destinationPorts", Ports(o.ports));
  Put(m, "notDestinationPorts", Ports(o.not_ports));
  return m;
}

// A `when` condition on an L4 key as its own clause; nullopt for keys ztunnel has no field for.
std::optional<json> ConditionMatch(const authz::Condition& c) {
  json m = json::object();
  if (c.key == "source.ip") {
    Put(m, "sourceIps", Cidrs(c.values));
    Put(m, "notSourceIps", Cidrs(c.not_values));
  } else if (c.key == "source.namespace") {
    Put(m, "namespaces", StringMatches(c.values));
    Put(m, "notNamespaces", StringMatches(c.not_values));
  } else if (c.key == "source.principal") {
    Put(m, "principals", PrincipalMatches(c.values));
    Put(m, "notPrincipals", PrincipalMatches(c.not_values));
  } else if (c.key == "destination.ip") {
    Put(m, "destinationIps", Cidrs(c.values));
    Put(m, "notDestinationIps", Cidrs(c.not_values));
  } else if (c.key == "destination.port") {
    Put(m, "destinationPorts", Ports(c.values));
    Put(m, "notDestinationPorts", Ports(c.not_values));
  } else {
    return std::nullopt;
  }
  return m;
}

// ztunnel's Authorization: rules, each a list of clauses (all must match), each a list of
// matches (one must): the sources, the operations, then each condition.
json Policy(const authz::Policy& p, const std::string& root_namespace) {
  std::string scope = "Namespace";
  if (p.selector.has_value() && !p.selector->empty()) {
    scope = "WorkloadSelector";
  } else if (p.namespace_name == root_namespace) {
    scope = "Global";
  }
  json rules = json::array();
  for (const authz::Rule& r : p.rules.value_or(std::vector<authz::Rule>{})) {
    json clauses = json::array();
    if (!r.from.empty()) {
      json from = json::array();
      for (const auto& s : r.from) from.push_back(SourceMatch(s, p.namespace_name));
      clauses.push_back(std::move(from));
    }
    if (!r.to.empty()) {
      json to = json::array();
      for (const auto& o : r.to) to.push_back(OperationMatch(o));
      clauses.push_back(std::move(to));
    }
    for (const auto& c : r.when) {
      if (auto m = ConditionMatch(c)) clauses.push_back(json::array({*std::move(m)}));
    }
    rules.push_back(std::move(clauses));
  }
  return json{{"name", p.name},
              {"namespace", p.namespace_name},
              {"scope", scope},
              {"action", p.action == authz::Action::kDeny ? "Deny" : "Allow"},
              {"rules", std::move(rules)},
              {"dryRun", p.dry_run}};
}

std::string Rfc3339(int64_t unix_seconds) {
  if (unix_seconds == 0) return "";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%S+00:00", absl::FromUnixSeconds(unix_seconds),
                          absl::UTCTimeZone());
}

// ztunnel's CertsDump per identity; its state names: Available, Initializing, Unavailable: why.
json Certificates(const std::vector<DumpCertificate>& certs, const std::vector<DumpRoot>& trust) {
  json roots = json::array();
  for (const auto& r : trust) {
    roots.push_back(json{{"pem", ""},
                         {"serialNumber", r.serial},
                         {"validFrom", ""},
                         {"expirationTime", Rfc3339(r.not_after)}});
  }
  json out = json::array();
  for (const auto& c : certs) {
    std::string state;
    if (c.state == "valid" || c.state == "renewing") {
      state = "Available";
    } else if (c.state == "pending") {
      state = "Initializing";
    } else {
      state = absl::StrCat("Unavailable: ", c.last_error.empty() ? c.state : c.last_error);
    }
    json chain = json::array();
    if (!c.serial.empty()) {
      chain.push_back(json{{"pem", ""},
                           {"serialNumber", c.serial},
                           {"validFrom", Rfc3339(c.not_before)},
                           {"expirationTime", Rfc3339(c.not_after)}});
    }
    out.push_back(json{{"identity", c.identity},
                       {"state", state},
                       {"certChain", std::move(chain)},
                       {"rootCerts", roots}});
  }
  return out;
}

}  // namespace

std::string ZtunnelConfigDump(const ZtunnelDumpInputs& in) {
  const mesh::Snapshot& s = *in.snapshot;
  const std::string cluster = s.cluster_id.empty() ? "Kubernetes" : s.cluster_id;
  // Which services select each workload ("namespace/hostname"), and each workload's UID.
  std::map<std::string, std::vector<std::string>> services_of;
  std::map<std::string, const mesh::Workload*> by_key;
  for (const auto& w : s.workloads) by_key[w.Key()] = &w;
  for (const auto& svc : s.services) {
    for (const auto& e : svc.endpoints) {
      services_of[e].push_back(
          absl::StrCat(svc.namespace_name, "/", Hostname(svc.namespace_name, svc.name)));
    }
  }

  // Sorted by UID, as ztunnel sorts its workloads.
  std::map<std::string, json> workloads;
  for (const auto& w : s.workloads) {
    json ips = json::array();
    for (const auto& ip : w.ips) ips.push_back(ip.ToString());
    json j = {{"workloadIps", std::move(ips)}};
    if (!w.waypoint.empty()) j["waypoint"] = GatewayAddress(w.waypoint);
    j["protocol"] = w.in_mesh ? "HBONE" : "TCP";
    j["networkMode"] = "Standard";
    const std::string uid = WorkloadUid(cluster, w);
    j["uid"] = uid;
    j["name"] = w.name;
    j["namespace"] = w.namespace_name;
    if (!w.identity.trust_domain.empty()) j["trustDomain"] = w.identity.trust_domain;
    if (!w.service_account.empty()) j["serviceAccount"] = w.service_account;
    if (!w.workload_name.empty()) j["workloadName"] = w.workload_name;
    if (!w.canonical_service.empty()) j["canonicalName"] = w.canonical_service;
    if (!w.canonical_revision.empty()) j["canonicalRevision"] = w.canonical_revision;
    if (!w.node.empty()) j["node"] = w.node;
    j["status"] = "Healthy";
    j["clusterId"] = cluster;
    if (auto it = services_of.find(w.Key()); it != services_of.end()) j["services"] = it->second;
    j["capacity"] = 1;
    workloads.emplace(uid, std::move(j));
  }
  json workload_list = json::array();
  for (auto& [uid, j] : workloads) workload_list.push_back(std::move(j));

  // Sorted by hostname, as ztunnel sorts its services.
  std::map<std::string, json> services;
  for (const auto& svc : s.services) {
    const std::string host = Hostname(svc.namespace_name, svc.name);
    json vips = json::array();
    for (const auto& ip : svc.cluster_ips) vips.push_back(absl::StrCat("/", ip.ToString()));
    json ports = json::object();
    for (const auto& p : svc.ports) {
      if (p.protocol == mesh::Protocol::kTcp) ports[absl::StrCat(p.port)] = p.target_port;
    }
    json endpoints = json::object();
    for (const auto& e : svc.endpoints) {
      auto it = by_key.find(e);
      if (it == by_key.end()) continue;
      const std::string uid = WorkloadUid(cluster, *it->second);
      endpoints[uid] = json{{"workloadUid", uid}, {"port", ports}, {"status", "Healthy"}};
    }
    json j = {{"name", svc.name},
              {"namespace", svc.namespace_name},
              {"hostname", host},
              {"vips", std::move(vips)},
              {"ports", ports},
              {"endpoints", std::move(endpoints)},
              {"subjectAltNames", json::array()}};
    if (!svc.waypoint.empty()) j["waypoint"] = GatewayAddress(svc.waypoint);
    j["canonical"] = true;
    j["visibility"] = "Public";
    services.emplace(absl::StrCat(host, "/", svc.namespace_name), std::move(j));
  }
  json service_list = json::array();
  for (auto& [host, j] : services) service_list.push_back(std::move(j));

  // Sorted by namespace/name. istiod sends ztunnel ALLOW and DENY policies only.
  std::map<std::string, json> policies;
  for (const auto& p : s.authorization_policies) {
    if (p.action != authz::Action::kAllow && p.action != authz::Action::kDeny) continue;
    if (!p.target_refs.empty()) continue;  // a waypoint's, never a node proxy's
    policies.emplace(p.Key(), Policy(p, s.root_namespace));
  }
  json policy_list = json::array();
  for (auto& [key, j] : policies) policy_list.push_back(std::move(j));

  json dump = {
      {"workloads", std::move(workload_list)},
      {"services", std::move(service_list)},
      {"policies", std::move(policy_list)},
      {"stagedServices", json::object()},
      {"staticConfig",
       {{"workloads", json::array()}, {"policies", json::array()}, {"services", json::array()}}},
      {"version",
       {{"version", in.version},
        {"gitRevision", in.version},
        {"rustVersion", ""},
        {"buildProfile", ""},
        {"buildStatus", ""},
        {"istioVersion", ""},
        {"cryptoProvider", "boringssl"}}},
      {"config",
       {{"proxy", true},
        {"dnsProxy", false},
        {"clusterId", cluster},
        {"clusterDomain", "cluster.local"},
        {"network", ""},
        {"localNode", in.node_name},
        {"proxyMode", "Shared"},
        {"inboundAddr", "[::]:15008"},
        {"inboundPlaintextAddr", "[::]:15006"},
        {"outboundAddr", "[::]:15001"}}},
      {"certificates", Certificates(in.certificates, in.roots)},
  };
  return dump.dump(2);
}

}  // namespace ambit::node
