// Table tests for the authorization engine: (policies, request, expected decision). Rows follow
// Istio's reference documentation (authorization-policy, conditions, normalization) and ztunnel's
// L4 conversion; the comment on a row says which rule of the docs it pins down.

#include "agent/authz/engine.h"

#include <initializer_list>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_split.h"
#include "agent/authz/compile.h"
#include "agent/authz/ext_authz.h"
#include "agent/authz/model.h"
#include "agent/authz/path.h"
#include "agent/authz/request.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::authz {

void PrintTo(DecisionReason reason, std::ostream* os) { *os << DecisionReasonName(reason); }

namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

using Labels = std::map<std::string, std::string>;
using Strings = std::vector<std::string>;

constexpr DecisionReason kDefaultAllow = DecisionReason::kDefaultAllow;
constexpr DecisionReason kAllowMatched = DecisionReason::kAllowMatched;
constexpr DecisionReason kDenyMatched = DecisionReason::kDenyMatched;
constexpr DecisionReason kNoAllow = DecisionReason::kNoAllowMatched;
constexpr DecisionReason kExtAuthz = DecisionReason::kExtAuthzRequired;
constexpr DecisionReason kBadRequest = DecisionReason::kBadRequest;

const char kSleep[] = "spiffe://cluster.local/ns/bar/sa/sleep";
const char kOther[] = "spiffe://cluster.local/ns/other/sa/client";

// ---- Policy builders -----------------------------------------------------------------------

Policy Pol(const std::string& key, Action action, std::optional<std::vector<Rule>> rules) {
  std::vector<std::string> parts = absl::StrSplit(key, '/');
  Policy p;
  p.namespace_name = parts[0];
  p.name = parts[1];
  p.action = action;
  p.rules = std::move(rules);
  return p;
}
Policy Allow(const std::string& key, std::vector<Rule> rules) {
  return Pol(key, Action::kAllow, std::move(rules));
}
Policy Deny(const std::string& key, std::vector<Rule> rules) {
  return Pol(key, Action::kDeny, std::move(rules));
}
Policy Audit(const std::string& key, std::vector<Rule> rules) {
  return Pol(key, Action::kAudit, std::move(rules));
}
Policy Custom(const std::string& key, const std::string& provider, std::vector<Rule> rules) {
  Policy p = Pol(key, Action::kCustom, std::move(rules));
  p.provider = provider;
  return p;
}
Policy NoRules(const std::string& key, Action action) { return Pol(key, action, std::nullopt); }
Policy Selector(Policy p, Labels labels) {
  p.selector = std::move(labels);
  return p;
}
Policy Targets(Policy p, std::vector<TargetRef> refs) {
  p.target_refs = std::move(refs);
  return p;
}
Policy DryRun(Policy p) {
  p.dry_run = true;
  return p;
}

TargetRef GatewayTarget(const std::string& name) {
  return {"gateway.networking.k8s.io", "Gateway", name};
}
TargetRef ServiceTarget(const std::string& name) { return {"", "Service", name}; }

const Rule kAnything{};  // rules: [{}]

Rule From(Source s) { return Rule{.from = {std::move(s)}}; }
Rule To(Operation o) { return Rule{.to = {std::move(o)}}; }
Condition Cond(std::string key, Strings values, Strings not_values = {}) {
  return Condition{std::move(key), std::move(values), std::move(not_values)};
}
Rule When(std::string key, Strings values, Strings not_values = {}) {
  return Rule{.when = {Cond(std::move(key), std::move(values), std::move(not_values))}};
}

// ---- Requests and workloads ----------------------------------------------------------------

IpAddress Ip(absl::string_view text) { return *IpAddress::Parse(text); }

// An HBONE connection from `principal` (empty: plaintext) to httpbin at 198.18.1.7:<port>.
Request Tcp(std::string principal = kSleep, uint16_t port = 8080) {
  Request r;
  r.layer = Layer::kL4;
  r.source_principal = std::move(principal);
  r.source_ip = Ip("198.18.0.5");
  r.destination_ip = Ip("198.18.1.7");
  r.destination_port = port;
  return r;
}
Request Plaintext(uint16_t port = 8080) { return Tcp("", port); }

// An HTTP request seen by an L7 proxy.
Request Http(std::string method = "GET", std::string path = "/", std::string principal = kSleep) {
  Request r = Tcp(std::move(principal));
  r.layer = Layer::kL7;
  r.method = std::move(method);
  r.path = std::move(path);
  r.host = "httpbin.foo";
  return r;
}

template <typename F>
Request With(Request r, F&& f) {
  f(r);
  return r;
}

ClaimValue Str(const char* s) { return ClaimValue::String(s); }
ClaimValue List(std::initializer_list<ClaimValue> items) { return ClaimValue::ListOf(items); }
ClaimValue Obj(std::initializer_list<std::pair<const std::string, ClaimValue>> members) {
  return ClaimValue::ObjectOf(ClaimValue::Object(members));
}

Request WithJwt(Request r, std::string principal, ClaimValue claims = Obj({})) {
  r.auth = JwtAuth{std::move(principal), {}, std::nullopt, std::move(claims)};
  return r;
}
Request HttpJwt(ClaimValue claims, std::string principal = "https://issuer.example.com/user-1") {
  return WithJwt(Http(), std::move(principal), std::move(claims));
}

Workload Httpbin() {
  Workload w;
  w.namespace_name = "foo";
  w.labels = {{"app", "httpbin"}, {"version", "v1"}};
  return w;
}
Workload AtWaypoint() {
  Workload w = Httpbin();
  w.waypoint = WaypointRef{"waypoint", "foo", {{"httpbin", "foo"}}};
  return w;
}

// ---- The table -----------------------------------------------------------------------------

struct Row {
  std::string name;
  std::vector<Policy> policies;
  Request request;
  bool allowed = true;
  std::string policy;  // deciding policy, "" when none
  DecisionReason reason = kDefaultAllow;
  int rule = 0;  // checked when a policy decided
  Workload target = Httpbin();
  PathNormalization normalization = PathNormalization::kBase;

  Row Rule(int r) && {
    rule = r;
    return std::move(*this);
  }
  Row Target(Workload w) && {
    target = std::move(w);
    return std::move(*this);
  }
  Row Normalize(PathNormalization n) && {
    normalization = n;
    return std::move(*this);
  }
};

void PrintTo(const Row& row, std::ostream* os) { *os << row.name; }

Row R(std::string name, std::vector<Policy> policies, Request request, bool allowed,
      std::string policy, DecisionReason reason) {
  Row row;
  row.name = std::move(name);
  row.policies = std::move(policies);
  row.request = std::move(request);
  row.allowed = allowed;
  row.policy = std::move(policy);
  row.reason = reason;
  return row;
}

constexpr bool kAllowed = true;
constexpr bool kDenied = false;

