#include "agent/config/lint.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::config {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

state::Pod MakePod(std::string ns, std::string name, std::string node = "node1") {
  state::Pod p;
  p.namespace_name = std::move(ns);
  p.name = std::move(name);
  p.service_account = p.name;
  p.node_name = std::move(node);
  p.source_file = "pods.yaml";
  p.netns_path = "/var/run/netns/" + p.name;
  p.annotations["ambit.dev/netns"] = p.netns_path;
  p.ips = {*ambit::IpAddress::Parse("198.18.0.2")};
  return p;
}

state::ClusterState WithPods(std::vector<state::Pod> pods) {
  state::ClusterState s;
  for (auto& p : pods) s.pods[p.Key()] = std::move(p);
  return s;
}

std::vector<std::string> Texts(const std::vector<ConfigError>& errors) {
  std::vector<std::string> out;
  for (const auto& e : errors) {
    EXPECT_TRUE(e.warning) << e.ToString();
    out.push_back(e.ToString());
  }
  return out;
}

TEST(LintTest, CleanConfigurationHasNoFindings) {
  auto s = WithPods({MakePod("frontend", "web"), MakePod("backend", "api")});
  s.pods["backend/api"].labels = {{"app", "api"}, {"istio.io/dataplane-mode", "ambient"}};
  Findings f = Lint(s, {}, "node1");
  EXPECT_THAT(f.workloads, IsEmpty());
  EXPECT_THAT(f.policies, IsEmpty());
}

TEST(LintTest, PodOfThisNodeInTheMeshWithoutAddress) {
  auto s = WithPods({MakePod("frontend", "web"), MakePod("backend", "api", "node2")});
  s.pods["frontend/web"].ips.clear();
  s.pods["backend/api"].ips.clear();  // another node's: its own agent says so
  Findings f = Lint(s, {}, "node1");
  ASSERT_EQ(f.workloads.size(), 1u);
  EXPECT_EQ(f.workloads[0].file, "pods.yaml");
  EXPECT_EQ(f.workloads[0].object, "Pod frontend/web");
  EXPECT_EQ(f.workloads[0].field, "status.podIPs");
  EXPECT_THAT(f.workloads[0].message, HasSubstr("has no address"));
  // Outside the mesh it would not be enrolled anyway.
  s.pods["frontend/web"].annotations.clear();
  s.pods["frontend/web"].netns_path.clear();
  EXPECT_THAT(Lint(s, {}, "node1").workloads, IsEmpty());
}

