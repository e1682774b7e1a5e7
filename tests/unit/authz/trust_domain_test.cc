// Trust domains in AuthorizationPolicy: the trustDomains/notTrustDomains source fields and the
// source.trustDomain and source.serviceAccount conditions (istiod's srcTrustDomainGenerator and
// srcServiceAccountGenerator), their validation (istiod's CheckTrustDomainValues and
// CheckServiceAccount), and meshConfig trustDomainAliases (istiod's trustdomain.Bundle and
// MigrateTrustDomain). Table tests: (policies, bundle, request, expected decision).

#include "agent/authz/trust_domain.h"

#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_split.h"
#include "agent/authz/compile.h"
#include "agent/authz/engine.h"
#include "agent/authz/model.h"
#include "agent/authz/request.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::authz {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

using Strings = std::vector<std::string>;

Policy Pol(const std::string& key, Action action, std::vector<Rule> rules) {
  std::vector<std::string> parts = absl::StrSplit(key, '/');
  Policy p;
  p.namespace_name = parts[0];
  p.name = parts[1];
  p.action = action;
  p.rules = std::move(rules);
  return p;
}
Policy Allow(std::vector<Rule> rules) { return Pol("foo/allow", Action::kAllow, std::move(rules)); }
Policy Deny(std::vector<Rule> rules) { return Pol("foo/deny", Action::kDeny, std::move(rules)); }
Rule From(Source s) { return Rule{.from = {std::move(s)}}; }
Rule When(std::string key, Strings values, Strings not_values = {}) {
  return Rule{.when = {Condition{std::move(key), std::move(values), std::move(not_values)}}};
}

Request Conn(std::string principal, Layer layer = Layer::kL4) {
  Request r;
  r.layer = layer;
  r.source_principal = std::move(principal);
  r.source_ip = *IpAddress::Parse("198.18.0.5");
  r.destination_ip = *IpAddress::Parse("198.18.1.7");
  r.destination_port = 8080;
  if (layer == Layer::kL7) {
    r.method = "GET";
    r.path = "/";
    r.host = "httpbin";
  }
  return r;
}

Workload Httpbin() {
  Workload w;
  w.namespace_name = "foo";
  w.labels = {{"app", "httpbin"}};
  return w;
}

// ---- Matching ------------------------------------------------------------------------------

struct Row {
  std::string name;
  Policy policy;
  std::string principal;  // the peer's SPIFFE ID; "" is plaintext
  bool matches = false;   // whether the policy's rule matches the connection
  TrustDomainBundle bundle = {};
};

void PrintTo(const Row& row, std::ostream* os) { *os << row.name; }

Row M(std::string name, Policy policy, std::string principal, bool matches,
      TrustDomainBundle bundle = {}) {
  return {std::move(name), std::move(policy), std::move(principal), matches, std::move(bundle)};
}

Policy Tds(Strings values) { return Allow({From({.trust_domains = std::move(values)})}); }
Policy NotTds(Strings values) { return Allow({From({.not_trust_domains = std::move(values)})}); }