std::vector<Row> Rows() {
  const Source bar{.namespaces = {"bar"}};
  std::vector<Row> rows = {
      // -- Evaluation order and defaults (authorization-policy reference, "Evaluation") --------
      R("no_policy_allows", {}, Tcp(), kAllowed, "", kDefaultAllow),
      R("allow_without_rules_denies_everything", {NoRules("foo/deny-all", Action::kAllow)}, Tcp(),
        kDenied, "", kNoAllow),
      R("allow_with_empty_rules_list_denies", {Allow("foo/none", {})}, Tcp(), kDenied, "",
        kNoAllow),
      R("allow_with_empty_rule_allows_everything", {Allow("foo/allow-all", {kAnything})},
        Plaintext(), kAllowed, "foo/allow-all", kAllowMatched),
      R("deny_without_rules_never_matches", {NoRules("foo/deny-nothing", Action::kDeny)}, Tcp(),
        kAllowed, "", kDefaultAllow),
      R("deny_with_empty_rule_denies_everything", {Deny("foo/deny-all", {kAnything})}, Tcp(),
        kDenied, "foo/deny-all", kDenyMatched),
      R("deny_wins_over_allow",
        {Allow("foo/allow-all", {kAnything}), Deny("foo/deny-all", {kAnything})}, Tcp(), kDenied,
        "foo/deny-all", kDenyMatched),
      R("unmatched_deny_then_allow",
        {Deny("foo/deny-other", {From({.namespaces = {"other"}})}),
         Allow("foo/allow-all", {kAnything})},
        Tcp(), kAllowed, "foo/allow-all", kAllowMatched),
      R("unmatched_deny_and_no_allow_allows",
        {Deny("foo/deny-other", {From({.namespaces = {"x"}})})}, Tcp(), kAllowed, "",
        kDefaultAllow),
      R("one_of_two_allow_policies_matches",
        {Allow("foo/a", {From({.principals = {"cluster.local/ns/x/sa/y"}})}),
         Allow("foo/b", {From({.principals = {"cluster.local/ns/bar/sa/sleep"}})})},
        Tcp(), kAllowed, "foo/b", kAllowMatched),
      R("none_of_two_allow_policies_matches",
        {Allow("foo/a", {From({.namespaces = {"x"}})}),
         Allow("foo/b", {From({.namespaces = {"y"}})})},
        Tcp(), kDenied, "", kNoAllow),
      R("first_matching_allow_by_name_decides",
        {Allow("foo/b", {kAnything}), Allow("foo/a", {From(bar)})}, Tcp(), kAllowed, "foo/a",
        kAllowMatched),
      R("first_matching_deny_by_name_decides",
        {Deny("foo/z", {kAnything}), Deny("foo/m", {From(bar)})}, Tcp(), kDenied, "foo/m",
        kDenyMatched),
      R("second_rule_matches", {Allow("foo/rules", {From({.namespaces = {"x"}}), From(bar)})},
        Tcp(), kAllowed, "foo/rules", kAllowMatched)
          .Rule(1),

      // -- Which policies apply: namespace, root namespace, selector ----------------------------
      R("policy_in_other_namespace_ignored", {Deny("bar/deny-all", {kAnything})}, Tcp(), kAllowed,
        "", kDefaultAllow),
      R("root_namespace_policy_is_mesh_wide", {Deny("istio-system/deny-all", {kAnything})}, Tcp(),
        kDenied, "istio-system/deny-all", kDenyMatched),
      R("root_namespace_allow_with_selector_applies_everywhere",
        {Selector(Allow("istio-system/only-x", {From({.namespaces = {"x"}})}),
                  {{"app", "httpbin"}})},
        Tcp(), kDenied, "", kNoAllow),
      R("root_namespace_selector_not_matching",
        {Selector(Deny("istio-system/deny", {kAnything}), {{"app", "other"}})}, Tcp(), kAllowed, "",
        kDefaultAllow),
      R("root_namespace_policy_applies_in_root_namespace",
        {Deny("istio-system/deny-all", {kAnything})}, Tcp(), kDenied, "istio-system/deny-all",
        kDenyMatched)
          .Target(Workload{"istio-system", {}, std::nullopt}),
      R("selector_subset_of_labels_applies",
        {Selector(Deny("foo/deny", {kAnything}), {{"app", "httpbin"}})}, Tcp(), kDenied, "foo/deny",
        kDenyMatched),
      R("selector_needs_every_label",
        {Selector(Deny("foo/deny", {kAnything}), {{"app", "httpbin"}, {"version", "v2"}})}, Tcp(),
        kAllowed, "", kDefaultAllow),
      R("selector_value_mismatch", {Selector(Deny("foo/deny", {kAnything}), {{"app", "web"}})},
        Tcp(), kAllowed, "", kDefaultAllow),
      R("empty_selector_selects_all", {Selector(Deny("foo/deny", {kAnything}), {})}, Tcp(), kDenied,
        "foo/deny", kDenyMatched),
      R("l4_ignores_target_ref_policies",
        {Targets(Deny("foo/deny", {kAnything}), {GatewayTarget("waypoint")})}, Tcp(), kAllowed, "",
        kDefaultAllow),
      R("l4_ignores_custom", {Custom("foo/ext", "opa", {kAnything})}, Tcp(), kAllowed, "",
        kDefaultAllow),
      R("l4_ignores_audit", {Audit("foo/audit", {kAnything})}, Tcp(), kAllowed, "", kDefaultAllow),

      // -- principals / notPrincipals ------------------------------------------------------------
      R("principal_exact",
        {Allow("foo/p", {From({.principals = {"cluster.local/ns/bar/sa/sleep"}})})}, Tcp(),
        kAllowed, "foo/p", kAllowMatched),
      R("principal_exact_mismatch",
        {Allow("foo/p", {From({.principals = {"cluster.local/ns/bar/sa/other"}})})}, Tcp(), kDenied,
        "", kNoAllow),
      R("principal_prefix", {Allow("foo/p", {From({.principals = {"cluster.local/ns/bar/*"}})})},
        Tcp(), kAllowed, "foo/p", kAllowMatched),
      R("principal_suffix", {Allow("foo/p", {From({.principals = {"*/sa/sleep"}})})}, Tcp(),
        kAllowed, "foo/p", kAllowMatched),
      R("principal_presence_mtls", {Allow("foo/p", {From({.principals = {"*"}})})}, Tcp(), kAllowed,
        "foo/p", kAllowMatched),
      R("principal_presence_plaintext", {Allow("foo/p", {From({.principals = {"*"}})})},
        Plaintext(), kDenied, "", kNoAllow),
      R("principal_exact_plaintext",
        {Allow("foo/p", {From({.principals = {"cluster.local/ns/bar/sa/sleep"}})})}, Plaintext(),
        kDenied, "", kNoAllow),
      R("principal_written_with_scheme_never_matches",
        {Allow("foo/p", {From({.principals = {"spiffe://cluster.local/ns/bar/sa/sleep"}})})}, Tcp(),
        kDenied, "", kNoAllow),
      R("principal_inner_star_is_literal",
        {Allow("foo/p", {From({.principals = {"cluster.local/ns/*/sa/sleep"}})})}, Tcp(), kDenied,
        "", kNoAllow),
      R("principal_value_or", {Allow("foo/p", {From({.principals = {"a/b", "*/sa/sleep"}})})},
        Tcp(), kAllowed, "foo/p", kAllowMatched),
      R("not_principals_presence_admits_plaintext",
        {Allow("foo/plain", {From({.not_principals = {"*"}})})}, Plaintext(), kAllowed, "foo/plain",
        kAllowMatched),
      R("not_principals_presence_rejects_mtls",
        {Allow("foo/plain", {From({.not_principals = {"*"}})})}, Tcp(), kDenied, "", kNoAllow),
      R("deny_not_principals_spares_listed",
        {Deny("foo/d", {From({.not_principals = {"cluster.local/ns/bar/sa/sleep"}})})}, Tcp(),
        kAllowed, "", kDefaultAllow),
      R("deny_not_principals_hits_others",
        {Deny("foo/d", {From({.not_principals = {"cluster.local/ns/bar/sa/sleep"}})})}, Tcp(kOther),
        kDenied, "foo/d", kDenyMatched),
      R("deny_not_principals_hits_plaintext",
        {Deny("foo/d", {From({.not_principals = {"cluster.local/ns/bar/sa/sleep"}})})}, Plaintext(),
        kDenied, "foo/d", kDenyMatched),

      // -- namespaces / notNamespaces ------------------------------------------------------------
      R("namespace_exact", {Allow("foo/n", {From(bar)})}, Tcp(), kAllowed, "foo/n", kAllowMatched),
      R("namespace_mismatch", {Allow("foo/n", {From(bar)})}, Tcp(kOther), kDenied, "", kNoAllow),
      R("namespace_prefix", {Allow("foo/n", {From({.namespaces = {"ba*"}})})}, Tcp(), kAllowed,
        "foo/n", kAllowMatched),
      R("namespace_suffix", {Allow("foo/n", {From({.namespaces = {"*ar"}})})}, Tcp(), kAllowed,
        "foo/n", kAllowMatched),
      R("namespace_presence_plaintext", {Allow("foo/n", {From({.namespaces = {"*"}})})},
        Plaintext(), kDenied, "", kNoAllow),
      R("namespace_plaintext", {Allow("foo/n", {From(bar)})}, Plaintext(), kDenied, "", kNoAllow),
      R("deny_not_namespaces_hits_plaintext", {Deny("foo/d", {From({.not_namespaces = {"foo"}})})},
        Plaintext(), kDenied, "foo/d", kDenyMatched),
      R("deny_not_namespaces_spares_listed", {Deny("foo/d", {From({.not_namespaces = {"bar"}})})},
        Tcp(), kAllowed, "", kDefaultAllow),
      R("deny_not_namespaces_hits_others", {Deny("foo/d", {From({.not_namespaces = {"bar"}})})},
        Tcp(kOther), kDenied, "foo/d", kDenyMatched),

      // -- serviceAccounts / notServiceAccounts --------------------------------------------------
      R("service_account_namespaced",
        {Allow("foo/sa", {From({.service_accounts = {"bar/sleep"}})})}, Tcp(), kAllowed, "foo/sa",
        kAllowMatched),
      R("service_account_short_form_is_policy_namespace",
        {Allow("foo/sa", {From({.service_accounts = {"sleep"}})})}, Tcp(), kDenied, "", kNoAllow),
      R("service_account_short_form_same_namespace",
        {Allow("foo/sa", {From({.service_accounts = {"sleep"}})})},
        Tcp("spiffe://cluster.local/ns/foo/sa/sleep"), kAllowed, "foo/sa", kAllowMatched),
      R("service_account_ignores_trust_domain",
        {Allow("foo/sa", {From({.service_accounts = {"bar/sleep"}})})},
        Tcp("spiffe://example.org/ns/bar/sa/sleep"), kAllowed, "foo/sa", kAllowMatched),
      R("service_account_plaintext", {Allow("foo/sa", {From({.service_accounts = {"bar/sleep"}})})},
        Plaintext(), kDenied, "", kNoAllow),
      R("not_service_accounts_plaintext",
        {Allow("foo/sa", {From({.not_service_accounts = {"bar/sleep"}})})}, Plaintext(), kAllowed,
        "foo/sa", kAllowMatched),
      R("not_service_accounts_listed",
        {Allow("foo/sa", {From({.not_service_accounts = {"bar/sleep"}})})}, Tcp(), kDenied, "",
        kNoAllow),

      // -- ipBlocks / notIpBlocks / remoteIpBlocks -----------------------------------------------
      R("ip_blocks_cidr", {Allow("foo/ip", {From({.ip_blocks = {"198.18.0.0/24"}})})}, Tcp(),
        kAllowed, "foo/ip", kAllowMatched),
      R("ip_blocks_single_address", {Allow("foo/ip", {From({.ip_blocks = {"198.18.0.5"}})})}, Tcp(),
        kAllowed, "foo/ip", kAllowMatched),
      R("ip_blocks_mismatch", {Allow("foo/ip", {From({.ip_blocks = {"198.19.0.0/16"}})})}, Tcp(),
        kDenied, "", kNoAllow),
      R("not_ip_blocks_inside", {Deny("foo/ip", {From({.not_ip_blocks = {"198.18.0.0/16"}})})},
        Tcp(), kAllowed, "", kDefaultAllow),
      R("not_ip_blocks_outside", {Deny("foo/ip", {From({.not_ip_blocks = {"198.18.0.0/16"}})})},
        With(Tcp(), [](Request& r) { r.source_ip = Ip("198.19.1.1"); }), kDenied, "foo/ip",
        kDenyMatched),
      R("ip_blocks_ipv6", {Allow("foo/ip", {From({.ip_blocks = {"2001:db8::/64"}})})},
        With(Tcp(), [](Request& r) { r.source_ip = Ip("2001:db8::5"); }), kAllowed, "foo/ip",
        kAllowMatched),
      R("ip_blocks_v4_never_match_v6", {Allow("foo/ip", {From({.ip_blocks = {"0.0.0.0/0"}})})},
        With(Tcp(), [](Request& r) { r.source_ip = Ip("2001:db8::5"); }), kDenied, "", kNoAllow),
      R("remote_ip_blocks_use_remote_ip",
        {Allow("foo/rip", {From({.remote_ip_blocks = {"203.0.113.0/24"}})})},
        With(Http(), [](Request& r) { r.remote_ip = Ip("203.0.113.9"); }), kAllowed, "foo/rip",
        kAllowMatched),
      R("remote_ip_defaults_to_source_ip",
        {Allow("foo/rip", {From({.remote_ip_blocks = {"198.18.0.5"}})})}, Http(), kAllowed,
        "foo/rip", kAllowMatched),
      R("not_remote_ip_blocks",
        {Deny("foo/rip", {From({.not_remote_ip_blocks = {"198.18.0.0/16"}})})},
        With(Http(), [](Request& r) { r.remote_ip = Ip("203.0.113.9"); }), kDenied, "foo/rip",
        kDenyMatched),

      // -- ports / notPorts (destination port) ---------------------------------------------------
      R("ports_match", {Allow("foo/port", {To({.ports = {"8080"}})})}, Tcp(), kAllowed, "foo/port",
        kAllowMatched),
      R("ports_mismatch", {Allow("foo/port", {To({.ports = {"9090"}})})}, Tcp(), kDenied, "",
        kNoAllow),
      R("not_ports_same", {Deny("foo/port", {To({.not_ports = {"8080"}})})}, Tcp(), kAllowed, "",
        kDefaultAllow),
      R("not_ports_other", {Deny("foo/port", {To({.not_ports = {"8080"}})})}, Tcp(kSleep, 9090),
        kDenied, "foo/port", kDenyMatched),
      R("deny_port_plaintext", {Deny("foo/port", {To({.ports = {"9080"}})})}, Plaintext(9080),
        kDenied, "foo/port", kDenyMatched),

      // -- Rule structure: from OR, fields AND, from AND to AND when -----------------------------
      R("from_entries_are_ored",
        {Allow("foo/r", {Rule{.from = {{.namespaces = {"x"}}, {.namespaces = {"bar"}}}}})}, Tcp(),
        kAllowed, "foo/r", kAllowMatched),
      R("source_fields_are_anded",
        {Allow("foo/r", {From({.principals = {"*/sa/other"}, .namespaces = {"bar"}})})}, Tcp(),
        kDenied, "", kNoAllow),
      R("from_and_to_are_anded",
        {Allow("foo/r", {Rule{.from = {bar}, .to = {{.ports = {"9090"}}}}})}, Tcp(), kDenied, "",
        kNoAllow),
      R("to_entries_are_ored",
        {Allow("foo/r", {Rule{.to = {{.ports = {"9090"}}, {.ports = {"8080"}}}}})}, Tcp(), kAllowed,
        "foo/r", kAllowMatched),
      R("when_conditions_are_anded",
        {Allow("foo/r", {Rule{.when = {Cond("source.namespace", {"bar"}),
                                       Cond("destination.port", {"9090"})}}})},
        Tcp(), kDenied, "", kNoAllow),
      R("from_to_when_all_match",
        {Allow("foo/r", {Rule{.from = {bar},
                              .to = {{.ports = {"8080"}}},
                              .when = {Cond("source.ip", {"198.18.0.0/17"})}}})},
        Tcp(), kAllowed, "foo/r", kAllowMatched),

      // -- L4 conditions -------------------------------------------------------------------------
      R("when_source_ip", {Allow("foo/c", {When("source.ip", {"198.18.0.0/24"})})}, Tcp(), kAllowed,
        "foo/c", kAllowMatched),
      R("when_source_ip_not_values", {Allow("foo/c", {When("source.ip", {}, {"198.18.0.5"})})},
        Tcp(), kDenied, "", kNoAllow),
      R("when_source_namespace", {Allow("foo/c", {When("source.namespace", {"bar"})})}, Tcp(),
        kAllowed, "foo/c", kAllowMatched),
      R("when_source_principal",
        {Allow("foo/c", {When("source.principal", {"cluster.local/ns/bar/sa/sleep"})})}, Tcp(),
        kAllowed, "foo/c", kAllowMatched),
      R("when_source_principal_plaintext_not_values",
        {Allow("foo/c", {When("source.principal", {}, {"*"})})}, Plaintext(), kAllowed, "foo/c",
        kAllowMatched),
      R("when_destination_ip", {Allow("foo/c", {When("destination.ip", {"198.18.1.0/24"})})}, Tcp(),
        kAllowed, "foo/c", kAllowMatched),
      R("when_destination_ip_mismatch",
        {Allow("foo/c", {When("destination.ip", {"198.18.201.9"})})}, Tcp(), kDenied, "", kNoAllow),
      R("when_destination_port", {Allow("foo/c", {When("destination.port", {"80", "8080"})})},
        Tcp(), kAllowed, "foo/c", kAllowMatched),
      R("when_destination_port_not_values",
        {Allow("foo/c", {When("destination.port", {}, {"8080"})})}, Tcp(), kDenied, "", kNoAllow),
      R("when_values_and_not_values",
        {Allow("foo/c", {When("source.namespace", {"bar", "baz"}, {"bar"})})}, Tcp(), kDenied, "",
        kNoAllow),

      // -- L4 reduction (istiod's ztunnel conversion) --------------------------------------------
      R("l4_allow_rule_with_methods_dropped",
        {Allow("foo/get", {Rule{.from = {bar}, .to = {{.methods = {"GET"}}}}})}, Tcp(), kDenied, "",
        kNoAllow),
      R("l4_allow_other_rule_still_applies",
        {Allow("foo/mixed", {To({.methods = {"GET"}}), From(bar)})}, Tcp(), kAllowed, "foo/mixed",
        kAllowMatched)
          .Rule(1),
      R("l4_allow_header_condition_dropped",
        {Allow("foo/hdr", {When("request.headers[x-token]", {"admin"})})}, Tcp(), kDenied, "",
        kNoAllow),
      R("l4_allow_request_principals_dropped",
        {Allow("foo/jwt", {From({.request_principals = {"*"}})})}, Tcp(), kDenied, "", kNoAllow),
      R("l4_allow_not_paths_dropped", {Allow("foo/np", {To({.not_paths = {"/admin"}})})}, Tcp(),
        kDenied, "", kNoAllow),
      R("l4_allow_hosts_dropped", {Allow("foo/h", {To({.hosts = {"*"}})})}, Tcp(), kDenied, "",
        kNoAllow),
      R("l4_allow_sni_condition_dropped", {Allow("foo/sni", {When("connection.sni", {"*"})})},
        Tcp(), kDenied, "", kNoAllow),
      R("l4_allow_remote_ip_dropped", {Allow("foo/rip", {When("remote.ip", {"0.0.0.0/0"})})}, Tcp(),
        kDenied, "", kNoAllow),
      R("l4_allow_remote_ip_blocks_dropped",
        {Allow("foo/rip", {From({.remote_ip_blocks = {"0.0.0.0/0"}})})}, Tcp(), kDenied, "",
        kNoAllow),
      R("l4_deny_keeps_l4_part_of_operation",
        {Deny("foo/post", {To({.ports = {"8080"}, .methods = {"POST"}})})}, Tcp(), kDenied,
        "foo/post", kDenyMatched),
      R("l4_deny_http_only_operation_never_matches",
        {Deny("foo/post", {To({.methods = {"POST"}})})}, Tcp(), kAllowed, "", kDefaultAllow),
      R("l4_deny_http_only_condition_never_matches",
        {Deny("foo/hdr", {Rule{.from = {bar}, .when = {Cond("request.headers[x-a]", {"1"})}}})},
        Tcp(), kAllowed, "", kDefaultAllow),
      R("l4_deny_http_only_from_entry_skipped",
        {Deny("foo/d", {Rule{.from = {{.request_principals = {"*"}}, {.namespaces = {"bar"}}}}})},
        Tcp(), kDenied, "foo/d", kDenyMatched),
      R("l4_deny_mixed_source_keeps_namespace",
        {Deny("foo/d", {From({.request_principals = {"*"}, .namespaces = {"bar"}})})}, Tcp(),
        kDenied, "foo/d", kDenyMatched),
      R("l4_deny_path_on_port_denies_every_path",
        {Deny("foo/admin", {To({.ports = {"8080"}, .paths = {"/admin"}})})}, Tcp(), kDenied,
        "foo/admin", kDenyMatched),
      R("l7_same_deny_checks_the_path",
        {Deny("foo/admin", {To({.ports = {"8080"}, .paths = {"/admin"}})})}, Http("GET", "/public"),
        kAllowed, "", kDefaultAllow),
      R("l7_allow_rule_with_methods_applies",
        {Allow("foo/get", {Rule{.from = {bar}, .to = {{.methods = {"GET"}}}}})}, Http(), kAllowed,
        "foo/get", kAllowMatched),

      // -- methods -------------------------------------------------------------------------------
      R("methods_exact", {Allow("foo/m", {To({.methods = {"GET", "HEAD"}})})}, Http("HEAD"),
        kAllowed, "foo/m", kAllowMatched),
      R("methods_case_sensitive", {Allow("foo/m", {To({.methods = {"get"}})})}, Http("GET"),
        kDenied, "", kNoAllow),
      R("methods_mismatch", {Allow("foo/m", {To({.methods = {"GET"}})})}, Http("POST"), kDenied, "",
        kNoAllow),
      R("methods_prefix", {Allow("foo/m", {To({.methods = {"P*"}})})}, Http("PUT"), kAllowed,
        "foo/m", kAllowMatched),
      R("not_methods_other", {Deny("foo/m", {To({.not_methods = {"GET", "HEAD"}})})}, Http("POST"),
        kDenied, "foo/m", kDenyMatched),
      R("not_methods_listed", {Deny("foo/m", {To({.not_methods = {"GET", "HEAD"}})})}, Http("GET"),
        kAllowed, "", kDefaultAllow),
      R("method_and_path_same_operation",
        {Allow("foo/op", {Rule{.to = {{.methods = {"GET"}, .paths = {"/info*"}},
                                      {.methods = {"POST"}, .paths = {"/data"}}}}})},
        Http("POST", "/info"), kDenied, "", kNoAllow),

      // -- paths, normalization and templates ----------------------------------------------------
      R("paths_exact", {Allow("foo/p", {To({.paths = {"/info"}})})}, Http("GET", "/info"), kAllowed,
        "foo/p", kAllowMatched),
      R("paths_exact_mismatch", {Allow("foo/p", {To({.paths = {"/info"}})})},
        Http("GET", "/info/x"), kDenied, "", kNoAllow),
      R("paths_prefix", {Allow("foo/p", {To({.paths = {"/info*"}})})}, Http("GET", "/info/x"),
        kAllowed, "foo/p", kAllowMatched),
      R("paths_suffix", {Allow("foo/p", {To({.paths = {"*.png"}})})}, Http("GET", "/img/a.png"),
        kAllowed, "foo/p", kAllowMatched),
      R("paths_presence", {Allow("foo/p", {To({.paths = {"*"}})})}, Http("GET", "/"), kAllowed,
        "foo/p", kAllowMatched),
      R("paths_query_ignored", {Allow("foo/p", {To({.paths = {"/info"}})})},
        Http("GET", "/info?x=1&y=/admin"), kAllowed, "foo/p", kAllowMatched),
      R("paths_dot_segments_resolved", {Deny("foo/admin", {To({.paths = {"/admin"}})})},
        Http("GET", "/public/../admin"), kDenied, "foo/admin", kDenyMatched),
      R("paths_single_dot_resolved", {Deny("foo/admin", {To({.paths = {"/admin/x"}})})},
        Http("GET", "/admin/./x"), kDenied, "foo/admin", kDenyMatched),
      R("paths_unreserved_escapes_decoded", {Deny("foo/admin", {To({.paths = {"/admin"}})})},
        Http("GET", "/%61dmin"), kDenied, "foo/admin", kDenyMatched),
      R("paths_encoded_dots_resolved", {Deny("foo/admin", {To({.paths = {"/admin"}})})},
        Http("GET", "/public/%2e%2E/admin"), kDenied, "foo/admin", kDenyMatched),
      R("paths_backslash_is_slash", {Deny("foo/admin", {To({.paths = {"/admin/*"}})})},
        Http("GET", "/admin\\x"), kDenied, "foo/admin", kDenyMatched),
      R("paths_slashes_not_merged_by_default", {Deny("foo/admin", {To({.paths = {"/admin"}})})},
        Http("GET", "//admin"), kAllowed, "", kDefaultAllow),
      R("paths_slashes_merged_with_merge_slashes", {Deny("foo/admin", {To({.paths = {"/admin"}})})},
        Http("GET", "//admin"), kDenied, "foo/admin", kDenyMatched)
          .Normalize(PathNormalization::kMergeSlashes),
      R("paths_encoded_slash_kept_by_default", {Deny("foo/admin", {To({.paths = {"/admin/*"}})})},
        Http("GET", "/admin%2Fx"), kAllowed, "", kDefaultAllow),
      R("paths_encoded_slash_decoded_when_asked",
        {Deny("foo/admin", {To({.paths = {"/admin/*"}})})}, Http("GET", "/admin%2Fx"), kDenied,
        "foo/admin", kDenyMatched)
          .Normalize(PathNormalization::kDecodeAndMergeSlashes),
      R("paths_nul_rejected", {Allow("foo/all", {kAnything})}, Http("GET", "/a%00b"), kDenied, "",
        kBadRequest),
      R("not_paths_other", {Allow("foo/p", {To({.not_paths = {"/admin*"}})})},
        Http("GET", "/public"), kAllowed, "foo/p", kAllowMatched),
      R("not_paths_listed", {Allow("foo/p", {To({.not_paths = {"/admin*"}})})},
        Http("GET", "/admin/users"), kDenied, "", kNoAllow),
      R("path_template_one_segment", {Allow("foo/t", {To({.paths = {"/api/{*}/items"}})})},
        Http("GET", "/api/v1/items"), kAllowed, "foo/t", kAllowMatched),
      R("path_template_one_segment_not_two", {Allow("foo/t", {To({.paths = {"/api/{*}/items"}})})},
        Http("GET", "/api/v1/x/items"), kDenied, "", kNoAllow),
      R("path_template_one_segment_not_empty",
        {Allow("foo/t", {To({.paths = {"/api/{*}/items"}})})}, Http("GET", "/api//items"), kDenied,
        "", kNoAllow),
      R("path_template_remainder", {Allow("foo/t", {To({.paths = {"/static/{**}"}})})},
        Http("GET", "/static/css/a.css"), kAllowed, "foo/t", kAllowMatched),
      R("path_template_remainder_may_be_empty", {Allow("foo/t", {To({.paths = {"/static/{**}"}})})},
        Http("GET", "/static/"), kAllowed, "foo/t", kAllowMatched),
      R("path_template_remainder_needs_prefix", {Allow("foo/t", {To({.paths = {"/static/{**}"}})})},
        Http("GET", "/static"), kDenied, "", kNoAllow),
      R("path_template_doc_example", {Allow("foo/t", {To({.paths = {"/foo/{*}/bar/{**}"}})})},
        Http("GET", "/foo/buzz/bar/baz"), kAllowed, "foo/t", kAllowMatched),
      R("path_template_trailing_slash", {Allow("foo/t", {To({.paths = {"/foo/{**}/"}})})},
        Http("GET", "/foo/bar"), kDenied, "", kNoAllow),

      // -- hosts / notHosts ----------------------------------------------------------------------
      R("hosts_case_insensitive", {Allow("foo/h", {To({.hosts = {"HTTPBIN.foo"}})})}, Http(),
        kAllowed, "foo/h", kAllowMatched),
      R("hosts_suffix", {Allow("foo/h", {To({.hosts = {"*.FOO"}})})}, Http(), kAllowed, "foo/h",
        kAllowMatched),
      R("hosts_prefix", {Allow("foo/h", {To({.hosts = {"httpbin.*"}})})},
        With(Http(), [](Request& r) { r.host = "httpbin.foo.svc.cluster.local"; }), kAllowed,
        "foo/h", kAllowMatched),
      R("hosts_port_is_part_of_host", {Allow("foo/h", {To({.hosts = {"httpbin.foo"}})})},
        With(Http(), [](Request& r) { r.host = "httpbin.foo:8000"; }), kDenied, "", kNoAllow),
      R("not_hosts", {Deny("foo/h", {To({.not_hosts = {"*.foo"}})})},
        With(Http(), [](Request& r) { r.host = "evil.example.com"; }), kDenied, "foo/h",
        kDenyMatched),

      // -- requestPrincipals (JWT) ---------------------------------------------------------------
      R("request_principal_exact",
        {Allow("foo/j", {From({.request_principals = {"https://issuer.example.com/user-1"}})})},
        HttpJwt(Obj({})), kAllowed, "foo/j", kAllowMatched),
      R("request_principal_without_jwt",
        {Allow("foo/j", {From({.request_principals = {"https://issuer.example.com/user-1"}})})},
        Http(), kDenied, "", kNoAllow),
      R("request_principal_presence", {Allow("foo/j", {From({.request_principals = {"*"}})})},
        HttpJwt(Obj({})), kAllowed, "foo/j", kAllowMatched),
      R("request_principal_any_issuer",
        {Allow("foo/j", {From({.request_principals = {"*/user-1"}})})}, HttpJwt(Obj({})), kAllowed,
        "foo/j", kAllowMatched),
      R("request_principal_issuer_suffix",
        {Allow("foo/j", {From({.request_principals = {"*.example.com/user-1"}})})},
        HttpJwt(Obj({})), kAllowed, "foo/j", kAllowMatched),
      R("request_principal_subject_prefix",
        {Allow("foo/j", {From({.request_principals = {"https://issuer.example.com/user-*"}})})},
        HttpJwt(Obj({})), kAllowed, "foo/j", kAllowMatched),
      R("request_principal_any_subject",
        {Allow("foo/j", {From({.request_principals = {"https://issuer.example.com/*"}})})},
        HttpJwt(Obj({})), kAllowed, "foo/j", kAllowMatched),
      R("request_principal_wrong_issuer",
        {Allow("foo/j", {From({.request_principals = {"https://other.example.com/*"}})})},
        HttpJwt(Obj({})), kDenied, "", kNoAllow),
      R("request_principal_subject_suffix_no_slash",
        {Allow("foo/j", {From({.request_principals = {"*-1"}})})}, HttpJwt(Obj({})), kAllowed,
        "foo/j", kAllowMatched),
      R("request_principal_issuer_prefix_no_slash",
        {Allow("foo/j", {From({.request_principals = {"issuer.example*"}})})},
        HttpJwt(Obj({}), "issuer.example.com/user-1"), kAllowed, "foo/j", kAllowMatched),
      // Istio splits at the last '/', even inside "https://": this is iss "https:/", sub "issuer*".
      R("request_principal_split_inside_scheme",
        {Allow("foo/j", {From({.request_principals = {"https://issuer*"}})})}, HttpJwt(Obj({})),
        kDenied, "", kNoAllow),
      R("request_principal_from_iss_and_sub_claims",
        {Allow("foo/j", {From({.request_principals = {"https://a.example/b/c"}})})},
        HttpJwt(Obj({{"iss", Str("https://a.example/b")}, {"sub", Str("c")}}), "ignored/x"),
        kAllowed, "foo/j", kAllowMatched),
      R("not_request_principals_requires_jwt",
        {Deny("foo/require-jwt", {From({.not_request_principals = {"*"}})})}, Http(), kDenied,
        "foo/require-jwt", kDenyMatched),
      R("not_request_principals_with_jwt",
        {Deny("foo/require-jwt", {From({.not_request_principals = {"*"}})})}, HttpJwt(Obj({})),
        kAllowed, "", kDefaultAllow),

      // -- L7 conditions -------------------------------------------------------------------------
      R("header_exact_name_case_insensitive",
        {Allow("foo/h", {When("request.headers[X-Token]", {"admin"})})},
        With(Http(), [](Request& r) { r.headers.Add("x-token", "admin"); }), kAllowed, "foo/h",
        kAllowMatched),
      R("header_value_case_sensitive",
        {Allow("foo/h", {When("request.headers[x-token]", {"admin"})})},
        With(Http(), [](Request& r) { r.headers.Add("X-Token", "Admin"); }), kDenied, "", kNoAllow),
      R("header_prefix", {Allow("foo/h", {When("request.headers[user-agent]", {"Mozilla/*"})})},
        With(Http(), [](Request& r) { r.headers.Add("User-Agent", "Mozilla/5.0"); }), kAllowed,
        "foo/h", kAllowMatched),
      R("header_presence_with_empty_value", {Allow("foo/h", {When("request.headers[x-a]", {"*"})})},
        With(Http(), [](Request& r) { r.headers.Add("x-a", ""); }), kAllowed, "foo/h",
        kAllowMatched),
      R("header_absent", {Allow("foo/h", {When("request.headers[x-a]", {"*"})})}, Http(), kDenied,
        "", kNoAllow),
      R("header_not_values_absent", {Allow("foo/h", {When("request.headers[x-a]", {}, {"bad"})})},
        Http(), kAllowed, "foo/h", kAllowMatched),
      R("header_duplicates_merged", {Allow("foo/h", {When("request.headers[x-a]", {"a,b"})})},
        With(Http(),
             [](Request& r) {
               r.headers.Add("x-a", "a");
               r.headers.Add("X-A", "b");
             }),
        kAllowed, "foo/h", kAllowMatched),
      R("header_duplicates_not_split", {Allow("foo/h", {When("request.headers[x-a]", {"a"})})},
        With(Http(),
             [](Request& r) {
               r.headers.Add("x-a", "a");
               r.headers.Add("x-a", "b");
             }),
        kDenied, "", kNoAllow),
      R("auth_principal_condition",
        {Allow("foo/j", {When("request.auth.principal", {"https://issuer.example.com/user-1"})})},
        HttpJwt(Obj({})), kAllowed, "foo/j", kAllowMatched),
      R("auth_audiences_from_list_claim", {Allow("foo/j", {When("request.auth.audiences", {"b"})})},
        HttpJwt(Obj({{"aud", List({Str("a"), Str("b")})}})), kAllowed, "foo/j", kAllowMatched),
      R("auth_audiences_from_string_claim",
        {Allow("foo/j", {When("request.auth.audiences", {"*.example.com"})})},
        HttpJwt(Obj({{"aud", Str("api.example.com")}})), kAllowed, "foo/j", kAllowMatched),
      R("auth_audiences_explicit", {Allow("foo/j", {When("request.auth.audiences", {"api"})})},
        With(HttpJwt(Obj({})),
             [](Request& r) {
               r.auth->audiences = {"web", "api"};
             }),
        kAllowed, "foo/j", kAllowMatched),
      R("auth_audiences_mismatch", {Allow("foo/j", {When("request.auth.audiences", {"c"})})},
        HttpJwt(Obj({{"aud", List({Str("a"), Str("b")})}})), kDenied, "", kNoAllow),
      R("auth_presenter", {Allow("foo/j", {When("request.auth.presenter", {"client-*"})})},
        HttpJwt(Obj({{"azp", Str("client-7")}})), kAllowed, "foo/j", kAllowMatched),
      R("auth_presenter_absent", {Allow("foo/j", {When("request.auth.presenter", {"*"})})},
        HttpJwt(Obj({})), kDenied, "", kNoAllow),
      R("claim_string", {Allow("foo/j", {When("request.auth.claims[iss]", {"*@foo.com"})})},
        HttpJwt(Obj({{"iss", Str("bob@foo.com")}})), kAllowed, "foo/j", kAllowMatched),
      R("claim_list_any_element", {Allow("foo/j", {When("request.auth.claims[groups]", {"dev"})})},
        HttpJwt(Obj({{"groups", List({Str("admins"), Str("dev")})}})), kAllowed, "foo/j",
        kAllowMatched),
      R("claim_list_prefix", {Allow("foo/j", {When("request.auth.claims[groups]", {"adm*"})})},
        HttpJwt(Obj({{"groups", List({Str("dev"), Str("admins")})}})), kAllowed, "foo/j",
        kAllowMatched),
      R("claim_nested_object",
        {Allow("foo/j", {When("request.auth.claims[realm][role]", {"admin"})})},
        HttpJwt(Obj({{"realm", Obj({{"role", Str("admin")}})}})), kAllowed, "foo/j", kAllowMatched),
      R("claim_nested_list", {Allow("foo/j", {When("request.auth.claims[a][b][c]", {"x"})})},
        HttpJwt(Obj({{"a", Obj({{"b", Obj({{"c", List({Str("y"), Str("x")})}})}})}})), kAllowed,
        "foo/j", kAllowMatched),
      R("claim_through_list_not_walked",
        {Allow("foo/j", {When("request.auth.claims[realm][role]", {"admin"})})},
        HttpJwt(Obj({{"realm", List({Obj({{"role", Str("admin")}})})}})), kDenied, "", kNoAllow),
      R("claim_bool_never_matches",
        {Allow("foo/j", {When("request.auth.claims[admin]", {"true"})})},
        HttpJwt(Obj({{"admin", ClaimValue::Bool(true)}})), kDenied, "", kNoAllow),
      R("claim_number_never_matches", {Allow("foo/j", {When("request.auth.claims[level]", {"3"})})},
        HttpJwt(Obj({{"level", ClaimValue::Number(3)}})), kDenied, "", kNoAllow),
      R("claim_absent", {Allow("foo/j", {When("request.auth.claims[groups]", {"*"})})},
        HttpJwt(Obj({})), kDenied, "", kNoAllow),
      R("claim_without_jwt", {Allow("foo/j", {When("request.auth.claims[groups]", {"*"})})}, Http(),
        kDenied, "", kNoAllow),
      R("claim_not_values_without_jwt",
        {Deny("foo/j", {When("request.auth.claims[groups]", {}, {"admins"})})}, Http(), kDenied,
        "foo/j", kDenyMatched),
      R("sni_condition", {Allow("foo/s", {When("connection.sni", {"*.foo.svc.cluster.local"})})},
        With(Http(), [](Request& r) { r.sni = "outbound_.8080_._.httpbin.foo.svc.cluster.local"; }),
        kAllowed, "foo/s", kAllowMatched),
      R("sni_absent", {Allow("foo/s", {When("connection.sni", {"*"})})}, Http(), kDenied, "",
        kNoAllow),
      R("remote_ip_condition", {Allow("foo/r", {When("remote.ip", {"203.0.113.9"})})},
        With(Http(), [](Request& r) { r.remote_ip = Ip("203.0.113.9"); }), kAllowed, "foo/r",
        kAllowMatched),
      R("l7_source_principal_condition",
        {Allow("foo/r", {When("source.principal", {"cluster.local/ns/bar/*"})})}, Http(), kAllowed,
        "foo/r", kAllowMatched),

      // -- Waypoint attachment (targetRefs only) -------------------------------------------------
      R("waypoint_gateway_target",
        {Targets(Deny("foo/deny", {kAnything}), {GatewayTarget("waypoint")})}, Http(), kDenied,
        "foo/deny", kDenyMatched)
          .Target(AtWaypoint()),
      R("waypoint_other_gateway",
        {Targets(Deny("foo/deny", {kAnything}), {GatewayTarget("other-waypoint")})}, Http(),
        kAllowed, "", kDefaultAllow)
          .Target(AtWaypoint()),
      R("waypoint_gateway_in_other_namespace",
        {Targets(Deny("bar/deny", {kAnything}), {GatewayTarget("waypoint")})}, Http(), kAllowed, "",
        kDefaultAllow)
          .Target(AtWaypoint()),
      R("waypoint_ignores_selector_policies",
        {Selector(Deny("foo/deny", {kAnything}), {{"app", "httpbin"}})}, Http(), kAllowed, "",
        kDefaultAllow)
          .Target(AtWaypoint()),
      R("waypoint_ignores_namespace_policies", {Deny("foo/deny", {kAnything})}, Http(), kAllowed,
        "", kDefaultAllow)
          .Target(AtWaypoint()),
      R("waypoint_service_target",
        {Targets(Deny("foo/deny", {kAnything}), {ServiceTarget("httpbin")})}, Http(), kDenied,
        "foo/deny", kDenyMatched)
          .Target(AtWaypoint()),
      R("waypoint_other_service", {Targets(Deny("foo/deny", {kAnything}), {ServiceTarget("web")})},
        Http(), kAllowed, "", kDefaultAllow)
          .Target(AtWaypoint()),
      R("waypoint_service_entry_target",
        {Targets(Deny("foo/deny", {kAnything}),
                 {TargetRef{"networking.istio.io", "ServiceEntry", "httpbin"}})},
        Http(), kDenied, "foo/deny", kDenyMatched)
          .Target(AtWaypoint()),
      R("waypoint_gateway_class_from_root",
        {Targets(Deny("istio-system/deny", {kAnything}),
                 {TargetRef{"gateway.networking.k8s.io", "GatewayClass", "istio-waypoint"}})},
        Http(), kDenied, "istio-system/deny", kDenyMatched)
          .Target(AtWaypoint()),
      R("waypoint_gateway_class_outside_root_ignored",
        {Targets(Deny("foo/deny", {kAnything}),
                 {TargetRef{"gateway.networking.k8s.io", "GatewayClass", "istio-waypoint"}})},
        Http(), kAllowed, "", kDefaultAllow)
          .Target(AtWaypoint()),
      R("waypoint_allow_on_service_needs_match",
        {Targets(Allow("foo/get-only", {To({.methods = {"GET"}})}), {ServiceTarget("httpbin")})},
        Http("POST"), kDenied, "", kNoAllow)
          .Target(AtWaypoint()),
      R("waypoint_audit_does_not_decide",
        {Targets(Audit("foo/audit", {kAnything}), {GatewayTarget("waypoint")})}, Http(), kAllowed,
        "", kDefaultAllow)
          .Target(AtWaypoint()),
      R("waypoint_custom_matched_needs_provider",
        {Targets(Custom("foo/ext", "opa", {To({.paths = {"/admin*"}})}),
                 {GatewayTarget("waypoint")})},
        Http("GET", "/admin/x"), kDenied, "foo/ext", kExtAuthz)
          .Target(AtWaypoint()),
      R("waypoint_custom_not_matched",
        {Targets(Custom("foo/ext", "opa", {To({.paths = {"/admin*"}})}),
                 {GatewayTarget("waypoint")})},
        Http("GET", "/public"), kAllowed, "", kDefaultAllow)
          .Target(AtWaypoint()),
      R("waypoint_custom_before_deny",
        {Targets(Custom("foo/ext", "opa", {kAnything}), {GatewayTarget("waypoint")}),
         Targets(Deny("foo/deny", {kAnything}), {GatewayTarget("waypoint")})},
        Http(), kDenied, "foo/ext", kExtAuthz)
          .Target(AtWaypoint()),
      R("sidecar_style_l7_custom", {Custom("foo/ext", "opa", {kAnything})}, Http(), kDenied,
        "foo/ext", kExtAuthz),

      // -- Dry run (istio.io/dry-run) ------------------------------------------------------------
      R("dry_run_deny_not_enforced", {DryRun(Deny("foo/deny", {kAnything}))}, Tcp(), kAllowed, "",
        kDefaultAllow),
      R("dry_run_allow_does_not_turn_on_deny_by_default",
        {DryRun(Allow("foo/only-x", {From({.namespaces = {"x"}})}))}, Tcp(), kAllowed, "",
        kDefaultAllow),
      R("dry_run_allow_next_to_enforced_allow",
        {DryRun(Allow("foo/a-dry", {kAnything})), Allow("foo/b", {From({.namespaces = {"x"}})})},
        Tcp(), kDenied, "", kNoAllow),
  };
  return rows;
}

