// AuthorizationPolicy and MeshConfig extensionProviders from YAML: every field, istiod's
// validation (each rejected resource named with file, resource and field), and the loader's
// last-good handling and provider check.

#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "absl/time/time.h"
#include "agent/authz/model.h"
#include "agent/config/directory_loader.h"
#include "agent/config/kube_yaml.h"
#include "agent/config/load_result.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/common/temp_dir.h"

namespace ambit::config {
namespace {

using ::ambit::authz::Action;
using ::ambit::authz::Condition;
using ::ambit::authz::Operation;
using ::ambit::authz::Policy;
using ::ambit::authz::Rule;
using ::ambit::authz::Source;
using ::ambit::authz::TargetRef;
using ::ambit::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

std::vector<Policy> Policies(const ParsedFile& parsed) {
  std::vector<Policy> out;
  for (const ParsedObject& o : parsed.objects) {
    if (const auto* p = std::get_if<Policy>(&o.object)) out.push_back(*p);
  }
  return out;
}

template <typename T>
std::vector<ConfigError> Only(const T& parsed, bool warnings) {
  std::vector<ConfigError> out;
  for (const ConfigError& e : parsed.errors) {
    if (e.warning == warnings) out.push_back(e);
  }
  return out;
}

template <typename T>
std::string Describe(const T& parsed) {
  std::string out;
  for (const ConfigError& e : parsed.errors) out += e.ToString() + "\n";
  return out;
}

std::string Ap(const std::string& spec, const std::string& extra_metadata = "",
               const std::string& api_version = "security.istio.io/v1") {
  return "apiVersion: " + api_version +
         "\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: foo\n" + extra_metadata +
         "spec:\n" + spec;
}

authz::Workload InNamespace(const std::string& ns) {
  authz::Workload w;
  w.namespace_name = ns;
  return w;
}

std::vector<std::string> PolicyKeys(const LoadResult& r) {
  std::vector<std::string> out;
  for (const auto& [key, p] : r.security.authorization_policies) out.push_back(key);
  return out;
}

TEST(AuthorizationPolicyYamlTest, ParsesEveryField) {
  ParsedFile parsed = ParseKubeYaml("authz.yaml", R"(
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels: {app: httpbin, version: v1}
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
        notPrincipals: ["*/ns/test/*"]
        requestPrincipals: ["issuer.example.com/*"]
        notRequestPrincipals: ["*/blocked"]
        namespaces: ["dev"]
        notNamespaces: ["prod"]
        ipBlocks: ["198.18.0.0/16", "1.2.3.4"]
        notIpBlocks: ["198.18.128.0/18"]
        remoteIpBlocks: ["203.0.113.0/24"]
        notRemoteIpBlocks: ["203.0.113.7"]
    - source:
        serviceAccounts: ["bar/sleep", "curl"]
        notServiceAccounts: ["bar/admin"]
    to:
    - operation:
        hosts: ["httpbin.foo", "*.example.com"]
        notHosts: ["admin.example.com"]
        ports: [8080, "9090"]
        notPorts: ["15000"]
        methods: ["GET", "HEAD"]
        notMethods: ["DELETE"]
        paths: ["/info*", "/api/{*}/users"]
        notPaths: ["/admin"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
    - key: request.headers[X-Token]
      notValues: ["guest"]
    - key: request.auth.claims[realm_access][roles]
      values: ["admin"]
      notValues: ["banned"]
  - {}
)");
  ASSERT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  ASSERT_EQ(parsed.objects.size(), 1u);
  EXPECT_EQ(parsed.objects[0].id, "AuthorizationPolicy foo/httpbin");
  std::vector<Policy> policies = Policies(parsed);
  ASSERT_THAT(policies, SizeIs(1));
  Policy want;
  want.name = "httpbin";
  want.namespace_name = "foo";
  want.action = Action::kDeny;
  want.selector = std::map<std::string, std::string>{{"app", "httpbin"}, {"version", "v1"}};
  want.source_file = "authz.yaml";
  want.rules = std::vector<Rule>{
      Rule{
          .from = {Source{.principals = {"cluster.local/ns/default/sa/sleep"},
                          .not_principals = {"*/ns/test/*"},
                          .request_principals = {"issuer.example.com/*"},
                          .not_request_principals = {"*/blocked"},
                          .namespaces = {"dev"},
                          .not_namespaces = {"prod"},
                          .ip_blocks = {"198.18.0.0/16", "1.2.3.4"},
                          .not_ip_blocks = {"198.18.128.0/18"},
                          .remote_ip_blocks = {"203.0.113.0/24"},
                          .not_remote_ip_blocks = {"203.0.113.7"}},
                   Source{.service_accounts = {"bar/sleep", "curl"},
                          .not_service_accounts = {"bar/admin"}}},
          .to = {Operation{.hosts = {"httpbin.foo", "*.example.com"},
                           .not_hosts = {"admin.example.com"},
                           .ports = {"8080", "9090"},
                           .not_ports = {"15000"},
                           .methods = {"GET", "HEAD"},
                           .not_methods = {"DELETE"},
                           .paths = {"/info*", "/api/{*}/users"},
                           .not_paths = {"/admin"}}},
          .when = {Condition{"request.auth.claims[iss]", {"https://accounts.google.com"}, {}},
                   Condition{"request.headers[X-Token]", {}, {"guest"}},
                   Condition{"request.auth.claims[realm_access][roles]", {"admin"}, {"banned"}}},
      },
      Rule{},
  };
  EXPECT_EQ(policies[0], want);
}

TEST(AuthorizationPolicyYamlTest, V1beta1TargetRefsProviderAndDefaults) {
  ParsedFile parsed = ParseKubeYaml("authz.yaml", R"(
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: foo}
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
  - {kind: Service, name: httpbin}
  action: CUSTOM
  provider: {name: my-ext-authz}
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: single}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: foo}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-spec, namespace: foo}
)");
  ASSERT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  std::vector<Policy> p = Policies(parsed);
  ASSERT_THAT(p, SizeIs(4));
  EXPECT_EQ(p[0].action, Action::kCustom);
  EXPECT_EQ(p[0].provider, "my-ext-authz");
  EXPECT_THAT(p[0].target_refs,
              ElementsAre(TargetRef{"gateway.networking.k8s.io", "Gateway", "waypoint"},
                          TargetRef{"", "Service", "httpbin"}));
  EXPECT_FALSE(p[0].selector.has_value());
  // targetRef (singular) is the older spelling of one target; namespace defaults to "default".
  EXPECT_EQ(p[1].Key(), "default/single");
  EXPECT_THAT(p[1].target_refs,
              ElementsAre(TargetRef{"gateway.networking.k8s.io", "Gateway", "waypoint"}));
  // `spec: {}` is Istio's allow-nothing policy: ALLOW without rules.
  EXPECT_EQ(p[2].action, Action::kAllow);
  EXPECT_FALSE(p[2].rules.has_value());
  EXPECT_FALSE(p[3].rules.has_value());
}