TEST(LintTest, MisspelledMisplacedAndUnknownKeys) {
  // Rows: (labels, annotations, expected warning text).
  struct Row {
    std::map<std::string, std::string> labels, annotations;
    std::string expected;
  };
  const std::vector<Row> rows = {
      {{},
       {{"ambit.dev/netsn", "/x"}},
       "metadata.annotations[ambit.dev/netsn]: not a key ambit "
       "reads; did you mean ambit.dev/netns?"},
      {{}, {{"ambit.io/netns", "/x"}}, "did you mean ambit.dev/netns?"},
      {{{"istio.io/dataplane-mod", "ambient"}}, {}, "did you mean istio.io/dataplane-mode?"},
      {{{"Istio.io/Dataplane-Mode", "ambient"}}, {}, "did you mean istio.io/dataplane-mode?"},
      {{}, {{"ambit.dev/color", "blue"}}, "ambit.dev/color]: not a key ambit reads (it reads"},
      {{},
       {{"istio.io/dataplane-mode", "ambient"}},
       "ambit reads this key from metadata.labels, not from metadata.annotations"},
      {{{"ambit.dev/netns", "x"}},
       {},
       "ambit reads this key from metadata.annotations, not from metadata.labels"},
      {{{"istio.io/dataplane-mode", "Ambient"}}, {}, "'Ambient' is neither ambient nor none"},
      {{},
       {{"ambient.istio.io/bypass-inbound-capture", "true"}},
       "Istio's key is not honoured: ambit captures the pod's inbound traffic"},
      {{}, {{"ambient.istio.io/dns-capture", "true"}}, "ambit has no DNS proxy"},
  };
  for (const Row& row : rows) {
    auto s = WithPods({MakePod("frontend", "web")});
    auto& pod = s.pods["frontend/web"];
    for (const auto& [k, v] : row.labels) pod.labels[k] = v;
    for (const auto& [k, v] : row.annotations) pod.annotations[k] = v;
    Findings f = Lint(s, {}, "node1");
    ASSERT_EQ(f.workloads.size(), 1u) << row.expected;
    EXPECT_THAT(f.workloads[0].ToString(), HasSubstr(row.expected));
    EXPECT_EQ(f.workloads[0].object, "Pod frontend/web");
    // A peer's keys are its own node's business.
    EXPECT_THAT(Lint(s, {}, "node2").workloads, IsEmpty());
  }
  // Keys of other tools, Istio's own that mean nothing in ambient mode, and a dns-capture that
  // is off pass without a word.
  auto s = WithPods({MakePod("frontend", "web")});
  s.pods["frontend/web"].labels = {
      {"app", "web"}, {"pod-template-hash", "7d9"}, {"service.istio.io/canonical-name", "web"}};
  s.pods["frontend/web"].annotations["kubectl.kubernetes.io/default-container"] = "web";
  s.pods["frontend/web"].annotations["ambient.istio.io/dns-capture"] = "false";
  s.pods["frontend/web"].annotations["ambient.istio.io/redirection"] = "enabled";
  EXPECT_THAT(Texts(Lint(s, {}, "node1").workloads), IsEmpty());
}

TEST(LintTest, NamespaceLabels) {
  state::ClusterState s;
  s.namespaces["backend"] = {"backend", {{"istio.io/dataplane-mode", "ambeint"}}, {}, "ns.yaml"};
  s.namespaces["other"] = {"other", {{"istio.io/dataplan-mode", "ambient"}}, {}, "ns.yaml"};
  EXPECT_THAT(Texts(Lint(s, {}, "node1").workloads),
              ElementsAre(HasSubstr("Namespace backend: field metadata.labels[istio.io/dataplane-"
                                    "mode]: 'ambeint' is neither ambient nor none"),
                          HasSubstr("Namespace other: field metadata.labels[istio.io/dataplan-"
                                    "mode]: not a key ambit reads; did you mean")));
}

authz::Policy AllowFrom(std::string ns, authz::Source source) {
  authz::Policy p;
  p.namespace_name = std::move(ns);
  p.name = "callers";
  p.source_file = "policies.yaml";
  authz::Rule r;
  r.from.push_back(std::move(source));
  p.rules = std::vector<authz::Rule>{r};
  return p;
}

TEST(LintTest, PolicyNamespaceAndSourcesNoWorkloadHas) {
  auto s = WithPods({MakePod("frontend", "web"), MakePod("backend", "api")});
  SecurityConfig sec;
  authz::Source src;
  src.principals = {"cluster.local/ns/frontend/sa/web", "cluster.local/ns/frontend/sa/wbe",
                    "cluster.local/ns/frontend/sa/*", "*"};
  src.namespaces = {"frontend", "frontned"};
  src.service_accounts = {"frontend/web", "frontend/nobody", "api"};
  auto p = AllowFrom("backend", src);
  sec.authorization_policies[p.Key()] = p;
  auto stray = AllowFrom("bakend", {});
  sec.authorization_policies[stray.Key()] = stray;
  authz::PeerAuthentication pa;
  pa.namespace_name = "istio-system";  // the root namespace: mesh-wide, needs no workload
  pa.name = "default";
  sec.peer_authentications[pa.Key()] = pa;
  pa.namespace_name = "bakend";
  sec.peer_authentications[pa.Key()] = pa;

  EXPECT_THAT(
      Texts(Lint(s, sec, "node1").policies),
      ElementsAre(
          HasSubstr("PeerAuthentication bakend/default: field metadata.namespace: namespace "
                    "bakend has no Namespace object, pod or service"),
          HasSubstr("AuthorizationPolicy backend/callers: field "
                    "spec.rules[0].from[0].source.principals[1]: "
                    "'cluster.local/ns/frontend/sa/wbe': no known workload has this identity"),
          HasSubstr("source.namespaces[1]: 'frontned': no Namespace object"),
          HasSubstr("source.serviceAccounts[1]: 'frontend/nobody': no known workload runs as "
                    "service account frontend/nobody"),
          HasSubstr("AuthorizationPolicy bakend/callers: field metadata.namespace")));
  auto by = Findings::ByObject(Lint(s, sec, "node1").policies);
  EXPECT_EQ(by["AuthorizationPolicy backend/callers"].size(), 3u);
}