class EngineTableTest : public ::testing::TestWithParam<Row> {};

std::unique_ptr<Engine> MakeEngine(const std::vector<Policy>& policies,
                                   PathNormalization normalization = PathNormalization::kBase) {
  std::vector<CompiledPolicy> compiled;
  for (const Policy& p : policies) {
    absl::StatusOr<CompiledPolicy> c = Compile(p);
    EXPECT_TRUE(c.ok()) << p.Key() << ": " << c.status();
    if (c.ok()) compiled.push_back(*c);
  }
  EngineOptions options;
  options.root_namespace = "istio-system";
  options.path_normalization = normalization;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(compiled, options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

TEST_P(EngineTableTest, Decides) {
  const Row& row = GetParam();
  std::unique_ptr<Engine> engine = MakeEngine(row.policies, row.normalization);
  ASSERT_NE(engine, nullptr);
  Decision d = engine->Evaluate(row.target, row.request);
  EXPECT_EQ(d.allowed, row.allowed) << d.explanation;
  EXPECT_EQ(d.reason, row.reason) << d.explanation;
  EXPECT_EQ(d.policy, row.policy) << d.explanation;
  if (!row.policy.empty()) {
    EXPECT_EQ(d.rule_index, row.rule) << d.explanation;
  }
  EXPECT_FALSE(d.explanation.empty());

  // Explain reaches the same decision, with one trace entry per applicable policy.
  Decision e = engine->Explain(row.target, row.request);
  EXPECT_EQ(e.allowed, d.allowed);
  EXPECT_EQ(e.explanation, d.explanation);
  if (row.reason != kBadRequest) {
    EXPECT_EQ(e.trace.size(), engine->ApplicablePolicies(row.target, row.request.layer).size());
  }
}

INSTANTIATE_TEST_SUITE_P(Semantics, EngineTableTest, ::testing::ValuesIn(Rows()),
                         [](const ::testing::TestParamInfo<Row>& info) { return info.param.name; });

// ---- Explanations ----------------------------------------------------------------------------

TEST(EngineExplanationTest, DenyNamesPolicyRuleAndField) {
  auto engine = MakeEngine({Deny("foo/deny-bar", {From({.namespaces = {"bar"}})})});
  Decision d = engine->Evaluate(Httpbin(), Tcp());
  EXPECT_EQ(d.explanation,
            "denied by DENY policy foo/deny-bar rule 0: source.namespace \"bar\" matched "
            "namespaces [\"bar\"]");
}

TEST(EngineExplanationTest, NoAllowMatchedCountsPolicies) {
  auto engine = MakeEngine({Allow("foo/a", {From({.namespaces = {"x"}})}),
                            Allow("foo/b", {From({.namespaces = {"y"}})})});
  Decision d = engine->Evaluate(Httpbin(), Tcp());
  EXPECT_EQ(d.explanation, "denied: 2 ALLOW policies apply to this workload and none matched");
}

TEST(EngineExplanationTest, AllowListsEveryMatchedField) {
  auto engine =
      MakeEngine({Allow("foo/a", {Rule{.from = {{.principals = {"*"}, .not_namespaces = {"x"}}},
                                       .to = {{.ports = {"8080"}}},
                                       .when = {Cond("source.ip", {"198.18.0.0/16"})}}})});
  Decision d = engine->Evaluate(Httpbin(), Tcp());
  EXPECT_EQ(d.explanation,
            "allowed by ALLOW policy foo/a rule 0: source.principal "
            "\"cluster.local/ns/bar/sa/sleep\" matched principals [\"*\"], source.namespace "
            "\"bar\" matched none of notNamespaces [\"x\"], destination.port 8080 matched ports "
            "[\"8080\"], source.ip 198.18.0.5 matched values [\"198.18.0.0/16\"]");
}

TEST(EngineExplanationTest, PlaintextIsNamed) {
  auto engine = MakeEngine({Deny("foo/need-mtls", {From({.not_principals = {"*"}})})});
  Decision d = engine->Evaluate(Httpbin(), Plaintext());
  EXPECT_EQ(d.explanation,
            "denied by DENY policy foo/need-mtls rule 0: source.principal (none: plaintext) "
            "matched none of notPrincipals [\"*\"]");
}

TEST(EngineExplanationTest, L4NoAllowMentionsDroppedRules) {
  auto engine = MakeEngine({Allow("foo/get", {To({.methods = {"GET"}})})});
  Decision d = engine->Evaluate(Httpbin(), Tcp());
  EXPECT_EQ(d.explanation,
            "denied: 1 ALLOW policy applies to this workload and none matched (at L4, ALLOW rules "
            "that use HTTP attributes are ignored)");
}

TEST(EngineExplanationTest, L4DenyMentionsIgnoredHttpFields) {
  auto engine = MakeEngine({Deny("foo/post", {To({.ports = {"8080"}, .methods = {"POST"}})})});
  Decision d = engine->Evaluate(Httpbin(), Tcp());
  EXPECT_EQ(d.explanation,
            "denied by DENY policy foo/post rule 0: destination.port 8080 matched ports "
            "[\"8080\"] (at L4 its HTTP fields are ignored: to[0].methods)");
}

TEST(EngineExplanationTest, DefaultAllow) {
  auto engine = MakeEngine({});
  EXPECT_EQ(engine->Evaluate(Httpbin(), Tcp()).explanation,
            "allowed: no authorization policy applies to this workload");
}

TEST(EngineExplanationTest, TraceSaysWhyEachPolicyDidNotMatch) {
  auto engine = MakeEngine({Allow("foo/a", {From({.namespaces = {"x"}}), To({.methods = {"GET"}})}),
                            NoRules("foo/b", Action::kAllow)});
  Decision d = engine->Explain(Httpbin(), Tcp());
  ASSERT_THAT(d.trace, SizeIs(2));
  EXPECT_EQ(d.trace[0].policy, "foo/a");
  EXPECT_FALSE(d.trace[0].matched);
  EXPECT_THAT(d.trace[0].notes,
              ElementsAre("rule 0 no match: no from entry matched (from[0]: source.namespace "
                          "\"bar\" did not match namespaces [\"x\"])",
                          "rule 1 no match: it uses HTTP attributes (to[0].methods), so the node "
                          "tunnel (L4) ignores it"));
  EXPECT_THAT(d.trace[1].notes, ElementsAre("it has no rules, so it never matches"));
}

TEST(EngineExplanationTest, TraceForL4DenyWithHttpOnlyEntry) {
  auto engine = MakeEngine({Deny("foo/d", {To({.methods = {"POST"}})})});
  Decision d = engine->Explain(Httpbin(), Tcp());
  ASSERT_THAT(d.trace, SizeIs(1));
  EXPECT_THAT(d.trace[0].notes,
              ElementsAre("rule 0 no match: no to entry matched (to[0] uses only HTTP attributes "
                          "(methods), so it never matches at L4)"));
}

// ---- Audit, dry run, CUSTOM --------------------------------------------------------------------

TEST(EngineAuditTest, MatchedAuditPoliciesAreReported) {
  auto engine = MakeEngine(
      {Targets(Audit("foo/audit-admin", {To({.paths = {"/admin*"}})}), {GatewayTarget("waypoint")}),
       Targets(Audit("foo/audit-post", {To({.methods = {"POST"}})}), {GatewayTarget("waypoint")})});
  Decision d = engine->Evaluate(AtWaypoint(), Http("GET", "/admin/x"));
  EXPECT_TRUE(d.allowed);
  ASSERT_THAT(d.audits, SizeIs(1));
  EXPECT_EQ(d.audits[0].policy, "foo/audit-admin");
  EXPECT_EQ(d.audits[0].rule_index, 0);
}

TEST(EngineDryRunTest, ReportsWhatDryRunPoliciesWouldDo) {
  auto engine = MakeEngine({DryRun(Deny("foo/deny-bar", {From({.namespaces = {"bar"}})})),
                            DryRun(Allow("foo/allow-x", {From({.namespaces = {"x"}})}))});
  Decision d = engine->Evaluate(Httpbin(), Tcp());
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.reason, kDefaultAllow);
  ASSERT_THAT(d.dry_run, SizeIs(2));
  EXPECT_EQ(d.dry_run[0].policy, "foo/allow-x");
  EXPECT_FALSE(d.dry_run[0].matched);
  EXPECT_EQ(d.dry_run[1].policy, "foo/deny-bar");
  EXPECT_TRUE(d.dry_run[1].matched);
  EXPECT_EQ(d.dry_run[1].explanation,
            "DENY policy foo/deny-bar (dry run) rule 0 would deny: source.namespace \"bar\" "
            "matched namespaces [\"bar\"]");
  EXPECT_EQ(d.dry_run_allowed, false);
}

TEST(EngineDryRunTest, DryRunAllowWouldDenyOthers) {
  auto engine = MakeEngine({DryRun(Allow("foo/allow-x", {From({.namespaces = {"x"}})}))});
  Decision d = engine->Evaluate(Httpbin(), Tcp());
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.dry_run_allowed, false);
  Decision ok = engine->Evaluate(Httpbin(), Tcp("spiffe://cluster.local/ns/x/sa/y"));
  EXPECT_EQ(ok.dry_run_allowed, true);
}