TEST(AuthorizationPolicyYamlTest, DryRunAnnotationIsParsedAsGoParseBool) {
  for (const char* value : {"\"true\"", "\"1\"", "\"True\"", "\"t\""}) {
    ParsedFile parsed = ParseKubeYaml(
        "a.yaml", Ap("  action: DENY\n  rules: [{}]\n",
                     std::string("  annotations: {istio.io/dry-run: ") + value + "}\n"));
    ASSERT_THAT(parsed.errors, IsEmpty()) << value << "\n" << Describe(parsed);
    EXPECT_TRUE(Policies(parsed)[0].dry_run) << value;
  }
  ParsedFile off = ParseKubeYaml(
      "a.yaml", Ap("  rules: [{}]\n", "  annotations: {istio.io/dry-run: \"false\"}\n"));
  ASSERT_THAT(off.errors, IsEmpty()) << Describe(off);
  EXPECT_FALSE(Policies(off)[0].dry_run);
  ParsedFile none = ParseKubeYaml("a.yaml", Ap("  rules: [{}]\n"));
  EXPECT_FALSE(Policies(none)[0].dry_run);
}

TEST(AuthorizationPolicyYamlTest, SelectorWithoutLabelsIsAWarning) {
  ParsedFile parsed = ParseKubeYaml("a.yaml", Ap("  selector: {}\n  rules: [{}]\n"));
  EXPECT_THAT(Only(parsed, false), IsEmpty()) << Describe(parsed);
  std::vector<ConfigError> warnings = Only(parsed, true);
  ASSERT_THAT(warnings, SizeIs(1));
  EXPECT_EQ(warnings[0].field, "spec.selector");
  ASSERT_THAT(Policies(parsed), SizeIs(1));
  EXPECT_TRUE(Policies(parsed)[0].selector.has_value());
}