std::vector<Row> Rows() {
  const std::string local = "spiffe://cluster.local/ns/bar/sa/sleep";
  const std::string other = "spiffe://other.example/ns/bar/sa/sleep";
  const std::string old_td = "spiffe://old.example/ns/bar/sa/sleep";
  const TrustDomainBundle migrating = TrustDomainBundle::Of("new.example", {"old.example"});
  return {
      // trustDomains: exact, prefix, suffix and presence, within the trust-domain segment.
      M("exact_matches", Tds({"cluster.local"}), local, true),
      M("exact_other_domain", Tds({"cluster.local"}), other, false),
      M("exact_is_whole_segment", Tds({"cluster"}), local, false),
      M("exact_is_case_sensitive", Tds({"Cluster.local"}), local, false),
      M("one_of_several", Tds({"a.example", "other.example"}), other, true),
      M("prefix", Tds({"cluster*"}), local, true),
      M("prefix_no_match", Tds({"other*"}), local, false),
      M("prefix_may_be_whole", Tds({"cluster.local*"}), local, true),
      M("suffix", Tds({"*.local"}), local, true),
      M("suffix_may_be_whole", Tds({"*cluster.local"}), local, true),
      // "*sleep" would match the principal's end; a trust-domain wildcard must not.
      M("suffix_not_the_principal_end", Tds({"*sleep"}), local, false),
      M("suffix_no_match", Tds({"*.example"}), local, false),
      M("presence_any_peer", Tds({"*"}), other, true),
      M("presence_not_plaintext", Tds({"*"}), "", false),
      M("exact_not_plaintext", Tds({"cluster.local"}), "", false),
      M("not_spiffe_never_matches", Tds({"*"}), "https://cluster.local/ns/bar/sa/sleep", false),
      // A SPIFFE ID without a path has no segment end: only presence matches (istiod's
      // "spiffe://<td>/" prefix needs the '/').
      M("no_path_presence", Tds({"*"}), "spiffe://cluster.local", true),
      M("no_path_exact", Tds({"cluster.local"}), "spiffe://cluster.local", false),
      // Non-Istio paths still have a trust domain.
      M("other_path_shape", Tds({"cluster.local"}), "spiffe://cluster.local/workload/x", true),
      // notTrustDomains.
      M("not_exact_other", NotTds({"cluster.local"}), other, true),
      M("not_exact_same", NotTds({"cluster.local"}), local, false),
      M("not_prefix", NotTds({"bad*"}), "spiffe://bad.example/ns/a/sa/b", false),
      M("not_plaintext_matches", NotTds({"cluster.local"}), "", true),
      M("not_presence_plaintext", NotTds({"*"}), "", true),
      M("not_presence_peer", NotTds({"*"}), local, false),
      // istiod's trust-domains-in.yaml: two from entries, either may match.
      M("either_from_entry",
        Allow({Rule{.from = {{.trust_domains = {"cluster.local", "another.local"}},
                             {.not_trust_domains = {"bad*", "untrusted"}}}}}),
        "spiffe://bad.example/ns/a/sa/b", false),
      M("either_from_entry_second",
        Allow({Rule{.from = {{.trust_domains = {"cluster.local", "another.local"}},
                             {.not_trust_domains = {"bad*", "untrusted"}}}}}),
        other, true),
      // ANDed with the other fields of the source.
      M("and_namespaces",
        Allow({From({.namespaces = {"bar"}, .trust_domains = {"cluster.local"}})}), local, true),
      M("and_namespaces_other_td",
        Allow({From({.namespaces = {"bar"}, .trust_domains = {"cluster.local"}})}), other, false),
      M("and_service_accounts",
        Allow({From({.service_accounts = {"bar/sleep"}, .trust_domains = {"other.example"}})}),
        other, true),
      // source.trustDomain condition.
      M("cond_exact", Allow({When("source.trustDomain", {"other.example"})}), other, true),
      M("cond_suffix", Allow({When("source.trustDomain", {"*.example"})}), other, true),
      M("cond_not_values", Allow({When("source.trustDomain", {}, {"other.example"})}), local, true),
      M("cond_not_values_same", Allow({When("source.trustDomain", {}, {"other.example"})}), other,
        false),
      M("cond_plaintext", Allow({When("source.trustDomain", {"*"})}), "", false),
      // source.serviceAccount condition: "<ns>/<sa>" or "<sa>" in the policy's namespace.
      M("cond_sa_qualified", Allow({When("source.serviceAccount", {"bar/sleep"})}), local, true),
      M("cond_sa_other_ns", Allow({When("source.serviceAccount", {"baz/sleep"})}), local, false),
      M("cond_sa_policy_namespace", Allow({When("source.serviceAccount", {"sleep"})}),
        "spiffe://cluster.local/ns/foo/sa/sleep", true),
      M("cond_sa_short_is_policy_ns", Allow({When("source.serviceAccount", {"sleep"})}), local,
        false),
      M("cond_sa_any_trust_domain", Allow({When("source.serviceAccount", {"bar/sleep"})}), other,
        true),
      M("cond_sa_not_values", Allow({When("source.serviceAccount", {}, {"bar/sleep"})}), local,
        false),
      M("cond_sa_plaintext", Allow({When("source.serviceAccount", {}, {"bar/sleep"})}), "", true),
      // trustDomainAliases: principals written with the mesh's trust domain, an alias or
      // cluster.local match the identity in every trust domain of the bundle.
      M("alias_principal_new_matches_old",
        Allow({From({.principals = {"new.example/ns/bar/sa/sleep"}})}), old_td, true, migrating),
      M("alias_principal_old_matches_new",
        Allow({From({.principals = {"old.example/ns/bar/sa/sleep"}})}),
        "spiffe://new.example/ns/bar/sa/sleep", true, migrating),
      M("alias_cluster_local_is_local",
        Allow({From({.principals = {"cluster.local/ns/bar/sa/sleep"}})}), old_td, true, migrating),
      M("alias_other_path_no_match", Allow({From({.principals = {"new.example/ns/bar/sa/other"}})}),
        old_td, false, migrating),
      M("alias_foreign_domain_kept",
        Allow({From({.principals = {"other.example/ns/bar/sa/sleep"}})}), old_td, false, migrating),
      M("alias_not_in_bundle_no_match",
        Allow({From({.principals = {"new.example/ns/bar/sa/sleep"}})}), other, false, migrating),
      M("no_alias_no_match", Allow({From({.principals = {"new.example/ns/bar/sa/sleep"}})}), old_td,
        false, TrustDomainBundle::Of("new.example", {})),
      // cluster.local stands for the local trust domain even without aliases.
      M("cluster_local_means_local",
        Allow({From({.principals = {"cluster.local/ns/bar/sa/sleep"}})}),
        "spiffe://new.example/ns/bar/sa/sleep", true, TrustDomainBundle::Of("new.example", {})),
      M("cluster_local_replaced", Allow({From({.principals = {"cluster.local/ns/bar/sa/sleep"}})}),
        local, false, TrustDomainBundle::Of("new.example", {})),
      M("alias_not_principals", Allow({From({.not_principals = {"new.example/ns/bar/sa/sleep"}})}),
        old_td, false, migrating),
      M("alias_condition_principal",
        Allow({When("source.principal", {"new.example/ns/bar/sa/sleep"})}), old_td, true,
        migrating),
      M("alias_trust_domains", Tds({"new.example"}), old_td, true, migrating),
      M("alias_trust_domains_from_alias", Tds({"old.example"}),
        "spiffe://new.example/ns/bar/sa/sleep", true, migrating),
      M("alias_trust_domains_wildcard_not_expanded", Tds({"new*"}), old_td, false, migrating),
      M("alias_not_trust_domains", NotTds({"new.example"}), old_td, false, migrating),
      M("alias_condition_trust_domain", Allow({When("source.trustDomain", {"new.example"})}),
        old_td, true, migrating),
      M("alias_star_principal_untouched", Allow({From({.principals = {"*/ns/bar/sa/sleep"}})}),
        other, true, migrating),
  };
}