TEST(EngineDryRunTest, NoDryRunNoReport) {
  auto engine = MakeEngine({Deny("foo/d", {From({.namespaces = {"x"}})})});
  Decision d = engine->Evaluate(Httpbin(), Tcp());
  EXPECT_THAT(d.dry_run, IsEmpty());
  EXPECT_FALSE(d.dry_run_allowed.has_value());
}

// What the waypoint does with a provider's answer: ResolveExtAuthz on the pending decision.
Decision EvaluateThenResolve(const Engine& engine, const Request& request,
                             const absl::StatusOr<bool>& provider_allowed,
                             std::vector<std::string>* asked) {
  Decision d = engine.Evaluate(AtWaypoint(), request);
  if (d.reason != kExtAuthz) return d;
  asked->push_back(d.ext_authz->provider);
  return ResolveExtAuthz(std::move(d), provider_allowed);
}

std::unique_ptr<Engine> CustomThenAllowGet() {
  return MakeEngine(
      {Targets(Custom("foo/ext", "opa", {To({.paths = {"/admin*"}})}), {GatewayTarget("waypoint")}),
       Targets(Allow("foo/get", {To({.methods = {"GET"}})}), {GatewayTarget("waypoint")})});
}

TEST(EngineCustomTest, PendingDecisionCarriesProviderAndFollowUp) {
  auto engine = CustomThenAllowGet();
  Decision d = engine->Evaluate(AtWaypoint(), Http("POST", "/admin"));
  EXPECT_EQ(d.reason, kExtAuthz);
  EXPECT_FALSE(d.allowed);
  ASSERT_TRUE(d.ext_authz.has_value());
  EXPECT_EQ(d.ext_authz->provider, "opa");
  EXPECT_EQ(d.ext_authz->policy, "foo/ext");
  EXPECT_FALSE(d.ext_authz->if_allowed.allowed);
  EXPECT_EQ(d.ext_authz->if_allowed.reason, kNoAllow);
  EXPECT_THAT(d.explanation, HasSubstr("ext_authz provider \"opa\" decides"));
}