struct BadCase {
  const char* name;
  std::string spec;  // under `spec:`
  std::string field;
  std::string message;
  std::string metadata = "";
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

class RejectedPolicyTest : public ::testing::TestWithParam<BadCase> {};

// Each invalid policy is rejected with one error naming the file, the resource and the field, at
// the line of that field; nothing of it applies.
TEST_P(RejectedPolicyTest, IsRejectedWithFileResourceAndField) {
  const BadCase& c = GetParam();
  ParsedFile parsed = ParseKubeYaml("rbac.yaml", Ap(c.spec, c.metadata));
  std::vector<ConfigError> errors = Only(parsed, /*warnings=*/false);
  ASSERT_THAT(errors, SizeIs(1)) << Describe(parsed);
  EXPECT_EQ(errors[0].file, "rbac.yaml");
  EXPECT_EQ(errors[0].object, "AuthorizationPolicy foo/p");
  EXPECT_EQ(errors[0].field, c.field) << errors[0].ToString();
  EXPECT_THAT(errors[0].message, HasSubstr(c.message)) << errors[0].ToString();
  EXPECT_GT(errors[0].line, 4) << errors[0].ToString();
  EXPECT_THAT(parsed.objects, IsEmpty());
  EXPECT_THAT(parsed.rejected_ids, ElementsAre("AuthorizationPolicy foo/p"));
}

INSTANTIATE_TEST_SUITE_P(
    Istiod, RejectedPolicyTest,
    ::testing::Values(
        BadCase{"UnknownSpecField", "  action: ALLOW\n  rule: [{}]\n", "spec.rule",
                "unknown field"},
        BadCase{"UnknownSourceField", "  rules:\n  - from:\n    - source: {notPrincipal: [a]}\n",
                "spec.rules[0].from[0].source.notPrincipal", "unknown field"},
        BadCase{"UnknownOperationField", "  rules:\n  - to:\n    - operation: {method: [GET]}\n",
                "spec.rules[0].to[0].operation.method", "unknown field"},
        BadCase{"UnknownRuleField", "  rules:\n  - fromm: []\n", "spec.rules[0].fromm",
                "unknown field"},
        BadCase{"UnknownConditionField",
                "  rules:\n  - when:\n    - {key: source.ip, value: [a]}\n",
                "spec.rules[0].when[0].value", "unknown field"},
        BadCase{"UnknownSelectorField", "  selector: {labels: {app: x}}\n  rules: [{}]\n",
                "spec.selector.labels", "unknown field"},
        BadCase{"UnknownProviderField", "  action: CUSTOM\n  provider: {nam: x}\n  rules: [{}]\n",
                "spec.provider.nam", "unknown field"},
        BadCase{"BadAction", "  action: allow\n  rules: [{}]\n", "spec.action",
                "'allow' is not an action"},
        BadCase{"BadCidr", "  rules:\n  - from:\n    - source: {ipBlocks: [\"1.2.3.4/33\"]}\n",
                "spec.rules[0].from[0].source.ipBlocks[0]", "not a valid CIDR"},
        BadCase{"BadRemoteIp",
                "  rules:\n  - from:\n    - source: {notRemoteIpBlocks: [\"198.18.0.0/16\", "
                "\"nope\"]}\n",
                "spec.rules[0].from[0].source.notRemoteIpBlocks[1]", "not a valid CIDR"},
        BadCase{"BadConditionIp", "  rules:\n  - when:\n    - {key: destination.ip, values: [x]}\n",
                "spec.rules[0].when[0].values[0]", "not a valid IP address or CIDR"},
        BadCase{"PortOutOfRange", "  rules:\n  - to:\n    - operation: {ports: [\"65536\"]}\n",
                "spec.rules[0].to[0].operation.ports[0]", "not a valid port"},
        BadCase{"PortNotANumber", "  rules:\n  - to:\n    - operation: {notPorts: [\"http\"]}\n",
                "spec.rules[0].to[0].operation.notPorts[0]", "not a valid port"},
        BadCase{"ConditionPortNotANumber",
                "  rules:\n  - when:\n    - {key: destination.port, values: [\"-1\"]}\n",
                "spec.rules[0].when[0].values[0]", "not a valid port"},
        BadCase{"EmptyPrincipal", "  rules:\n  - from:\n    - source: {principals: [\"\"]}\n",
                "spec.rules[0].from[0].source.principals[0]", "empty value"},
        BadCase{"EmptyMethod", "  rules:\n  - to:\n    - operation: {methods: [GET, \"\"]}\n",
                "spec.rules[0].to[0].operation.methods[1]", "empty value"},
        BadCase{"EmptyConditionValue",
                "  rules:\n  - when:\n    - {key: \"request.headers[x]\", notValues: [\"\"]}\n",
                "spec.rules[0].when[0].notValues[0]", "empty value"},
        BadCase{"TrustDomainMiddleWildcard",
                "  rules:\n  - from:\n    - source: {trustDomains: [\"a*b\"]}\n",
                "spec.rules[0].from[0].source.trustDomains[0]",
                "only allowed at the start or end of a trust domain"},
        BadCase{"NotTrustDomainSlash",
                "  rules:\n  - from:\n    - source: {notTrustDomains: [ok, \"td/ns\"]}\n",
                "spec.rules[0].from[0].source.notTrustDomains[1]", "must not contain '/'"},
        BadCase{"ConditionTrustDomainTwoWildcards",
                "  rules:\n  - when:\n    - {key: source.trustDomain, values: [\"*a*\"]}\n",
                "spec.rules[0].when[0].values[0]", "at most one wildcard"},
        BadCase{"ConditionServiceAccountWildcard",
                "  rules:\n  - when:\n    - {key: source.serviceAccount, values: [\"ns/*\"]}\n",
                "spec.rules[0].when[0].values[0]", "wildcards are not allowed"},
        BadCase{"CustomTrustDomains",
                "  action: CUSTOM\n  provider: {name: x}\n  rules:\n  - from:\n    - source: "
                "{trustDomains: [a]}\n",
                "spec.rules[0].from[0].source.trustDomains", "not supported with action CUSTOM"},
        BadCase{"CustomTrustDomainCondition",
                "  action: CUSTOM\n  provider: {name: x}\n  rules:\n  - when:\n    - {key: "
                "source.trustDomain, values: [a]}\n",
                "spec.rules[0].when[0].key", "not supported with action CUSTOM"},
        BadCase{"EmptySource", "  rules:\n  - from:\n    - source: {}\n",
                "spec.rules[0].from[0].source", "must not be empty"},
        BadCase{"EmptyOperation", "  rules:\n  - to:\n    - operation: {}\n",
                "spec.rules[0].to[0].operation", "must not be empty"},
        BadCase{"FromWithoutSource", "  rules:\n  - from:\n    - {}\n",
                "spec.rules[0].from[0].source", "is required"},
        BadCase{"ToWithoutOperation", "  rules:\n  - to:\n    - {}\n",
                "spec.rules[0].to[0].operation", "is required"},
        BadCase{"EmptyFromList", "  rules:\n  - from: []\n", "spec.rules[0].from",
                "must not be empty"},
        BadCase{"ServiceAccountsWithNamespaces",
                "  rules:\n  - from:\n    - source: {serviceAccounts: [a], namespaces: [b]}\n",
                "spec.rules[0].from[0].source", "cannot be combined"},
        BadCase{"ConditionWithoutValues", "  rules:\n  - when:\n    - {key: source.ip}\n",
                "spec.rules[0].when[0]", "at least one of values or notValues"},
        BadCase{"ConditionWithoutKey", "  rules:\n  - when:\n    - {values: [a]}\n",
                "spec.rules[0].when[0].key", "must not be empty"},
        BadCase{"UnknownConditionKey",
                "  rules:\n  - when:\n    - {key: \"destination.labels[app]\", values: [a]}\n",
                "spec.rules[0].when[0].key", "unknown attribute"},
        BadCase{"MalformedHeaderKey",
                "  rules:\n  - when:\n    - {key: \"request.headers[\", values: [a]}\n",
                "spec.rules[0].when[0].key", "malformed"},
        BadCase{"BadPathTemplate",
                "  rules:\n  - to:\n    - operation: {paths: [\"/{*}/a/{x}\"]}\n",
                "spec.rules[0].to[0].operation.paths[0]", "not a valid path template"},
        BadCase{"WildcardInSelector", "  selector: {matchLabels: {app: \"web*\"}}\n  rules: [{}]\n",
                "spec.selector.matchLabels[app]", "wildcards"},
        BadCase{"SelectorAndTargetRefs",
                "  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Service, name: a}]\n",
                "spec", "only one of selector, targetRef and targetRefs"},
        BadCase{"TargetRefAndTargetRefs",
                "  targetRef: {kind: Service, name: a}\n  targetRefs: [{kind: Service, name: b}]\n",
                "spec", "only one of selector, targetRef and targetRefs"},
        BadCase{"TargetRefNamespace",
                "  targetRefs: [{kind: Service, name: a, namespace: other}]\n",
                "spec.targetRefs[0].namespace", "cross-namespace"},
        BadCase{"TargetRefUnsupportedKind",
                "  targetRefs: [{group: apps, kind: Deployment, name: a}]\n", "spec.targetRefs[0]",
                "unsupported target"},
        BadCase{"SingleTargetRefWithoutName", "  targetRef: {kind: Service}\n",
                "spec.targetRef.name", "must not be empty"},
        BadCase{"DenyWithoutRules", "  action: DENY\n", "spec.rules", "DENY without rules"},
        BadCase{"CustomWithoutRules", "  action: CUSTOM\n  provider: {name: x}\n", "spec.rules",
                "CUSTOM without rules"},
        BadCase{"CustomWithoutProvider", "  action: CUSTOM\n  rules: [{}]\n", "spec.provider.name",
                "must be set when action is CUSTOM"},
        BadCase{"ProviderWithAllow", "  provider: {name: x}\n  rules: [{}]\n", "spec.provider",
                "only allowed with action CUSTOM"},
        BadCase{"ProviderWithDeny", "  action: DENY\n  provider: {name: x}\n  rules: [{}]\n",
                "spec.provider", "only allowed with action CUSTOM"},
        BadCase{"CustomWithPrincipals",
                "  action: CUSTOM\n  provider: {name: x}\n  rules:\n  - from:\n    - source: "
                "{principals: [a]}\n",
                "spec.rules[0].from[0].source.principals", "not supported with action CUSTOM"},
        BadCase{"CustomWithRequestPrincipals",
                "  action: CUSTOM\n  provider: {name: x}\n  rules:\n  - from:\n    - source: "
                "{notRequestPrincipals: [a]}\n",
                "spec.rules[0].from[0].source.notRequestPrincipals",
                "not supported with action CUSTOM"},
        BadCase{"CustomWithClaimCondition",
                "  action: CUSTOM\n  provider: {name: x}\n  rules:\n  - when:\n    - {key: "
                "\"request.auth.claims[iss]\", values: [a]}\n",
                "spec.rules[0].when[0].key", "not supported with action CUSTOM"},
        BadCase{"CustomWithSourceNamespaceCondition",
                "  action: CUSTOM\n  provider: {name: x}\n  rules:\n  - when:\n    - {key: "
                "source.namespace, values: [a]}\n",
                "spec.rules[0].when[0].key", "not supported with action CUSTOM"},
        BadCase{"DryRunNotABool", "  rules: [{}]\n", "metadata.annotations[istio.io/dry-run]",
                "not a boolean", "  annotations: {istio.io/dry-run: \"yes\"}\n"},
        BadCase{"DryRunOnAudit", "  action: AUDIT\n  rules: [{}]\n",
                "metadata.annotations[istio.io/dry-run]", "only supported for ALLOW and DENY",
                "  annotations: {istio.io/dry-run: \"true\"}\n"},
        BadCase{"DryRunOnCustom", "  action: CUSTOM\n  provider: {name: x}\n  rules: [{}]\n",
                "metadata.annotations[istio.io/dry-run]", "only supported for ALLOW and DENY",
                "  annotations: {istio.io/dry-run: \"true\"}\n"},
        BadCase{"StringInsteadOfList",
                "  rules:\n  - from:\n    - source: {principals: \"cluster.local/ns/a/sa/b\"}\n",
                "spec.rules[0].from[0].source.principals", "must be a list of strings"},
        BadCase{"RuleNotAMap", "  rules: [allow]\n", "spec.rules[0]", "must be a map"}),
    [](const ::testing::TestParamInfo<BadCase>& info) { return std::string(info.param.name); });

TEST(AuthorizationPolicyYamlTest, BadPolicyIsSkippedAndTheOthersApply) {
  ParsedFile parsed = ParseKubeYaml("a.yaml", R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: good, namespace: foo}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: foo}
spec: {rules: [{from: [{source: {ipBlocks: ["300.0.0.1"]}}]}]}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: also-good, namespace: bar}
spec: {action: DENY, rules: [{to: [{operation: {ports: ["22"]}}]}]}
)");
  std::vector<ConfigError> errors = Only(parsed, false);
  ASSERT_THAT(errors, SizeIs(1)) << Describe(parsed);
  EXPECT_EQ(errors[0].ToString(),
            "a.yaml:9:45: AuthorizationPolicy foo/bad: field "
            "spec.rules[0].from[0].source.ipBlocks[0]: '300.0.0.1' is not a valid CIDR");
  std::vector<Policy> p = Policies(parsed);
  ASSERT_THAT(p, SizeIs(2));
  EXPECT_EQ(p[0].Key(), "foo/good");
  EXPECT_EQ(p[1].Key(), "bar/also-good");
}

