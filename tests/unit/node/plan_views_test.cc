#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <memory>
#include <string>
#include <variant>

#include "agent/config/kube_yaml.h"
#include "agent/node/policy_diff.h"
#include "agent/node/strict_readiness.h"

namespace ambit::node {
namespace {

namespace pb = ::ambit::admin::v1;
namespace dp = ::ambit::dataplane::v1;

state::Pod Pod(const std::string& ns, const std::string& name, const std::string& sa,
               const std::string& ip, std::map<std::string, std::string> labels) {
  state::Pod p;
  p.namespace_name = ns;
  p.name = name;
  p.service_account = sa;
  p.node_name = "node1";
  p.labels = std::move(labels);
  p.netns_path = "/var/run/netns/x";  // ambit.dev/netns: in the mesh
  p.ips = {*IpAddress::Parse(ip)};
  return p;
}

std::shared_ptr<const state::ClusterState> Cluster() {
  auto c = std::make_shared<state::ClusterState>();
  for (const auto& p : {Pod("backend", "api-0", "api", "198.18.0.2", {{"app", "api"}}),
                        Pod("backend", "db-0", "db", "198.18.0.3", {{"role", "db"}}),
                        Pod("frontend", "web-0", "web", "198.18.0.4", {{"app", "web"}})}) {
    c->pods[p.Key()] = p;
  }
  return c;
}

dp::PlaintextClient Client(const std::string& pod, uint32_t port, const std::string& src,
                           uint64_t connections, uint64_t refused) {
  dp::PlaintextClient c;
  c.set_pod(pod);
  c.set_port(port);
  c.set_source(src);
  c.set_connections(connections);
  c.set_refused(refused);
  c.set_first_seen_unix_ms(1'800'000'000'000);
  c.set_last_seen_unix_ms(1'800'000'005'000);
  return c;
}

TEST(StrictReadinessTest, DeliveredPlaintextWouldBeRefusedAndIsExempted) {
  StrictReadinessInputs in{.cluster = Cluster(),
                           .enrolled = {"backend/api-0", "backend/db-0", "frontend/web-0"},
                           .node_name = "node1"};
  dp::StatsResponse stats;
  *stats.add_plaintext_clients() = Client("backend/api-0", 8080, "198.18.0.9", 3, 0);
  *stats.add_plaintext_clients() = Client("backend/db-0", 5432, "198.18.0.9", 2, 2);
  *stats.add_plaintext_clients() = Client("frontend/web-0", 80, "198.18.0.9", 1, 0);
  pb::StrictReadinessRequest req;
  req.set_namespace_("backend");
  auto out = StrictReadiness(in, stats, req);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->would_refuse());
  ASSERT_EQ(out->workloads_size(), 2);  // backend only
  EXPECT_EQ(out->workloads(0).name(), "api-0");
  EXPECT_TRUE(out->workloads(0).would_refuse());
  EXPECT_EQ(out->workloads(0).ports(0).clients(0).first_seen().unix_seconds(), 1'800'000'000);
  EXPECT_EQ(out->workloads(1).name(), "db-0");
  EXPECT_FALSE(out->workloads(1).would_refuse());  // refused every time already
  std::vector<YAML::Node> docs = YAML::LoadAll(out->suggested_peer_authentication());
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0]["metadata"]["name"].as<std::string>(), "default");
  EXPECT_EQ(docs[0]["spec"]["mtls"]["mode"].as<std::string>(), "STRICT");
  EXPECT_FALSE(docs[0]["spec"]["portLevelMtls"]);
  EXPECT_EQ(docs[1]["metadata"]["name"].as<std::string>(), "api-strict");
  EXPECT_EQ(docs[1]["spec"]["selector"]["matchLabels"]["app"].as<std::string>(), "api");
  EXPECT_EQ(docs[1]["spec"]["portLevelMtls"]["8080"]["mode"].as<std::string>(), "PERMISSIVE");
  // The suggestion is what the config layer accepts.
  auto parsed = config::ParseKubeYaml("pa.yaml", out->suggested_peer_authentication());
  EXPECT_TRUE(parsed.errors.empty()) << parsed.errors[0].ToString();
  EXPECT_EQ(parsed.objects.size(), 2u);
}