class TrustDomainMatchTest : public ::testing::TestWithParam<Row> {};

TEST_P(TrustDomainMatchTest, Matches) {
  const Row& row = GetParam();
  absl::StatusOr<CompiledPolicy> c = Compile(row.policy);
  ASSERT_TRUE(c.ok()) << c.status();
  for (Layer layer : {Layer::kL4, Layer::kL7}) {
    auto engine = Engine::Create({*c}, EngineOptions{.trust_domains = row.bundle});
    ASSERT_TRUE(engine.ok()) << engine.status();
    Decision d = (*engine)->Evaluate(Httpbin(), Conn(row.principal, layer));
    // An ALLOW policy: allowed exactly when its rule matched.
    EXPECT_EQ(d.allowed, row.matches) << LayerName(layer) << ": " << d.explanation;
    EXPECT_EQ(d.reason,
              row.matches ? DecisionReason::kAllowMatched : DecisionReason::kNoAllowMatched)
        << d.explanation;
    // The same as a DENY policy.
    Policy deny = row.policy;
    deny.action = Action::kDeny;
    deny.name = "deny";
    absl::StatusOr<CompiledPolicy> cd = Compile(deny);
    ASSERT_TRUE(cd.ok()) << cd.status();
    auto deny_engine = Engine::Create({*cd}, EngineOptions{.trust_domains = row.bundle});
    ASSERT_TRUE(deny_engine.ok());
    Decision dd = (*deny_engine)->Evaluate(Httpbin(), Conn(row.principal, layer));
    EXPECT_EQ(dd.allowed, !row.matches) << LayerName(layer) << ": " << dd.explanation;
    // Explain reaches the same decision.
    EXPECT_EQ((*engine)->Explain(Httpbin(), Conn(row.principal, layer)).allowed, d.allowed);
  }
}