TEST(EngineCustomTest, ProviderAllowsThenAllowPolicyDecides) {
  auto engine = CustomThenAllowGet();
  std::vector<std::string> asked;
  Decision d = EvaluateThenResolve(*engine, Http("GET", "/admin"), true, &asked);
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.reason, kAllowMatched);
  EXPECT_EQ(d.policy, "foo/get");
  EXPECT_THAT(asked, ElementsAre("opa"));
}

TEST(EngineCustomTest, ProviderDenies) {
  auto engine = CustomThenAllowGet();
  std::vector<std::string> asked;
  Decision d = EvaluateThenResolve(*engine, Http("GET", "/admin"), false, &asked);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.reason, DecisionReason::kExtAuthzDenied);
  EXPECT_EQ(d.policy, "foo/ext");
}

TEST(EngineCustomTest, ProviderErrorFailsClosed) {
  auto engine = CustomThenAllowGet();
  std::vector<std::string> asked;
  Decision d = EvaluateThenResolve(*engine, Http("GET", "/admin"),
                                   absl::UnavailableError("connection refused"), &asked);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.reason, DecisionReason::kExtAuthzDenied);
  EXPECT_THAT(d.explanation, HasSubstr("connection refused"));
}

TEST(EngineCustomTest, ProviderNotAskedWhenCustomDoesNotMatch) {
  auto engine = CustomThenAllowGet();
  std::vector<std::string> asked;
  Decision d = EvaluateThenResolve(*engine, Http("GET", "/public"), false, &asked);
  EXPECT_TRUE(d.allowed);
  EXPECT_THAT(asked, IsEmpty());
}