// ---- MeshConfig extensionProviders ----------------------------------------------------------

TEST(ExtensionProvidersYamlTest, ParsesHttpAndGrpcProvidersWithIstiosFields) {
  ParsedFile parsed = ParseMeshYaml("mesh.yaml", R"(
rootNamespace: istio-system
pathNormalization: {normalization: MERGE_SLASHES}
extensionProviders:
- name: my-ext-authz-http
  envoyExtAuthzHttp:
    service: ext-authz.foo.svc.cluster.local
    port: 8000
    timeout: 0.5s
    pathPrefix: /check
    failOpen: true
    clearRouteCache: false
    statusOnError: "503"
    includeHeadersInCheck: ["x-old"]
    includeRequestHeadersInCheck: ["x-ext-authz", "cookie*"]
    includeAdditionalHeadersInCheck: {x-auth-source: mesh}
    includeRequestBodyInCheck: {maxRequestBytes: 4096, allowPartialMessage: true}
    headersToUpstreamOnAllow: ["x-user"]
    headersToDownstreamOnDeny: ["x-reason"]
    headersToDownstreamOnAllow: ["set-cookie"]
- name: my-ext-authz-grpc
  envoyExtAuthzGrpc:
    service: foo/ext-authz.foo.svc.cluster.local
    port: 9000
    timeout: 10s
    includeRequestBodyInCheck: {packAsBytes: true}
- name: otel
  opentelemetry: {service: otel.istio-system.svc.cluster.local, port: 4317}
)");
  ASSERT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  ASSERT_THAT(parsed.objects, SizeIs(1));
  const auto& mesh = std::get<state::MeshConfig>(parsed.objects[0].object);
  EXPECT_EQ(mesh.path_normalization, "MERGE_SLASHES");
  ASSERT_THAT(mesh.extension_providers, SizeIs(3));
  const state::ExtensionProvider& http = mesh.extension_providers[0];
  EXPECT_EQ(http.name, "my-ext-authz-http");
  EXPECT_EQ(http.kind, state::ExtensionProvider::Kind::kEnvoyExtAuthzHttp);
  EXPECT_EQ(http.service, "ext-authz.foo.svc.cluster.local");
  EXPECT_EQ(http.port, 8000);
  EXPECT_EQ(http.timeout, absl::Milliseconds(500));
  EXPECT_EQ(http.path_prefix, "/check");
  EXPECT_TRUE(http.fail_open);
  EXPECT_EQ(http.clear_route_cache, false);
  EXPECT_EQ(http.status_on_error, 503u);
  EXPECT_THAT(http.include_request_headers_in_check,
              ElementsAre("x-old", "x-ext-authz", "cookie*"));
  EXPECT_EQ(http.include_additional_headers_in_check.at("x-auth-source"), "mesh");
  ASSERT_TRUE(http.include_request_body_in_check.has_value());
  EXPECT_EQ(http.include_request_body_in_check->max_request_bytes, 4096u);
  EXPECT_TRUE(http.include_request_body_in_check->allow_partial_message);
  EXPECT_THAT(http.headers_to_upstream_on_allow, ElementsAre("x-user"));
  EXPECT_THAT(http.headers_to_downstream_on_deny, ElementsAre("x-reason"));
  EXPECT_THAT(http.headers_to_downstream_on_allow, ElementsAre("set-cookie"));
  const state::ExtensionProvider& grpc = mesh.extension_providers[1];
  EXPECT_EQ(grpc.kind, state::ExtensionProvider::Kind::kEnvoyExtAuthzGrpc);
  EXPECT_EQ(grpc.service, "foo/ext-authz.foo.svc.cluster.local");
  EXPECT_EQ(grpc.timeout, absl::Seconds(10));
  EXPECT_FALSE(grpc.fail_open);
  EXPECT_FALSE(grpc.status_on_error.has_value());
  EXPECT_TRUE(grpc.include_request_body_in_check->pack_as_bytes);
  EXPECT_FALSE(mesh.extension_providers[2].IsExtAuthz());
  EXPECT_EQ(mesh.extension_providers[2].kind_name, "opentelemetry");
  EXPECT_EQ(mesh.FindExtensionProvider("my-ext-authz-grpc"), &grpc);
  EXPECT_EQ(mesh.FindExtensionProvider("nope"), nullptr);
}