TEST(StrictReadinessTest, AnotherNodesPodAndAnUnknownPodAreErrors) {
  StrictReadinessInputs in{
      .cluster = Cluster(), .enrolled = {"backend/api-0"}, .node_name = "node2"};
  pb::StrictReadinessRequest req;
  req.set_namespace_("backend");
  req.set_name("db-0");
  EXPECT_EQ(StrictReadiness(in, {}, req).status().code(), absl::StatusCode::kFailedPrecondition);
  req.set_name("nope");
  EXPECT_EQ(StrictReadiness(in, {}, req).status().code(), absl::StatusCode::kNotFound);
  req.set_name("api-0");
  auto out = StrictReadiness(in, {}, req);
  ASSERT_TRUE(out.ok());
  EXPECT_FALSE(out->would_refuse());
  // One pod: its own STRICT policy.
  EXPECT_NE(out->suggested_peer_authentication().find("name: api-strict"), std::string::npos);
}

constexpr char kOnlyWeb[] = R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: only-web
  namespace: backend
spec:
  selector:
    matchLabels:
      app: api
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/frontend/sa/web", "spiffe://cluster.local/ns/x/sa/y"]
    - source:
        namespaces: ["nowhere"]
)";

TEST(PolicyDiffTest, ClosesFlipsAndLints) {
  PolicyDiffInputs in{.cluster = Cluster()};
  dp::StatsResponse live;
  auto flow = [&](uint64_t id, const std::string& src, const std::string& principal) {
    auto* f = live.add_flows();
    f->set_id(id);
    f->set_direction("inbound");
    f->set_pod("backend/api-0");
    f->set_mtls(!principal.empty());
    f->set_mode(principal.empty() ? "plaintext" : "hbone");
    f->mutable_source()->set_address(src);
    f->mutable_source()->set_principal(principal);
    f->mutable_destination()->set_address("198.18.0.2:8080");
    f->set_policy("default");
  };
  flow(1, "198.18.0.9:40000", "");
  flow(2, "198.18.0.4:40001", "spiffe://cluster.local/ns/frontend/sa/web");
  pb::PolicyDiffRequest req;
  auto* f = req.add_files();
  f->set_name("allow.yaml");
  f->set_content(kOnlyWeb);
  auto out = PolicyDiff(in, live, req);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->connections_checked(), 2);
  ASSERT_EQ(out->closed_size(), 1);
  EXPECT_EQ(out->closed(0).id(), 1u);
  ASSERT_EQ(out->flipped_size(), 1);
  EXPECT_EQ(out->flipped(0).name(), "api-0");
  EXPECT_EQ(out->flipped(0).after(), "default-deny");
  std::set<std::string> kinds;
  for (const auto& finding : out->findings()) kinds.insert(finding.kind());
  EXPECT_EQ(kinds, (std::set<std::string>{"spiffe-prefix", "unknown-namespace"}));
}

TEST(PolicyDiffTest, AnEmptyDirectoryOpensWhatAnAllowClosedAndBadFilesAreProblems) {
  auto current = config::ParseKubeYaml("in-force.yaml", kOnlyWeb);
  ASSERT_EQ(current.objects.size(), 1u);
  PolicyDiffInputs in{.cluster = Cluster()};
  const auto& policy = std::get<authz::Policy>(current.objects[0].object);
  in.current.authorization_policies[policy.Key()] = policy;
  pb::PolicyDiffRequest req;
  auto* f = req.add_files();
  f->set_name("broken.yaml");
  f->set_content(
      "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
      "metadata: {name: x, namespace: backend}\nspec: {action: BOGUS}\n");
  auto out = PolicyDiff(in, {}, req);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->authorization_policies(), 0);
  ASSERT_EQ(out->flipped_size(), 1);
  EXPECT_EQ(out->flipped(0).before(), "default-deny");
  EXPECT_EQ(out->flipped(0).after(), "default-allow");
  ASSERT_GE(out->problems_size(), 1);
  EXPECT_EQ(out->problems(0).file(), "broken.yaml");
  EXPECT_NE(out->problems(0).text().find("BOGUS"), std::string::npos);
  EXPECT_TRUE(out->findings().empty());  // findings are about the new set only
}

TEST(PolicyDiffTest, RefusesWhatIsOverTheBound) {
  PolicyDiffInputs in{.cluster = Cluster()};
  pb::PolicyDiffRequest req;
  for (int i = 0; i < 1001; ++i) req.add_files()->set_name("f" + std::to_string(i) + ".yaml");
  EXPECT_EQ(PolicyDiff(in, {}, req).status().code(), absl::StatusCode::kInvalidArgument);
  req.Clear();
  auto* big = req.add_files();
  big->set_name("big.yaml");
  big->set_content(std::string(3 << 20, '#'));
  EXPECT_EQ(PolicyDiff(in, {}, req).status().code(), absl::StatusCode::kInvalidArgument);
  req.Clear();
  req.add_files()->set_name("../etc/passwd");
  EXPECT_EQ(PolicyDiff(in, {}, req).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ambit::node