// ---- Load warnings -----------------------------------------------------------------------------

TEST(EngineWarningsTest, OncePerPolicyForWhatTheTunnelCannotEnforce) {
  auto engine = MakeEngine({
      Allow("foo/get", {To({.methods = {"GET"}}), From({.namespaces = {"bar"}})}),
      Deny("foo/post", {To({.ports = {"80"}, .methods = {"POST"}}),
                        Rule{.when = {Cond("request.headers[x-a]", {"1"})}}}),
      Custom("foo/ext", "opa", {kAnything}),
      Audit("foo/audit", {kAnything}),
      Targets(Allow("foo/waypoint-only", {To({.methods = {"GET"}})}), {GatewayTarget("waypoint")}),
      Allow("foo/l4-only", {From({.namespaces = {"bar"}})}),
  });
  EXPECT_THAT(
      engine->LoadWarnings(),
      ElementsAre(
          "foo/audit: AUDIT policies are not enforced by the node tunnel (L4); target a waypoint "
          "with targetRefs to enforce it at L7",
          "foo/ext: CUSTOM policies are not enforced by the node tunnel (L4); target a waypoint "
          "with targetRefs to enforce it at L7",
          "foo/get: the node tunnel (L4) cannot see HTTP attributes; these ALLOW rules are dropped "
          "there and never allow a connection: rules[0] (to[0].methods)",
          "foo/post: the node tunnel (L4) cannot see HTTP attributes; these DENY rules are "
          "enforced there with only their L4 fields, and a from/to/when entry made only of HTTP "
          "attributes never matches: rules[0] (to[0].methods), rules[1] "
          "(when[0].request.headers[x-a])"));
}

