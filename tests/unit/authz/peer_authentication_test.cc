#include "agent/authz/peer_authentication.h"

#include <cstdint>
#include <map>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::authz {
namespace {

using ::testing::HasSubstr;

constexpr MtlsMode kUnset = MtlsMode::kUnset;
constexpr MtlsMode kStrict = MtlsMode::kStrict;
constexpr MtlsMode kPermissive = MtlsMode::kPermissive;
constexpr MtlsMode kDisable = MtlsMode::kDisable;

using Labels = std::map<std::string, std::string>;

// Builds a PeerAuthentication: Pa("foo", "default", kStrict).Select({{"app", "a"}}).Port(80, ..).
struct Pa {
  Pa(std::string ns, std::string name, MtlsMode mode) {
    p.namespace_name = std::move(ns);
    p.name = std::move(name);
    p.mode = mode;
  }
  Pa& Select(Labels labels) {
    p.has_selector = true;
    p.selector = std::move(labels);
    return *this;
  }
  Pa& Port(uint32_t port, MtlsMode mode) {
    p.port_level[port] = mode;
    return *this;
  }
  Pa& Created(int64_t unix_seconds) {
    p.creation_time = absl::FromUnixSeconds(unix_seconds);
    return *this;
  }
  operator PeerAuthentication() const { return p; }  // NOLINT: implicit by design, for tables

  PeerAuthentication p;
};

// A mesh-wide policy in the default root namespace.
Pa Mesh(MtlsMode mode, std::string name = "default") {
  return Pa("istio-system", std::move(name), mode);
}

struct Case {
  std::string name;  // the test's name: letters, digits and '_'
  std::vector<PeerAuthentication> policies;
  std::string workload_namespace = "foo";
  Labels labels = {{"app", "finance"}};
  uint32_t port = 8080;
  MtlsMode want_mode;
  std::string want_policy;  // "" for the default
  std::string root_namespace = "istio-system";
};

std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.name; }

const Labels kFinance = {{"app", "finance"}};