INSTANTIATE_TEST_SUITE_P(Semantics, TrustDomainMatchTest, ::testing::ValuesIn(Rows()),
                         [](const ::testing::TestParamInfo<Row>& info) { return info.param.name; });

TEST(TrustDomainExplanationTest, NamesTheTrustDomainAndTheField) {
  auto c = Compile(Deny({From({.trust_domains = {"other.example"}})}));
  ASSERT_TRUE(c.ok());
  auto engine = Engine::Create({*c});
  ASSERT_TRUE(engine.ok());
  Decision d = (*engine)->Evaluate(Httpbin(), Conn("spiffe://other.example/ns/bar/sa/sleep"));
  EXPECT_FALSE(d.allowed);
  EXPECT_THAT(d.explanation, HasSubstr("source.trustDomain \"other.example\" matched "
                                       "trustDomains [\"other.example\"]"));
  Decision plain = (*engine)->Explain(Httpbin(), Conn(""));
  ASSERT_EQ(plain.trace.size(), 1u);
  ASSERT_FALSE(plain.trace[0].notes.empty());
  EXPECT_THAT(plain.trace[0].notes[0], HasSubstr("source.trustDomain (none: plaintext)"));
}

TEST(TrustDomainExplanationTest, MigratedPrincipalsAreShown) {
  auto c = Compile(Allow({From({.principals = {"new.example/ns/bar/sa/sleep"}})}));
  ASSERT_TRUE(c.ok());
  auto engine = Engine::Create(
      {*c}, EngineOptions{.trust_domains = TrustDomainBundle::Of("new.example", {"old.example"})});
  ASSERT_TRUE(engine.ok());
  Decision d = (*engine)->Evaluate(Httpbin(), Conn("spiffe://old.example/ns/bar/sa/sleep"));
  EXPECT_TRUE(d.allowed);
  EXPECT_THAT(d.explanation, HasSubstr("[\"new.example/ns/bar/sa/sleep\", "
                                       "\"old.example/ns/bar/sa/sleep\"]"));
}

// ---- Validation ------------------------------------------------------------------------------

struct ErrorRow {
  std::string name;
  Policy policy;
  std::string error;
};

void PrintTo(const ErrorRow& row, std::ostream* os) { *os << row.name; }

std::vector<ErrorRow> ErrorRows() {
  Strings seventeen;
  for (int i = 0; i < 17; ++i) seventeen.push_back("ns/sa" + std::to_string(i));
  return {
      {"two_wildcards", Tds({"*a*"}),
       "rules[0].from[0].source.trustDomains[0]: '*a*': at most one wildcard '*' is allowed"},
      {"middle_wildcard", NotTds({"ok", "a*b"}),
       "rules[0].from[0].source.notTrustDomains[1]: 'a*b': a wildcard '*' is only allowed at the "
       "start or end of a trust domain"},
      {"slash", Tds({"cluster.local/ns"}),
       "rules[0].from[0].source.trustDomains[0]: 'cluster.local/ns': a trust domain must not "
       "contain '/'"},
      {"empty", Tds({""}), "rules[0].from[0].source.trustDomains[0]: empty value is not allowed"},
      {"cond_middle_wildcard", Allow({When("source.trustDomain", {"a*b"})}),
       "rules[0].when[0].values[0]: 'a*b': a wildcard '*' is only allowed at the start or end of a "
       "trust domain"},
      {"cond_sa_wildcard", Allow({When("source.serviceAccount", {"bar/*"})}),
       "rules[0].when[0].values[0]: 'bar/*': wildcards are not allowed in serviceAccounts"},
      {"cond_sa_shape", Allow({When("source.serviceAccount", {}, {"a/b/c"})}),
       "rules[0].when[0].notValues[0]: 'a/b/c' is not <namespace>/<serviceaccount> or "
       "<serviceaccount>"},
      {"cond_sa_empty_ns", Allow({When("source.serviceAccount", {"/sa"})}),
       "rules[0].when[0].values[0]: '/sa' is not <namespace>/<serviceaccount> or "
       "<serviceaccount>"},
      {"cond_sa_too_many", Allow({When("source.serviceAccount", seventeen)}),
       "rules[0].when[0].values: has 17 values; istiod allows at most 16"},
      {"sa_too_long", Allow({From({.service_accounts = {std::string(321, 'a')}})}),
       "rules[0].from[0].source.serviceAccounts[0]: is longer than 320 characters (istiod's "
       "limit)"},
  };
}