TEST(EngineWarningsTest, GatewayClassOutsideRootNamespace) {
  auto engine = MakeEngine(
      {Targets(Deny("foo/d", {kAnything}),
               {TargetRef{"gateway.networking.k8s.io", "GatewayClass", "istio-waypoint"}})});
  EXPECT_THAT(engine->LoadWarnings(),
              ElementsAre(HasSubstr("foo/d: a GatewayClass targetRef only applies from the root "
                                    "namespace istio-system")));
}

// ---- Engine construction
// -------------------------------------------------------------------------

TEST(EngineCreateTest, RejectsDuplicatePolicies) {
  auto a = Compile(Allow("foo/a", {kAnything}));
  ASSERT_TRUE(a.ok());
  auto engine = Engine::Create({*a, *a});
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(engine.status().message(), HasSubstr("foo/a is defined twice"));
}

TEST(EngineCreateTest, ApplicablePoliciesInNameOrder) {
  auto engine = MakeEngine({Deny("foo/b", {kAnything}), Deny("istio-system/a", {kAnything}),
                            Deny("foo/a", {kAnything}), Deny("bar/a", {kAnything})});
  std::vector<std::string> keys;
  for (const CompiledPolicy* p : engine->ApplicablePolicies(Httpbin(), Layer::kL4)) {
    keys.push_back(p->Key());
  }
  EXPECT_THAT(keys, ElementsAre("foo/a", "foo/b", "istio-system/a"));
}

// ---- Compile errors
// ------------------------------------------------------------------------------

struct CompileRow {
  std::string name;
  Policy policy;
  std::string error;  // exact message
};

void PrintTo(const CompileRow& row, std::ostream* os) { *os << row.name; }

CompileRow C(std::string name, Policy policy, std::string error) {
  return {std::move(name), std::move(policy), std::move(error)};
}

std::vector<CompileRow> CompileRows() {
  Policy custom_without_provider = Custom("foo/c", "", {kAnything});
  Policy allow_with_provider = Allow("foo/a", {kAnything});
  allow_with_provider.provider = "opa";
  Policy unnamed = Allow("foo/x", {kAnything});
  unnamed.name.clear();
  return {
      C("bad_cidr",
        Allow("foo/a", {Rule{.from = {{.namespaces = {"bar"}},
                                      {.ip_blocks = {"198.18.0.0/16", "::1", "1.2.3.4/33"}}}}}),
        "rules[0].from[1].source.ipBlocks[2]: '1.2.3.4/33' is not a valid CIDR"),
      C("bad_not_ip_block", Allow("foo/a", {From({.not_ip_blocks = {"nope"}})}),
        "rules[0].from[0].source.notIpBlocks[0]: 'nope' is not a valid CIDR"),
      C("bad_remote_ip_block", Deny("foo/a", {kAnything, From({.remote_ip_blocks = {"1.2.3/8"}})}),
        "rules[1].from[0].source.remoteIpBlocks[0]: '1.2.3/8' is not a valid CIDR"),
      C("bad_port", Allow("foo/a", {To({.ports = {"http"}})}),
        "rules[0].to[0].operation.ports[0]: 'http' is not a valid port (0-65535)"),
      C("port_too_large", Allow("foo/a", {To({.ports = {"80", "65536"}})}),
        "rules[0].to[0].operation.ports[1]: '65536' is not a valid port (0-65535)"),
      C("negative_not_port", Allow("foo/a", {To({.not_ports = {"-1"}})}),
        "rules[0].to[0].operation.notPorts[0]: '-1' is not a valid port (0-65535)"),
      C("empty_source", Allow("foo/a", {From({})}), "rules[0].from[0].source: must not be empty"),
      C("empty_operation", Allow("foo/a", {Rule{.from = {{.namespaces = {"x"}}}, .to = {{}}}}),
        "rules[0].to[0].operation: must not be empty"),
      C("empty_value", Allow("foo/a", {From({.principals = {"a", ""}})}),
        "rules[0].from[0].source.principals[1]: empty value is not allowed"),
      C("empty_path_value", Allow("foo/a", {To({.paths = {""}})}),
        "rules[0].to[0].operation.paths[0]: empty value is not allowed"),
      C("unknown_condition", Allow("foo/a", {When("request.foo", {"x"})}),
        "rules[0].when[0].key: unknown attribute 'request.foo'; see "
        "https://istio.io/latest/docs/reference/config/security/conditions/"),
      C("empty_condition_key", Allow("foo/a", {When("", {"x"})}),
        "rules[0].when[0].key: must not be empty"),
      C("condition_without_values", Allow("foo/a", {When("source.ip", {})}),
        "rules[0].when[0]: at least one of values or notValues must be set for key source.ip"),
      C("condition_bad_ip", Allow("foo/a", {When("destination.ip", {"198.18.0.1", "nope"})}),
        "rules[0].when[0].values[1]: 'nope' is not a valid IP address or CIDR"),
      C("condition_bad_port", Allow("foo/a", {When("destination.port", {}, {"99999"})}),
        "rules[0].when[0].notValues[0]: '99999' is not a valid port (0-65535)"),
      C("condition_bad_remote_ip", Allow("foo/a", {When("remote.ip", {"x"})}),
        "rules[0].when[0].values[0]: 'x' is not a valid IP address or CIDR"),
      C("header_without_name", Allow("foo/a", {When("request.headers", {"x"})}),
        "rules[0].when[0].key: 'request.headers' is missing the [name] part"),
      C("header_empty_name", Allow("foo/a", {When("request.headers[]", {"x"})}),
        "rules[0].when[0].key: 'request.headers[]' is malformed: expected [name] after the "
        "attribute, e.g. request.headers[x-token]"),
      C("header_two_names", Allow("foo/a", {When("request.headers[a][b]", {"x"})}),
        "rules[0].when[0].key: 'request.headers[a][b]' names more than one header"),
      C("claim_unclosed", Allow("foo/a", {When("request.auth.claims[a", {"x"})}),
        "rules[0].when[0].key: 'request.auth.claims[a' is malformed: expected [name] after the "
        "attribute, e.g. request.headers[x-token]"),
      C("experimental_key", Allow("foo/a", {When("experimental.envoy.filters.a[b]", {"x"})}),
        "rules[0].when[0].key: 'experimental.envoy.filters.a[b]' (Envoy filter metadata) is not "
        "supported"),
      C("custom_without_provider", custom_without_provider,
        "provider.name: must be set when action is CUSTOM"),
      C("provider_with_allow", allow_with_provider,
        "provider: only allowed with action CUSTOM, not ALLOW"),
      C("selector_and_target_refs",
        Targets(Selector(Allow("foo/a", {kAnything}), {{"app", "x"}}), {GatewayTarget("w")}),
        "spec: selector and targetRefs cannot both be set"),
      C("selector_wildcard", Selector(Allow("foo/a", {kAnything}), {{"app", "web*"}}),
        "selector.matchLabels[app]: wildcards are not supported in selectors"),
      C("unsupported_target_kind",
        Targets(Allow("foo/a", {kAnything}), {TargetRef{"apps", "Deployment", "web"}}),
        "targetRefs[0]: unsupported target 'apps/Deployment'; supported: "
        "gateway.networking.k8s.io Gateway and GatewayClass, core Service, networking.istio.io "
        "ServiceEntry"),
      C("target_without_name", Targets(Allow("foo/a", {kAnything}), {ServiceTarget("")}),
        "targetRefs[0].name: must not be empty"),
      C("other_gateway_class",
        Targets(Allow("istio-system/a", {kAnything}),
                {TargetRef{"gateway.networking.k8s.io", "GatewayClass", "istio"}}),
        "targetRefs[0].name: 'istio': only GatewayClass 'istio-waypoint' can be targeted"),
      C("template_with_extra_characters", Allow("foo/a", {To({.paths = {"/foo/{*}.txt"}})}),
        "rules[0].to[0].operation.paths[0]: '/foo/{*}.txt' is not a valid path template: '*', '{' "
        "and '}' may only appear as a whole path segment {*} or {**}"),
      C("template_text_glob_not_last", Allow("foo/a", {To({.paths = {"/{**}/foo/{*}"}})}),
        "rules[0].to[0].operation.paths[0]: '/{**}/foo/{*}' is not a valid path template: {**} "
        "must be the last operator"),
      C("template_with_bare_star", Allow("foo/a", {To({.not_paths = {"/*/baz/{*}"}})}),
        "rules[0].to[0].operation.notPaths[0]: '/*/baz/{*}' is not a valid path template: '*', "
        "'{' and '}' may only appear as a whole path segment {*} or {**}"),
      C("service_account_wildcard", Allow("foo/a", {From({.service_accounts = {"bar/*"}})}),
        "rules[0].from[0].source.serviceAccounts[0]: 'bar/*': wildcards are not allowed in "
        "serviceAccounts"),
      C("service_account_bad_format", Allow("foo/a", {From({.not_service_accounts = {"a/b/c"}})}),
        "rules[0].from[0].source.notServiceAccounts[0]: 'a/b/c' is not "
        "<namespace>/<serviceaccount> or <serviceaccount>"),
      C("service_accounts_with_principals",
        Allow("foo/a", {From({.principals = {"*"}, .service_accounts = {"bar/sleep"}})}),
        "rules[0].from[0].source: serviceAccounts/notServiceAccounts cannot be combined with "
        "principals or namespaces"),
      C("missing_name", unnamed, "metadata.name: must not be empty"),
  };
}