TEST(ExtensionProvidersYamlTest, ConfigMapMeshCarriesProviders) {
  ParsedFile parsed = ParseKubeYaml("istio.yaml", R"(apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: ext
      envoyExtAuthzGrpc: {service: ext.foo.svc.cluster.local, port: 9000}
)");
  ASSERT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  const auto& mesh = std::get<state::MeshConfig>(parsed.objects[0].object);
  ASSERT_THAT(mesh.extension_providers, SizeIs(1));
  EXPECT_EQ(mesh.extension_providers[0].port, 9000);
}

struct BadMesh {
  const char* name;
  std::string providers;
  std::string field;
  std::string message;
};

void PrintTo(const BadMesh& c, std::ostream* os) { *os << c.name; }

class RejectedMeshTest : public ::testing::TestWithParam<BadMesh> {};

// istiod's validateExtensionProvider: a bad provider makes the whole MeshConfig invalid, so the
// loader keeps the last good one.
TEST_P(RejectedMeshTest, IsRejectedWithField) {
  const BadMesh& c = GetParam();
  ParsedFile parsed = ParseMeshYaml("mesh.yaml", "extensionProviders:\n" + c.providers);
  std::vector<ConfigError> errors = Only(parsed, false);
  ASSERT_THAT(errors, SizeIs(1)) << Describe(parsed);
  EXPECT_EQ(errors[0].object, "MeshConfig");
  EXPECT_EQ(errors[0].field, c.field) << errors[0].ToString();
  EXPECT_THAT(errors[0].message, HasSubstr(c.message)) << errors[0].ToString();
  EXPECT_THAT(parsed.objects, IsEmpty());
  EXPECT_THAT(parsed.rejected_ids, ElementsAre("MeshConfig"));
}