TEST(LintTest, NegatedListsAndSpiffePrincipalsWithTheirKinds) {
  auto s = WithPods({MakePod("frontend", "web"), MakePod("backend", "api")});
  SecurityConfig sec;
  authz::Source src;
  src.principals = {"spiffe://cluster.local/ns/frontend/sa/web"};
  src.not_principals = {"cluster.local/ns/frontend/sa/web", "cluster.local/ns/ops/sa/robot"};
  src.not_namespaces = {"frontend", "kube-sytem"};
  src.not_service_accounts = {"frontend/ghost"};
  auto p = AllowFrom("backend", src);
  sec.authorization_policies[p.Key()] = p;

  std::vector<std::pair<std::string, std::string>> got;  // field, kind
  for (const PolicyFinding& f : LintPolicyFindings(s, sec)) {
    EXPECT_TRUE(f.error.warning);
    EXPECT_EQ(f.error.object, "AuthorizationPolicy backend/callers");
    got.emplace_back(f.error.field, f.kind);
  }
  const std::string at = "spec.rules[0].from[0].source.";
  EXPECT_THAT(
      got,
      ElementsAre(std::pair(at + "principals[0]", std::string(kSpiffePrefix)),
                  std::pair(at + "notPrincipals[1]", std::string(kUnknownServiceAccount)),
                  std::pair(at + "notNamespaces[1]", std::string(kUnknownNamespace)),
                  std::pair(at + "notServiceAccounts[0]", std::string(kUnknownServiceAccount))));
  // The spiffe:// principal says what to write instead, and only that.
  EXPECT_THAT(Texts(Lint(s, sec, "node1").policies),
              Contains(HasSubstr("'spiffe://cluster.local/ns/frontend/sa/web' starts with "
                                 "spiffe://, which Istio principals never do (write "
                                 "'cluster.local/ns/frontend/sa/web'): it never matches")));
}

// The parser drops the annotations ambit does not read, except those Lint warns about.
TEST(LintTest, AnnotationsTheParserKeepsForLint) {
  EXPECT_TRUE(LintFlagsPodAnnotation("ambit.dev/netsn", "/x"));
  EXPECT_TRUE(LintFlagsPodAnnotation("istio.io/dataplane-mode", "ambient"));  // a label
  EXPECT_TRUE(LintFlagsPodAnnotation("ambient.istio.io/bypass-inbound-capture", "true"));
  EXPECT_FALSE(LintFlagsPodAnnotation("ambit.dev/netns", "/x"));
  EXPECT_FALSE(LintFlagsPodAnnotation("example.com/note", "free text"));
  EXPECT_FALSE(LintFlagsPodAnnotation("kubectl.kubernetes.io/last-applied-configuration", "{}"));
  EXPECT_FALSE(LintFlagsPodAnnotation("ambient.istio.io/redirection", "enabled"));
}

TEST(RepeatFilterTest, EachWarningOnceWhileItLasts) {
  RepeatFilter f;
  EXPECT_TRUE(f.First("a"));
  f.EndLoad();
  EXPECT_FALSE(f.First("a"));  // still there: not again
  EXPECT_TRUE(f.First("b"));
  f.EndLoad();
  f.EndLoad();                // a load without "a"
  EXPECT_TRUE(f.First("a"));  // back: said again
}

}  // namespace
}  // namespace ambit::config