class CompileErrorTest : public ::testing::TestWithParam<CompileRow> {};

TEST_P(CompileErrorTest, RejectsWithFieldPath) {
  const CompileRow& row = GetParam();
  absl::StatusOr<CompiledPolicy> c = Compile(row.policy);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.status().message(), row.error);
}

INSTANTIATE_TEST_SUITE_P(Validation, CompileErrorTest, ::testing::ValuesIn(CompileRows()),
                         [](const ::testing::TestParamInfo<CompileRow>& info) {
                           return info.param.name;
                         });

TEST(CompileTest, KeepsRulesAbsentAndEmptyRuleApart) {
  auto absent = Compile(NoRules("foo/a", Action::kAllow));
  auto empty_rule = Compile(Allow("foo/b", {kAnything}));
  ASSERT_TRUE(absent.ok());
  ASSERT_TRUE(empty_rule.ok());
  EXPECT_FALSE(absent->policy().rules.has_value());
  ASSERT_TRUE(empty_rule->policy().rules.has_value());
  EXPECT_THAT(*empty_rule->policy().rules, SizeIs(1));
}

TEST(CompileTest, AcceptsEveryDocumentedConditionKey) {
  for (const char* key :
       {"request.headers[User-Agent]", "source.ip", "remote.ip", "source.namespace",
        "source.principal", "request.auth.principal", "request.auth.audiences",
        "request.auth.presenter", "request.auth.claims[iss]", "request.auth.claims[a][b][c]",
        "destination.ip", "destination.port", "connection.sni"}) {
    std::string value = absl::StrContains(key, "ip")     ? "198.18.0.0/16"
                        : absl::StrContains(key, "port") ? "443"
                                                         : "x";
    auto c = Compile(Allow("foo/a", {When(key, {value})}));
    EXPECT_TRUE(c.ok()) << key << ": " << c.status();
  }
}

// ---- Path normalization
// --------------------------------------------------------------------------

struct PathRow {
  std::string raw;
  PathNormalization mode;
  std::string want;
};

void PrintTo(const PathRow& row, std::ostream* os) { *os << row.raw; }

class NormalizePathTest : public ::testing::TestWithParam<PathRow> {};

TEST_P(NormalizePathTest, Normalizes) {
  const PathRow& row = GetParam();
  absl::StatusOr<std::string> got = NormalizePath(row.raw, row.mode);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, row.want);
}

INSTANTIATE_TEST_SUITE_P(
    Istio, NormalizePathTest,
    ::testing::Values(
        PathRow{"/some%2fdata/%61%62%63", PathNormalization::kBase, "/some%2fdata/abc"},
        PathRow{"/some%2fdata/%61%62%63", PathNormalization::kDecodeAndMergeSlashes,
                "/some/data/abc"},
        PathRow{"/some\\data", PathNormalization::kBase, "/some/data"},
        PathRow{"/some//data///abc", PathNormalization::kBase, "/some//data///abc"},
        PathRow{"/some//data///abc", PathNormalization::kMergeSlashes, "/some/data/abc"},
        PathRow{"/public/./data/abc/../xyz", PathNormalization::kBase, "/public/data/xyz"},
        PathRow{"/a/b/../../../c", PathNormalization::kBase, "/c"},
        PathRow{"/foo?v=1", PathNormalization::kBase, "/foo"},
        PathRow{"/foo#frag", PathNormalization::kBase, "/foo"},
        PathRow{"/%2D%5f%7e%30", PathNormalization::kBase, "/-_~0"},
        PathRow{"/%25%20x", PathNormalization::kBase, "/%25%20x"},
        PathRow{"/a/../b?x", PathNormalization::kNone, "/a/../b"},
        PathRow{"/a/%5cb", PathNormalization::kDecodeAndMergeSlashes, "/a/b"}));

TEST(NormalizePathTest, RejectsNul) {
  EXPECT_FALSE(NormalizePath("/a%00b", PathNormalization::kBase).ok());
}

// ---- Request helpers ---------------------------------------------------------------------------

TEST(RequestTest, DerivesNamespaceAndServiceAccountFromSpiffeId) {
  Request r = Tcp();
  EXPECT_EQ(r.SourceNamespace(), "bar");
  EXPECT_EQ(r.SourceServiceAccount(), "sleep");
  EXPECT_EQ(Plaintext().SourceNamespace(), "");
  EXPECT_FALSE(ParseSpiffeId("spiffe://td/ns/a/sa").has_value());
  EXPECT_FALSE(ParseSpiffeId("https://td/ns/a/sa/b").has_value());
}

}  // namespace
}  // namespace ambit::authz

namespace ambit::authz {
namespace {

// A CUSTOM policy whose provider extensionProviders does not define used to be skipped, which
// let through what it was written to send to an authorizer. istiod turns its rules into DENY
// rules; so does the engine, at L4 (the rule's L4 part) and at L7.
TEST(EngineCustomTest, UndefinedProviderDeniesWhatTheRulesMatch) {
  Policy selector = Custom("foo/ext", "missing", {To({.ports = {"8080"}, .paths = {"/admin*"}})});
  selector.provider_undefined = true;
  Policy at_waypoint = Targets(Custom("foo/ext-wp", "missing", {To({.paths = {"/admin*"}})}),
                               {GatewayTarget("waypoint")});
  at_waypoint.provider_undefined = true;
  auto engine = MakeEngine({selector, at_waypoint});

  Decision l7 = engine->Evaluate(Httpbin(), Http("GET", "/admin/users"));
  EXPECT_FALSE(l7.allowed);
  EXPECT_EQ(l7.reason, DecisionReason::kDenyMatched);
  EXPECT_EQ(l7.policy, "foo/ext");
  EXPECT_FALSE(l7.ext_authz.has_value());
  EXPECT_THAT(l7.explanation, HasSubstr("ext_authz provider \"missing\" is not defined"));
  EXPECT_TRUE(engine->Evaluate(Httpbin(), Http("GET", "/public")).allowed);

  // The node tunnel enforces the L4 part (the port): denied, not skipped.
  Decision l4 = engine->Evaluate(Httpbin(), Tcp(kSleep, 8080));
  EXPECT_FALSE(l4.allowed);
  EXPECT_EQ(l4.policy, "foo/ext");
  EXPECT_TRUE(engine->Evaluate(Httpbin(), Tcp(kSleep, 9090)).allowed);

  Decision wp = engine->Evaluate(AtWaypoint(), Http("POST", "/admin"));
  EXPECT_FALSE(wp.allowed);
  EXPECT_EQ(wp.reason, DecisionReason::kDenyMatched);
  EXPECT_EQ(wp.policy, "foo/ext-wp");
  EXPECT_THAT(
      engine->LoadWarnings(),
      ::testing::Contains(HasSubstr("foo/ext: ext_authz provider \"missing\" is not defined")));

  Policy allow = Allow("foo/a", {kAnything});
  allow.provider_undefined = true;
  EXPECT_FALSE(Compile(allow).ok());
}

TEST(HeaderMapTest, NamesAreCaseInsensitiveAndLowerCaseOnesAreNotCopied) {
  HeaderMap h;
  h.Add("X-Team", "a");
  h.Add("x-team", "b");
  ASSERT_NE(h.Find("x-team"), nullptr);
  EXPECT_EQ(*h.Find("x-team"), "a,b");
  ASSERT_NE(h.Find("X-TEAM"), nullptr);
  EXPECT_EQ(*h.Find("X-TEAM"), "a,b");
  EXPECT_EQ(h.Find("x-other"), nullptr);

  std::string storage;
  const std::string lower = "x-team";
  EXPECT_EQ(AsciiLowerView(lower, &storage).data(), lower.data());
  EXPECT_TRUE(storage.empty());
  EXPECT_EQ(AsciiLowerView("X-Team", &storage), "x-team");
  EXPECT_EQ(storage, "x-team");
}

}  // namespace
}  // namespace ambit::authz