INSTANTIATE_TEST_SUITE_P(
    Istiod, RejectedMeshTest,
    ::testing::Values(
        BadMesh{"NoName", "- envoyExtAuthzHttp: {service: a.b, port: 80}\n",
                "extensionProviders[0].name", "is required"},
        BadMesh{"DuplicateName",
                "- {name: a, envoyExtAuthzHttp: {service: a.b, port: 80}}\n"
                "- {name: a, envoyExtAuthzGrpc: {service: a.b, port: 81}}\n",
                "extensionProviders[1].name", "unique"},
        BadMesh{"NoKind", "- {name: a}\n", "extensionProviders[0]", "sets no provider kind"},
        BadMesh{"TwoKinds",
                "- {name: a, envoyExtAuthzHttp: {service: a.b, port: 80}, envoyExtAuthzGrpc: "
                "{service: a.b, port: 80}}\n",
                "extensionProviders[0]", "exactly one"},
        BadMesh{"UnknownKind", "- {name: a, envoyExtAuthz: {service: a.b, port: 80}}\n",
                "extensionProviders[0].envoyExtAuthz", "unknown field"},
        BadMesh{"UnknownField", "- {name: a, envoyExtAuthzHttp: {service: a.b, port: 80, x: 1}}\n",
                "extensionProviders[0].envoyExtAuthzHttp.x", "unknown field"},
        BadMesh{"HttpOnlyFieldOnGrpc",
                "- {name: a, envoyExtAuthzGrpc: {service: a.b, port: 80, pathPrefix: /x}}\n",
                "extensionProviders[0].envoyExtAuthzGrpc.pathPrefix", "unknown field"},
        BadMesh{"NoService", "- {name: a, envoyExtAuthzHttp: {port: 80}}\n",
                "extensionProviders[0].envoyExtAuthzHttp.service", "is required"},
        BadMesh{"BadService", "- {name: a, envoyExtAuthzHttp: {service: \"a b\", port: 80}}\n",
                "extensionProviders[0].envoyExtAuthzHttp.service", "is not [<namespace>/]"},
        BadMesh{"NoPort", "- {name: a, envoyExtAuthzGrpc: {service: a.b}}\n",
                "extensionProviders[0].envoyExtAuthzGrpc.port", "is required"},
        BadMesh{"PortOutOfRange", "- {name: a, envoyExtAuthzGrpc: {service: a.b, port: 70000}}\n",
                "extensionProviders[0].envoyExtAuthzGrpc.port", "not a port number"},
        BadMesh{
            "BadStatusOnError",
            "- {name: a, envoyExtAuthzHttp: {service: a.b, port: 80, statusOnError: \"999\"}}\n",
            "extensionProviders[0].envoyExtAuthzHttp.statusOnError", "not an HTTP status code"},
        BadMesh{"PathPrefixWithoutSlash",
                "- {name: a, envoyExtAuthzHttp: {service: a.b, port: 80, pathPrefix: check}}\n",
                "extensionProviders[0].envoyExtAuthzHttp.pathPrefix", "must begin with '/'"},
        BadMesh{"BadTimeout",
                "- {name: a, envoyExtAuthzHttp: {service: a.b, port: 80, timeout: 500ms}}\n",
                "extensionProviders[0].envoyExtAuthzHttp.timeout", "not a duration"},
        BadMesh{"BadFailOpen",
                "- {name: a, envoyExtAuthzHttp: {service: a.b, port: 80, failOpen: maybe}}\n",
                "extensionProviders[0].envoyExtAuthzHttp.failOpen", "true or false"}),
    [](const ::testing::TestParamInfo<BadMesh>& info) { return std::string(info.param.name); });

