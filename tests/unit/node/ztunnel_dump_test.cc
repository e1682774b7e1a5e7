#include "agent/node/ztunnel_dump.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace ambit::node {
namespace {

using json = nlohmann::json;

mesh::Snapshot Snapshot() {
  mesh::Snapshot s;
  s.cluster_id = "east";
  s.root_namespace = "istio-system";
  mesh::Workload w;
  w.namespace_name = "backend";
  w.name = "api-6b9f7c4d8-kq2zp";
  w.service_account = "api";
  w.node = "node2";
  w.workload_name = "api";
  w.canonical_service = "api";
  w.canonical_revision = "v2";
  w.identity = *identity::ParseSpiffeId("spiffe://cluster.local/ns/backend/sa/api");
  w.ips = {*IpAddress::Parse("198.18.0.5")};
  w.in_mesh = true;
  w.waypoint = "backend/waypoint";
  s.workloads.push_back(w);
  mesh::Service svc;
  svc.namespace_name = "backend";
  svc.name = "api";
  svc.cluster_ips = {*IpAddress::Parse("198.18.100.1")};
  svc.ports = {{80, 8080, mesh::Protocol::kTcp}, {53, 53, mesh::Protocol::kUdp}};
  svc.endpoints = {"backend/api-6b9f7c4d8-kq2zp", "backend/gone"};
  s.services.push_back(svc);
  authz::Policy allow;
  allow.name = "callers";
  allow.namespace_name = "backend";
  allow.selector = std::map<std::string, std::string>{{"app", "api"}};
  authz::Rule rule;
  rule.from.push_back(authz::Source{.principals = {"cluster.local/ns/default/sa/web", "*"},
                                    .namespaces = {"front*", "*end"},
                                    .service_accounts = {"other/sa1", "sa2"},
                                    .ip_blocks = {"198.18.0.0/16", "198.18.0.9"}});
  rule.to.push_back(authz::Operation{.ports = {"8080"}, .not_ports = {"9090"}});
  rule.when.push_back(authz::Condition{.key = "destination.port", .values = {"8080"}});
  rule.when.push_back(authz::Condition{.key = "request.headers[x]", .values = {"y"}});
  allow.rules = std::vector<authz::Rule>{rule};
  s.authorization_policies.push_back(allow);
  authz::Policy deny_all;
  deny_all.name = "deny";
  deny_all.namespace_name = "istio-system";
  deny_all.action = authz::Action::kDeny;
  deny_all.rules = std::vector<authz::Rule>{authz::Rule{}};
  deny_all.dry_run = true;
  s.authorization_policies.push_back(deny_all);
  authz::Policy audit;
  audit.name = "audit";
  audit.namespace_name = "backend";
  audit.action = authz::Action::kAudit;
  s.authorization_policies.push_back(audit);
  return s;
}

TEST(ZtunnelDumpTest, WorkloadsServicesAndPoliciesInZtunnelsShapes) {
  mesh::Snapshot s = Snapshot();
  ZtunnelDumpInputs in{&s};
  in.certificates.push_back(
      {"spiffe://cluster.local/ns/backend/sa/api", "valid", "0a1b", 1800000000, 1800086400, ""});
  in.certificates.push_back(
      {"spiffe://cluster.local/ns/backend/sa/db", "failed", "", 0, 0, "CA unreachable"});
  in.roots.push_back({"01", 1900000000});
  in.node_name = "node2";
  in.version = "v1.2.3";
  json d = json::parse(ZtunnelConfigDump(in));

  ASSERT_EQ(d["workloads"].size(), 1u);
  const json& w = d["workloads"][0];
  EXPECT_EQ(w["uid"], "east//Pod/backend/api-6b9f7c4d8-kq2zp");
  EXPECT_EQ(w["workloadIps"], json::array({"198.18.0.5"}));
  EXPECT_EQ(w["protocol"], "HBONE");
  EXPECT_EQ(w["workloadName"], "api");
  EXPECT_EQ(w["canonicalRevision"], "v2");
  EXPECT_EQ(w["clusterId"], "east");
  EXPECT_EQ(w["waypoint"], json({{"destination", "backend/waypoint.backend.svc.cluster.local"},
                                 {"hboneMtlsPort", 15008}}));
  EXPECT_EQ(w["services"], json::array({"backend/api.backend.svc.cluster.local"}));

  ASSERT_EQ(d["services"].size(), 1u);
  const json& svc = d["services"][0];
  EXPECT_EQ(svc["vips"], json::array({"/198.18.100.1"}));
  EXPECT_EQ(svc["ports"], json({{"80", 8080}}));  // TCP ports only
  // An endpoint naming no workload of the snapshot is left out.
  EXPECT_EQ(svc["endpoints"], json({{"east//Pod/backend/api-6b9f7c4d8-kq2zp",
                                     {{"workloadUid", "east//Pod/backend/api-6b9f7c4d8-kq2zp"},
                                      {"port", {{"80", 8080}}},
                                      {"status", "Healthy"}}}}));

  // AUDIT is not sent to ztunnel; the rest sorted by namespace/name.
  ASSERT_EQ(d["policies"].size(), 2u);
  const json& allow = d["policies"][0];
  EXPECT_EQ(allow["scope"], "WorkloadSelector");
  EXPECT_EQ(allow["action"], "Allow");
  const json want_rules = json::array({json::array({
      json::array(
          {{{"namespaces", {{{"Prefix", "front"}}, {{"Suffix", "end"}}}},
            {"serviceAccounts",
             {{{"namespace", "other"}, {"serviceAccount", "sa1"}},
              {{"namespace", "backend"}, {"serviceAccount", "sa2"}}}},
            {"principals",
             {{{"Exact", "cluster.local/ns/default/sa/web"}}, {{"Presence", json::array()}}}},
            {"sourceIps", {"198.18.0.0/16", "198.18.0.9/32"}}}}),
      json::array({{{"destinationPorts", {8080}}, {"notDestinationPorts", {9090}}}}),
      json::array({{{"destinationPorts", {8080}}}}),
  })});
  EXPECT_EQ(allow["rules"], want_rules);
  const json& deny = d["policies"][1];
  EXPECT_EQ(deny["scope"], "Global");
  EXPECT_EQ(deny["action"], "Deny");
  EXPECT_EQ(deny["dryRun"], true);
  EXPECT_EQ(deny["rules"], json::array({json::array()}));

  ASSERT_EQ(d["certificates"].size(), 2u);
  EXPECT_EQ(d["certificates"][0]["state"], "Available");
  EXPECT_EQ(d["certificates"][0]["certChain"][0]["validFrom"], "2027-01-15T08:00:00+00:00");
  EXPECT_EQ(d["certificates"][0]["certChain"][0]["serialNumber"], "0a1b");
  EXPECT_EQ(d["certificates"][0]["rootCerts"][0]["serialNumber"], "01");
  EXPECT_EQ(d["certificates"][1]["state"], "Unavailable: CA unreachable");
  EXPECT_EQ(d["certificates"][1]["certChain"], json::array());
  EXPECT_EQ(d["version"]["version"], "v1.2.3");
  EXPECT_EQ(d["config"]["clusterId"], "east");
  EXPECT_EQ(d["config"]["localNode"], "node2");
}

}  // namespace
}  // namespace ambit::node