class TrustDomainCompileErrorTest : public ::testing::TestWithParam<ErrorRow> {};

TEST_P(TrustDomainCompileErrorTest, RejectsWithFieldPath) {
  absl::StatusOr<CompiledPolicy> c = Compile(GetParam().policy);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.status().message(), GetParam().error);
}

INSTANTIATE_TEST_SUITE_P(Validation, TrustDomainCompileErrorTest, ::testing::ValuesIn(ErrorRows()),
                         [](const ::testing::TestParamInfo<ErrorRow>& info) {
                           return info.param.name;
                         });

TEST(TrustDomainCompileTest, TrustDomainsAloneMakeASource) {
  EXPECT_TRUE(Compile(Tds({"cluster.local"})).ok());
  EXPECT_TRUE(Compile(NotTds({"*"})).ok());
  // Both may be combined with serviceAccounts (only principals and namespaces may not).
  EXPECT_TRUE(
      Compile(Allow({From({.service_accounts = {"a"}, .trust_domains = {"cluster.local"}})})).ok());
}

// ---- The bundle (istiod's bundle_test.go) ---------------------------------------------------

struct BundleRow {
  std::string name;
  TrustDomainBundle bundle;
  Strings principals;
  Strings expect;
};

void PrintTo(const BundleRow& row, std::ostream* os) { *os << row.name; }

std::vector<BundleRow> BundleRows() {
  using B = TrustDomainBundle;
  return {
      {"no_aliases",
       B::Of("cluster.local", {}),
       {"cluster.local/ns/foo/sa/bar"},
       {"cluster.local/ns/foo/sa/bar"}},
      {"star", B::Of("cluster.local", {}), {"*"}, {"*"}},
      {"star_trust_domain", B::Of("cluster.local", {}), {"*/ns/foo/sa/bar"}, {"*/ns/foo/sa/bar"}},
      {"one_alias",
       B::Of("td2", {"td1"}),
       {"td1/ns/foo/sa/bar"},
       {"td2/ns/foo/sa/bar", "td1/ns/foo/sa/bar"}},
      {"one_alias_two_principals",
       B::Of("td1", {"cluster.local"}),
       {"cluster.local/ns/foo/sa/bar", "cluster.local/ns/yyy/sa/zzz"},
       {"td1/ns/foo/sa/bar", "cluster.local/ns/foo/sa/bar", "td1/ns/yyy/sa/zzz",
        "cluster.local/ns/yyy/sa/zzz"}},
      {"wildcards_as_is",
       B::Of("td1", {"cluster.local"}),
       {"*/ns/foo/sa/bar", "*sa/zzz", "*"},
       {"*/ns/foo/sa/bar", "*sa/zzz", "*"}},
      {"two_aliases",
       B::Of("td2", {"td1", "cluster.local"}),
       {"cluster.local/ns/foo/sa/bar", "td1/ns/yyy/sa/zzz"},
       {"td2/ns/foo/sa/bar", "td1/ns/foo/sa/bar", "cluster.local/ns/foo/sa/bar",
        "td2/ns/yyy/sa/zzz", "td1/ns/yyy/sa/zzz", "cluster.local/ns/yyy/sa/zzz"}},
      {"star_prefix_trust_domain",
       B::Of("td2", {"foo-td1", "cluster.local"}),
       {"*-td1/ns/foo/sa/bar"},
       {"td2/ns/foo/sa/bar", "*-td1/ns/foo/sa/bar", "cluster.local/ns/foo/sa/bar"}},
      {"no_match", B::Of("td1", {"td2"}), {"some-td/ns/foo/sa/bar"}, {"some-td/ns/foo/sa/bar"}},
      {"match_one_alias",
       B::Of("td1", {"td2", "some-td"}),
       {"some-td/ns/foo/sa/bar"},
       {"td1/ns/foo/sa/bar", "td2/ns/foo/sa/bar", "some-td/ns/foo/sa/bar"}},
      {"one_of_two_matches",
       B::Of("new-td", {"td2", "td3"}),
       {"td1/ns/some-ns/sa/some-sa", "td2/ns/foo/sa/bar"},
       {"td1/ns/some-ns/sa/some-sa", "new-td/ns/foo/sa/bar", "td2/ns/foo/sa/bar",
        "td3/ns/foo/sa/bar"}},
      {"empty_trust_domain",
       B::Of("new-td", {"td2", "td3"}),
       {"/ns/some-ns/sa/some-sa"},
       {"/ns/some-ns/sa/some-sa"}},
      {"no_duplicates_for_prefix",
       B::Of("new-td", {"old-td"}),
       {"*-td/ns/some-ns/sa/some-sa"},
       {"*-td/ns/some-ns/sa/some-sa"}},
      {"cluster_local_without_aliases",
       B::Of("new-td", {}),
       {"cluster.local/ns/a/sa/b"},
       {"new-td/ns/a/sa/b"}},
      {"other_shape_kept",
       B::Of("td1", {"td2"}),
       {"td1/ns/a/sa/b/extra", "td1"},
       {"td1/ns/a/sa/b/extra", "td1"}},
  };
}