TEST(ExtensionProvidersYamlTest, BadPathNormalization) {
  ParsedFile parsed = ParseMeshYaml("mesh.yaml", "pathNormalization: {normalization: FANCY}\n");
  std::vector<ConfigError> errors = Only(parsed, false);
  ASSERT_THAT(errors, SizeIs(1)) << Describe(parsed);
  EXPECT_EQ(errors[0].field, "pathNormalization.normalization");
}

// ---- The loader ------------------------------------------------------------------------------

const char kMesh[] = R"(extensionProviders:
- name: ext-http
  envoyExtAuthzHttp: {service: ext.foo.svc.cluster.local, port: 8000}
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
)";

std::string Custom(const std::string& name, const std::string& provider) {
  return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: " + name +
         ", namespace: foo}\nspec:\n  action: CUSTOM\n  provider: {name: " + provider +
         "}\n  rules: [{to: [{operation: {paths: [\"/admin\"]}}]}]\n";
}

TEST(AuthorizationPolicyLoaderTest, CustomPolicyMustNameAnExtAuthzProvider) {
  TempDir dir;
  dir.Write("mesh.yaml", kMesh);
  dir.Write("authz.yaml", Custom("known", "ext-http") + "---\n" + Custom("unknown", "ext-grpc") +
                              "---\n" + Custom("not-authz", "zipkin"));
  DirectoryLoader loader(dir.path());
  LoadResult r = loader.Load();
  // Kept, and marked: skipping them would let through what their rules send to an authorizer.
  EXPECT_THAT(PolicyKeys(r), ElementsAre("foo/known", "foo/not-authz", "foo/unknown"));
  EXPECT_FALSE(r.security.authorization_policies.at("foo/known").provider_undefined);
  EXPECT_TRUE(r.security.authorization_policies.at("foo/not-authz").provider_undefined);
  EXPECT_TRUE(r.security.authorization_policies.at("foo/unknown").provider_undefined);
  EXPECT_THAT(Only(r, false), IsEmpty()) << Describe(r);
  std::vector<ConfigError> warnings = Only(r, true);
  ASSERT_THAT(warnings, SizeIs(2)) << Describe(r);
  EXPECT_EQ(warnings[0].ToString(),
            "authz.yaml: warning: AuthorizationPolicy foo/not-authz: field spec.provider.name: "
            "'zipkin' is a zipkin extension provider, not an external authorizer "
            "(envoyExtAuthzHttp or envoyExtAuthzGrpc); its rules deny every request they match "
            "until it is defined");
  EXPECT_EQ(warnings[1].ToString(),
            "authz.yaml: warning: AuthorizationPolicy foo/unknown: field spec.provider.name: "
            "'ext-grpc' is "
            "not in the mesh config's extensionProviders (ext_authz providers: ext-http); its "
            "rules deny every request they match until it is defined");

  // Without a mesh config there is no provider at all.
  dir.Remove("mesh.yaml");
  r = loader.Load();
  EXPECT_THAT(PolicyKeys(r), SizeIs(3));
  EXPECT_TRUE(r.security.authorization_policies.at("foo/known").provider_undefined);
  ASSERT_THAT(Only(r, true), SizeIs(3));
  EXPECT_THAT(Only(r, true)[0].message, HasSubstr("defines no envoyExtAuthzHttp"));

  // Defined again: the policy goes back to its provider.
  dir.Write("mesh.yaml", kMesh);
  r = loader.Load();
  EXPECT_FALSE(r.security.authorization_policies.at("foo/known").provider_undefined);
}

TEST(AuthorizationPolicyLoaderTest, InvalidEditKeepsTheLastGoodPolicy) {
  TempDir dir;
  const std::string good =
      Ap("  action: DENY\n  rules:\n  - from:\n    - source: {ipBlocks: "
         "[\"198.18.0.0/16\"]}\n");
  dir.Write("authz.yaml", good);
  DirectoryLoader loader(dir.path());
  LoadResult first = loader.Load();
  ASSERT_THAT(first.errors, IsEmpty()) << Describe(first);
  ASSERT_THAT(PolicyKeys(first), ElementsAre("foo/p"));

  dir.Write("authz.yaml", Ap("  action: DENY\n  rules:\n  - from:\n    - source: {ipBlocks: "
                             "[\"198.18.0.0/88\"]}\n"));
  LoadResult second = loader.Load();
  EXPECT_TRUE(second.HasErrors());
  EXPECT_EQ(second.security.authorization_policies, first.security.authorization_policies);
  ASSERT_THAT(Only(second, true), SizeIs(1)) << Describe(second);
  EXPECT_THAT(Only(second, true)[0].message, HasSubstr("last good version stays in force"));

  // And the engine built from it enforces the last good rule.
  auto engine = BuildAuthzEngine(second);
  ASSERT_TRUE(engine.ok()) << engine.status();
  authz::Request req;
  req.source_ip = *IpAddress::Parse("198.18.130.3");
  req.destination_port = 80;
  authz::Decision d = (*engine)->Evaluate(InNamespace("foo"), req);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.policy, "foo/p");
}