std::vector<Case> Cases() {
  return {
      // Defaults.
      {.name = "NothingConfiguredIsPermissive",
       .policies = {},
       .want_mode = kPermissive,
       .want_policy = ""},
      {.name = "OnlyOtherNamespacesConfiguredIsPermissive",
       .policies = {Pa("bar", "default", kStrict), Pa("bar", "fin", kStrict).Select(kFinance)},
       .want_mode = kPermissive,
       .want_policy = ""},
      {.name = "MeshUnsetIsPermissive",
       .policies = {Mesh(kUnset)},
       .want_mode = kPermissive,
       .want_policy = ""},

      // Mesh-wide.
      {.name = "MeshStrict",
       .policies = {Mesh(kStrict)},
       .want_mode = kStrict,
       .want_policy = "istio-system/default"},
      {.name = "MeshPermissive",
       .policies = {Mesh(kPermissive)},
       .want_mode = kPermissive,
       .want_policy = "istio-system/default"},
      {.name = "MeshDisable",
       .policies = {Mesh(kDisable)},
       .want_mode = kDisable,
       .want_policy = "istio-system/default"},
      {.name = "MeshAppliesToEveryNamespace",
       .policies = {Mesh(kStrict)},
       .workload_namespace = "some-other-ns",
       .labels = {},
       .want_mode = kStrict,
       .want_policy = "istio-system/default"},

      // Namespace-wide over mesh-wide.
      {.name = "NamespaceStrictOverridesMeshPermissive",
       .policies = {Mesh(kPermissive), Pa("foo", "default", kStrict)},
       .want_mode = kStrict,
       .want_policy = "foo/default"},
      {.name = "NamespacePermissiveOverridesMeshStrict",
       .policies = {Mesh(kStrict), Pa("foo", "default", kPermissive)},
       .want_mode = kPermissive,
       .want_policy = "foo/default"},
      {.name = "NamespaceUnsetInheritsMesh",
       .policies = {Mesh(kStrict), Pa("foo", "default", kUnset)},
       .want_mode = kStrict,
       .want_policy = "istio-system/default"},
      {.name = "NamespaceUnsetWithoutMeshIsPermissive",
       .policies = {Pa("foo", "default", kUnset)},
       .want_mode = kPermissive,
       .want_policy = ""},
      {.name = "OtherNamespacePolicyDoesNotApply",
       .policies = {Mesh(kDisable), Pa("bar", "default", kStrict)},
       .want_mode = kDisable,
       .want_policy = "istio-system/default"},

      // Workload over namespace over mesh.
      {.name = "WorkloadStrictOverridesNamespacePermissive",
       .policies = {Pa("foo", "default", kPermissive), Pa("foo", "fin", kStrict).Select(kFinance)},
       .want_mode = kStrict,
       .want_policy = "foo/fin"},
      {.name = "WorkloadDisableOverridesNamespaceAndMeshStrict",
       .policies = {Mesh(kStrict), Pa("foo", "default", kStrict),
                    Pa("foo", "fin", kDisable).Select(kFinance)},
       .want_mode = kDisable,
       .want_policy = "foo/fin"},
      {.name = "WorkloadUnsetInheritsNamespace",
       .policies = {Mesh(kDisable), Pa("foo", "default", kStrict),
                    Pa("foo", "fin", kUnset).Select(kFinance)},
       .want_mode = kStrict,
       .want_policy = "foo/default"},
      {.name = "WorkloadAndNamespaceUnsetInheritMesh",
       .policies = {Mesh(kDisable), Pa("foo", "default", kUnset),
                    Pa("foo", "fin", kUnset).Select(kFinance)},
       .want_mode = kDisable,
       .want_policy = "istio-system/default"},
      {.name = "WorkloadSelectorNotMatchingFallsBackToNamespace",
       .policies = {Pa("foo", "default", kStrict),
                    Pa("foo", "ledger", kDisable).Select({{"app", "ledger"}})},
       .want_mode = kStrict,
       .want_policy = "foo/default"},
      {.name = "SelectorLabelValueDiffers",
       .policies = {Pa("foo", "fin", kStrict).Select({{"app", "finance-v2"}})},
       .want_mode = kPermissive,
       .want_policy = ""},
      {.name = "SelectorNeedsEveryLabel",
       .policies = {Pa("foo", "fin", kStrict).Select({{"app", "finance"}, {"tier", "db"}})},
       .want_mode = kPermissive,
       .want_policy = ""},
      {.name = "SelectorIsASubsetOfTheWorkloadLabels",
       .policies = {Pa("foo", "fin", kStrict).Select(kFinance)},
       .labels = {{"app", "finance"}, {"version", "v1"}, {"tier", "db"}},
       .want_mode = kStrict,
       .want_policy = "foo/fin"},
      {.name = "WorkloadPolicyOfAnotherNamespaceDoesNotApply",
       .policies = {Pa("bar", "fin", kStrict).Select(kFinance)},
       .want_mode = kPermissive,
       .want_policy = ""},
      {.name = "SelectorPolicyInRootNamespaceIsIgnored",
       .policies = {Mesh(kPermissive), Mesh(kStrict, "fin").Select(kFinance)},
       .want_mode = kPermissive,
       .want_policy = "istio-system/default"},
      {.name = "SelectorPolicyInRootNamespaceIsIgnoredForRootWorkloads",
       .policies = {Mesh(kPermissive), Mesh(kStrict, "fin").Select(kFinance)},
       .workload_namespace = "istio-system",
       .want_mode = kPermissive,
       .want_policy = "istio-system/default"},
      {.name = "EmptySelectorIsNamespaceWide",
       .policies = {Mesh(kPermissive), Pa("foo", "all", kStrict).Select({})},
       .labels = {{"app", "anything"}},
       .want_mode = kStrict,
       .want_policy = "foo/all"},
      {.name = "EmptySelectorInRootNamespaceIsMeshWide",
       .policies = {Mesh(kStrict, "all").Select({})},
       .workload_namespace = "bar",
       .want_mode = kStrict,
       .want_policy = "istio-system/all"},

      // portLevelMtls.
      {.name = "PortLevelOverridesWorkloadMode",
       .policies = {Pa("foo", "fin", kStrict).Select(kFinance).Port(8080, kDisable)},
       .port = 8080,
       .want_mode = kDisable,
       .want_policy = "foo/fin"},
      {.name = "PortLevelDoesNotTouchOtherPorts",
       .policies = {Pa("foo", "fin", kStrict).Select(kFinance).Port(8080, kDisable)},
       .port = 9090,
       .want_mode = kStrict,
       .want_policy = "foo/fin"},
      {.name = "PortLevelPermissiveOnStrictNamespace",
       .policies = {Pa("foo", "default", kStrict),
                    Pa("foo", "fin", kUnset).Select(kFinance).Port(9000, kPermissive)},
       .port = 9000,
       .want_mode = kPermissive,
       .want_policy = "foo/fin"},
      {.name = "PortLevelUnsetInheritsWorkloadMode",
       .policies = {Pa("foo", "default", kPermissive),
                    Pa("foo", "fin", kStrict).Select(kFinance).Port(8080, kUnset)},
       .port = 8080,
       .want_mode = kStrict,
       .want_policy = "foo/fin"},
      {.name = "PortLevelUnsetWithWorkloadUnsetInheritsNamespace",
       .policies = {Pa("foo", "default", kStrict),
                    Pa("foo", "fin", kUnset).Select(kFinance).Port(8080, kUnset)},
       .port = 8080,
       .want_mode = kStrict,
       .want_policy = "foo/default"},
      // Istio's reference example: inherit from the namespace (or mesh), DISABLE on port 8080.
      {.name = "WorkloadUnsetPortDisableOtherPortsInheritMesh",
       .policies = {Mesh(kStrict), Pa("foo", "fin", kUnset).Select(kFinance).Port(8080, kDisable)},
       .port = 443,
       .want_mode = kStrict,
       .want_policy = "istio-system/default"},
      {.name = "PortLevelInNamespacePolicyIsIgnored",
       .policies = {Pa("foo", "default", kStrict).Port(8080, kDisable)},
       .port = 8080,
       .want_mode = kStrict,
       .want_policy = "foo/default"},
      {.name = "PortLevelInEmptySelectorPolicyIsIgnored",
       .policies = {Pa("foo", "default", kStrict).Select({}).Port(8080, kDisable)},
       .port = 8080,
       .want_mode = kStrict,
       .want_policy = "foo/default"},
      {.name = "PortLevelInMeshPolicyIsIgnored",
       .policies = {Mesh(kStrict).Port(8080, kDisable)},
       .port = 8080,
       .want_mode = kStrict,
       .want_policy = "istio-system/default"},
      {.name = "PortLevelOfNonMatchingWorkloadPolicyIsIgnored",
       .policies = {Pa("foo", "default", kStrict),
                    Pa("foo", "ledger", kStrict).Select({{"app", "ledger"}}).Port(8080, kDisable)},
       .port = 8080,
       .want_mode = kStrict,
       .want_policy = "foo/default"},

      // Several policies of one level: the oldest wins.
      {.name = "OldestMatchingWorkloadPolicyWins",
       .policies = {Pa("foo", "new", kDisable).Select(kFinance).Created(2000),
                    Pa("foo", "old", kStrict).Select({{"app", "finance"}}).Created(1000)},
       .want_mode = kStrict,
       .want_policy = "foo/old"},
      {.name = "OldestWinsWhateverTheListOrder",
       .policies = {Pa("foo", "old", kStrict).Select(kFinance).Created(1000),
                    Pa("foo", "new", kDisable).Select(kFinance).Created(2000)},
       .want_mode = kStrict,
       .want_policy = "foo/old"},
      {.name = "OldestWorkloadPolicyUnsetInheritsEvenIfANewerOneSetsAMode",
       .policies = {Pa("foo", "default", kPermissive),
                    Pa("foo", "new", kStrict).Select(kFinance).Created(2000),
                    Pa("foo", "old", kUnset).Select(kFinance).Created(1000)},
       .want_mode = kPermissive,
       .want_policy = "foo/default"},
      {.name = "PortLevelOfTheNewerWorkloadPolicyIsIgnored",
       .policies = {Pa("foo", "old", kStrict).Select(kFinance).Created(1000),
                    Pa("foo", "new", kStrict).Select(kFinance).Created(2000).Port(8080, kDisable)},
       .port = 8080,
       .want_mode = kStrict,
       .want_policy = "foo/old"},
      {.name = "EqualTimestampsOrderByName",
       .policies = {Pa("foo", "b", kDisable).Select(kFinance).Created(1000),
                    Pa("foo", "a", kStrict).Select(kFinance).Created(1000)},
       .want_mode = kStrict,
       .want_policy = "foo/a"},
      {.name = "OldestNamespacePolicyWins",
       .policies = {Pa("foo", "second", kDisable).Created(2000),
                    Pa("foo", "first", kStrict).Created(1000)},
       .want_mode = kStrict,
       .want_policy = "foo/first"},
      {.name = "OldestMeshPolicyWins",
       .policies = {Mesh(kDisable, "second").Created(2000), Mesh(kStrict, "first").Created(1000)},
       .want_mode = kStrict,
       .want_policy = "istio-system/first"},
      {.name = "MissingTimestampCountsAsOldest",
       .policies = {Pa("foo", "stamped", kDisable).Select(kFinance).Created(1),
                    Pa("foo", "unstamped", kStrict).Select(kFinance)},
       .want_mode = kStrict,
       .want_policy = "foo/unstamped"},

      // The root namespace is configurable (MeshConfig rootNamespace).
      {.name = "CustomRootNamespaceMeshPolicyApplies",
       .policies = {Pa("istio-config", "default", kStrict)},
       .want_mode = kStrict,
       .want_policy = "istio-config/default",
       .root_namespace = "istio-config"},
      {.name = "IstioSystemIsAnOrdinaryNamespaceUnderACustomRoot",
       .policies = {Pa("istio-system", "default", kStrict)},
       .want_mode = kPermissive,
       .want_policy = "",
       .root_namespace = "istio-config"},
      {.name = "SelectorPolicyInIstioSystemAppliesUnderACustomRoot",
       .policies = {Pa("istio-config", "default", kDisable),
                    Pa("istio-system", "fin", kStrict).Select(kFinance)},
       .workload_namespace = "istio-system",
       .want_mode = kStrict,
       .want_policy = "istio-system/fin",
       .root_namespace = "istio-config"},
      {.name = "NamespaceOverridesCustomRoot",
       .policies = {Pa("istio-config", "default", kStrict), Pa("foo", "default", kPermissive)},
       .want_mode = kPermissive,
       .want_policy = "foo/default",
       .root_namespace = "istio-config"},
  };
}