class TrustDomainBundleTest : public ::testing::TestWithParam<BundleRow> {};

TEST_P(TrustDomainBundleTest, ExpandsPrincipals) {
  EXPECT_THAT(GetParam().bundle.ExpandPrincipals(GetParam().principals),
              ElementsAreArray(GetParam().expect));
}

INSTANTIATE_TEST_SUITE_P(Istio, TrustDomainBundleTest, ::testing::ValuesIn(BundleRows()),
                         [](const ::testing::TestParamInfo<BundleRow>& info) {
                           return info.param.name;
                         });

TEST(TrustDomainBundleTest, ExpandsTrustDomainValues) {
  TrustDomainBundle b = TrustDomainBundle::Of("td1", {"td2", "td3"});
  EXPECT_THAT(b.ExpandTrustDomains({"td2"}), ElementsAre("td1", "td2", "td3"));
  EXPECT_THAT(b.ExpandTrustDomains({"other", "td1", "td3"}),
              ElementsAre("other", "td1", "td2", "td3"));
  // Only exact values expand; cluster.local is not special here (istiod's
  // ExpandTrustDomainAliases).
  EXPECT_THAT(b.ExpandTrustDomains({"td*", "cluster.local"}), ElementsAre("td*", "cluster.local"));
}

TEST(TrustDomainBundleTest, MigrateTouchesOnlyIdentityFields) {
  TrustDomainBundle b = TrustDomainBundle::Of("td1", {"td2"});
  Policy p = Allow({Rule{
      .from = {{.principals = {"td1/ns/a/sa/b"}, .namespaces = {"td1"}, .trust_domains = {"td2"}}},
      .when = {{"source.namespace", {"td1/ns/a/sa/b"}, {}},
               {"source.principal", {}, {"td2/ns/a/sa/b"}}}}});
  Policy m = b.Migrate(p);
  const Rule& r = (*m.rules)[0];
  EXPECT_THAT(r.from[0].principals, ElementsAre("td1/ns/a/sa/b", "td2/ns/a/sa/b"));
  EXPECT_THAT(r.from[0].namespaces, ElementsAre("td1"));
  EXPECT_THAT(r.from[0].trust_domains, ElementsAre("td1", "td2"));
  EXPECT_THAT(r.when[0].values, ElementsAre("td1/ns/a/sa/b"));
  EXPECT_THAT(r.when[1].not_values, ElementsAre("td1/ns/a/sa/b", "td2/ns/a/sa/b"));
  // The default bundle changes nothing.
  EXPECT_EQ(TrustDomainBundle{}.Migrate(p), p);
}

}  // namespace
}  // namespace ambit::authz