TEST(AuthorizationPolicyLoaderTest, EngineUsesTheMeshRootNamespace) {
  TempDir dir;
  dir.Write("mesh.yaml", "rootNamespace: mesh-root\n");
  dir.Write("authz.yaml", R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: mesh-root}
spec: {action: DENY, rules: [{}]}
)");
  DirectoryLoader loader(dir.path());
  LoadResult r = loader.Load();
  ASSERT_THAT(r.errors, IsEmpty()) << Describe(r);
  auto engine = BuildAuthzEngine(r);
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->options().root_namespace, "mesh-root");
  authz::Request req;
  req.destination_port = 80;
  authz::Decision d = (*engine)->Evaluate(InNamespace("anywhere"), req);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.policy, "mesh-root/deny-all");
}

TEST(AuthorizationPolicyYamlTest, ParsesTrustDomainsAndIdentityConditions) {
  ParsedFile parsed = ParseKubeYaml("authz.yaml", Ap(R"(  rules:
  - from:
    - source:
        trustDomains: ["cluster.local", "*.example"]
        notTrustDomains: ["bad*"]
    when:
    - key: source.trustDomain
      values: ["cluster.local"]
    - key: source.serviceAccount
      notValues: ["bar/sleep", "sleep"]
)"));
  ASSERT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  std::vector<Policy> policies = Policies(parsed);
  ASSERT_THAT(policies, SizeIs(1));
  const Rule& rule = (*policies[0].rules)[0];
  ASSERT_THAT(rule.from, SizeIs(1));
  EXPECT_THAT(rule.from[0].trust_domains, ElementsAre("cluster.local", "*.example"));
  EXPECT_THAT(rule.from[0].not_trust_domains, ElementsAre("bad*"));
  EXPECT_EQ(rule.when[0], (Condition{"source.trustDomain", {"cluster.local"}, {}}));
  EXPECT_EQ(rule.when[1], (Condition{"source.serviceAccount", {}, {"bar/sleep", "sleep"}}));
}

TEST(TrustDomainAliasesYamlTest, ParsedInOrderWithoutDuplicates) {
  ParsedFile parsed =
      ParseMeshYaml("mesh.yaml",
                    "trustDomain: new.example\ntrustDomainAliases: [old.example, cluster.local, "
                    "old.example]\n");
  ASSERT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  ASSERT_THAT(parsed.objects, SizeIs(1));
  const auto& mesh = std::get<state::MeshConfig>(parsed.objects[0].object);
  EXPECT_THAT(mesh.trust_domain_aliases, ElementsAre("old.example", "cluster.local"));
  authz::EngineOptions options = AuthzEngineOptions(mesh);
  EXPECT_THAT(options.trust_domains.trust_domains,
              ElementsAre("new.example", "old.example", "cluster.local"));
}

TEST(TrustDomainAliasesYamlTest, BadAliasRejectsTheMeshConfigNamingIt) {
  for (const auto& [yaml, field, message] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"trustDomainAliases: [ok.example, Bad/Domain]\n", "trustDomainAliases[1]",
            "valid SPIFFE trust domain"},
           {"trustDomainAliases: [ok.example, {a: b}]\n", "trustDomainAliases[1]",
            "must be a string"},
           {"trustDomainAliases: old.example\n", "trustDomainAliases", "must be a list"},
           {"trustDomainAliases: [" + std::string(256, 'a') + "]\n", "trustDomainAliases[0]",
            "valid SPIFFE trust domain"},
       }) {
    ParsedFile parsed = ParseMeshYaml("mesh.yaml", yaml);
    std::vector<ConfigError> errors = Only(parsed, false);
    ASSERT_THAT(errors, SizeIs(1)) << yaml << Describe(parsed);
    EXPECT_EQ(errors[0].object, "MeshConfig");
    EXPECT_EQ(errors[0].field, field) << errors[0].ToString();
    EXPECT_THAT(errors[0].message, HasSubstr(message)) << errors[0].ToString();
    EXPECT_THAT(parsed.objects, IsEmpty());
  }
  std::string many = "trustDomainAliases: [";
  for (int i = 0; i < 33; ++i) many += "td" + std::to_string(i) + ".example, ";
  many += "]\n";
  ParsedFile parsed = ParseMeshYaml("mesh.yaml", many);
  ASSERT_THAT(Only(parsed, false), SizeIs(1)) << Describe(parsed);
  EXPECT_THAT(parsed.errors[0].message, HasSubstr("at most 32"));
}

TEST(AuthorizationPolicyLoaderTest, EngineMigratesPrincipalsThroughTrustDomainAliases) {
  TempDir dir;
  dir.Write("mesh.yaml", "trustDomain: new.example\ntrustDomainAliases: [old.example]\n");
  dir.Write("authz.yaml", R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: foo}
spec:
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/bar/sa/sleep"]}
)");
  DirectoryLoader loader(dir.path());
  LoadResult r = loader.Load();
  ASSERT_THAT(r.errors, IsEmpty()) << Describe(r);
  auto engine = BuildAuthzEngine(r);
  ASSERT_TRUE(engine.ok()) << engine.status();
  for (const auto& [principal, allowed] : std::vector<std::pair<std::string, bool>>{
           {"spiffe://old.example/ns/bar/sa/sleep", true},
           {"spiffe://new.example/ns/bar/sa/sleep", true},
           {"spiffe://cluster.local/ns/bar/sa/sleep", false},
           {"spiffe://other.example/ns/bar/sa/sleep", false},
       }) {
    authz::Request req;
    req.source_principal = principal;
    req.destination_port = 80;
    EXPECT_EQ((*engine)->Evaluate(InNamespace("foo"), req).allowed, allowed) << principal;
  }
}

}  // namespace
}  // namespace ambit::config