class ResolveMtlsModeTest : public ::testing::TestWithParam<Case> {};

TEST_P(ResolveMtlsModeTest, Resolves) {
  const Case& c = GetParam();
  PeerAuthnDecision d =
      ResolveMtlsMode(c.policies, c.root_namespace, c.workload_namespace, c.labels, c.port);
  EXPECT_EQ(MtlsModeName(d.mode), MtlsModeName(c.want_mode)) << d.reason;
  EXPECT_EQ(d.policy, c.want_policy) << d.reason;
  EXPECT_NE(d.mode, kUnset);
  EXPECT_FALSE(d.reason.empty());
}

INSTANTIATE_TEST_SUITE_P(Table, ResolveMtlsModeTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

TEST(PeerAuthenticationTest, ModeNamesRoundTrip) {
  for (MtlsMode mode : {kUnset, kStrict, kPermissive, kDisable}) {
    EXPECT_EQ(ParseMtlsMode(MtlsModeName(mode)), mode) << MtlsModeName(mode);
  }
}

TEST(PeerAuthenticationTest, ModeNamesAreCaseSensitive) {
  EXPECT_EQ(ParseMtlsMode("strict"), std::nullopt);
  EXPECT_EQ(ParseMtlsMode("Strict"), std::nullopt);
  EXPECT_EQ(ParseMtlsMode(""), std::nullopt);
  EXPECT_EQ(ParseMtlsMode("MUTUAL"), std::nullopt);
}

TEST(PeerAuthenticationTest, KeyIsNamespaceSlashName) {
  EXPECT_EQ(PeerAuthentication(Pa("foo", "default", kStrict)).Key(), "foo/default");
}

TEST(PeerAuthenticationTest, ReasonNamesTheDecidingPolicyAndPort) {
  std::vector<PeerAuthentication> policies = {
      Mesh(kStrict), Pa("foo", "fin", kUnset).Select(kFinance).Port(8080, kDisable)};
  PeerAuthnDecision on_port = ResolveMtlsMode(policies, "istio-system", "foo", kFinance, 8080);
  EXPECT_THAT(on_port.reason, HasSubstr("foo/fin"));
  EXPECT_THAT(on_port.reason, HasSubstr("8080"));
  EXPECT_THAT(on_port.reason, HasSubstr("DISABLE"));

  PeerAuthnDecision elsewhere = ResolveMtlsMode(policies, "istio-system", "foo", kFinance, 80);
  EXPECT_THAT(elsewhere.reason, HasSubstr("mesh-wide policy istio-system/default: STRICT"));
  EXPECT_THAT(elsewhere.reason, HasSubstr("foo/fin is UNSET"));

  PeerAuthnDecision none = ResolveMtlsMode({}, "istio-system", "foo", kFinance, 80);
  EXPECT_THAT(none.reason, HasSubstr("PERMISSIVE"));
}

}  // namespace
}  // namespace ambit::authz
