// PeerAuthentication from YAML: parsing, istiod's validation, and the loader's last-good handling.

#include <map>
#include <ostream>
#include <string>
#include <variant>
#include <vector>

#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "agent/authz/peer_authentication.h"
#include "agent/config/directory_loader.h"
#include "agent/config/kube_yaml.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/common/temp_dir.h"

namespace ambit::config {
namespace {

using ::ambit::authz::MtlsMode;
using ::ambit::authz::PeerAuthentication;
using ::ambit::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;
using ::testing::SizeIs;

std::vector<PeerAuthentication> Policies(const ParsedFile& parsed) {
  std::vector<PeerAuthentication> out;
  for (const ParsedObject& o : parsed.objects) {
    if (const auto* p = std::get_if<PeerAuthentication>(&o.object)) out.push_back(*p);
  }
  return out;
}

std::vector<std::string> Ids(const ParsedFile& parsed) {
  std::vector<std::string> out;
  for (const ParsedObject& o : parsed.objects) out.push_back(o.id);
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

std::vector<std::string> Keys(const LoadResult& r) {
  std::vector<std::string> out;
  for (const auto& [key, pa] : r.security.peer_authentications) out.push_back(key);
  return out;
}

absl::Time Utc(int y, int mo, int d, int h, int mi, int s) {
  return absl::FromCivil(absl::CivilSecond(y, mo, d, h, mi, s), absl::UTCTimeZone());
}

// A PeerAuthentication document for loader tests.
std::string Pa(const std::string& ns, const std::string& name, const std::string& spec,
               const std::string& api_version = "security.istio.io/v1") {
  return "apiVersion: " + api_version + "\nkind: PeerAuthentication\nmetadata:\n  name: " + name +
         "\n  namespace: " + ns + "\nspec: " + spec + "\n";
}

TEST(PeerAuthenticationYamlTest, ParsesV1WorkloadPolicyWithPortLevelMtls) {
  ParsedFile parsed = ParseKubeYaml("policies.yaml", R"(
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: finance
  namespace: foo
  creationTimestamp: "2024-05-01T12:00:00Z"
  labels: {team: payments}
spec:
  selector:
    matchLabels:
      app: finance
      version: v1
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
    "9090":
      mode: UNSET
    9443: {}
    15021: {mode: PERMISSIVE}
status: {}
)");
  EXPECT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  EXPECT_THAT(Ids(parsed), ElementsAre("PeerAuthentication foo/finance"));
  ASSERT_THAT(Policies(parsed), SizeIs(1));
  const PeerAuthentication pa = Policies(parsed)[0];
  EXPECT_EQ(pa.name, "finance");
  EXPECT_EQ(pa.namespace_name, "foo");
  EXPECT_EQ(pa.Key(), "foo/finance");
  EXPECT_EQ(pa.source_file, "policies.yaml");
  EXPECT_TRUE(pa.has_selector);
  EXPECT_THAT(pa.selector, ElementsAre(Pair("app", "finance"), Pair("version", "v1")));
  EXPECT_EQ(pa.mode, MtlsMode::kStrict);
  EXPECT_THAT(pa.port_level,
              ElementsAre(Pair(8080u, MtlsMode::kDisable), Pair(9090u, MtlsMode::kUnset),
                          Pair(9443u, MtlsMode::kUnset), Pair(15021u, MtlsMode::kPermissive)));
  EXPECT_EQ(pa.creation_time, Utc(2024, 5, 1, 12, 0, 0));
}

TEST(PeerAuthenticationYamlTest, ParsesV1beta1NamespacePolicy) {
  ParsedFile parsed = ParseKubeYaml("ns.yaml", R"(
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
  creationTimestamp: 2023-01-02T03:04:05.250+01:00
spec:
  mtls:
    mode: PERMISSIVE
)");
  EXPECT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  ASSERT_THAT(Policies(parsed), SizeIs(1));
  const PeerAuthentication pa = Policies(parsed)[0];
  EXPECT_EQ(pa.Key(), "foo/default");
  EXPECT_FALSE(pa.has_selector);
  EXPECT_FALSE(pa.IsWorkloadLevel());
  EXPECT_EQ(pa.mode, MtlsMode::kPermissive);
  EXPECT_THAT(pa.port_level, IsEmpty());
  EXPECT_EQ(pa.creation_time, Utc(2023, 1, 2, 2, 4, 5) + absl::Milliseconds(250));
}

TEST(PeerAuthenticationYamlTest, AllModes) {
  for (const char* mode : {"UNSET", "STRICT", "PERMISSIVE", "DISABLE"}) {
    ParsedFile parsed =
        ParseKubeYaml("p.yaml", Pa("foo", "p", std::string("{mtls: {mode: ") + mode + "}}"));
    EXPECT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
    ASSERT_THAT(Policies(parsed), SizeIs(1));
    EXPECT_EQ(authz::MtlsModeName(Policies(parsed)[0].mode), mode);
  }
}

TEST(PeerAuthenticationYamlTest, DefaultsWhenFieldsAreAbsent) {
  ParsedFile parsed = ParseKubeYaml("p.yaml", R"(
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: no-spec}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: null-spec, namespace: foo}
spec:
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: empty-mtls, namespace: foo}
spec: {mtls: {}, selector: null}
)");
  EXPECT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  EXPECT_THAT(Ids(parsed),
              ElementsAre("PeerAuthentication default/no-spec", "PeerAuthentication foo/null-spec",
                          "PeerAuthentication foo/empty-mtls"));
  for (const PeerAuthentication& pa : Policies(parsed)) {
    EXPECT_EQ(pa.mode, MtlsMode::kUnset) << pa.Key();
    EXPECT_FALSE(pa.has_selector) << pa.Key();
    EXPECT_THAT(pa.port_level, IsEmpty()) << pa.Key();
    EXPECT_EQ(pa.creation_time, absl::InfinitePast()) << pa.Key();
  }
}

TEST(PeerAuthenticationYamlTest, MeshWidePolicyInTheRootNamespace) {
  ParsedFile parsed =
      ParseKubeYaml("mesh-policy.yaml", Pa("istio-system", "default", "{mtls: {mode: STRICT}}"));
  EXPECT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  std::vector<PeerAuthentication> policies = Policies(parsed);
  ASSERT_THAT(policies, SizeIs(1));
  authz::PeerAuthnDecision d =
      authz::ResolveMtlsMode(policies, "istio-system", "any-namespace", {{"app", "x"}}, 80);
  EXPECT_EQ(d.mode, MtlsMode::kStrict);
  EXPECT_EQ(d.policy, "istio-system/default");
}

TEST(PeerAuthenticationYamlTest, EmptySelectorIsAWarningAndNamespaceWide) {
  ParsedFile parsed =
      ParseKubeYaml("p.yaml", Pa("foo", "all", "{selector: {}, mtls: {mode: STRICT}}"));
  EXPECT_THAT(Only(parsed, /*warnings=*/false), IsEmpty()) << Describe(parsed);
  std::vector<ConfigError> warnings = Only(parsed, /*warnings=*/true);
  ASSERT_THAT(warnings, SizeIs(1));
  EXPECT_EQ(warnings[0].field, "spec.selector");
  EXPECT_THAT(warnings[0].message, HasSubstr("whole namespace"));
  ASSERT_THAT(Policies(parsed), SizeIs(1));
  EXPECT_TRUE(Policies(parsed)[0].has_selector);
  EXPECT_FALSE(Policies(parsed)[0].IsWorkloadLevel());
}

TEST(PeerAuthenticationYamlTest, ListAsKubectlWritesIt) {
  ParsedFile parsed = ParseKubeYaml("get-pa.yaml", R"(apiVersion: v1
kind: List
items:
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: istio-system, creationTimestamp: "2024-01-01T00:00:00Z"}
  spec: {mtls: {mode: STRICT}}
- apiVersion: security.istio.io/v1beta1
  kind: PeerAuthentication
  metadata: {name: legacy, namespace: foo}
  spec:
    selector: {matchLabels: {app: legacy}}
    mtls: {mode: PERMISSIVE}
metadata: {resourceVersion: ""}
)");
  EXPECT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  EXPECT_THAT(Ids(parsed), ElementsAre("PeerAuthentication istio-system/default",
                                       "PeerAuthentication foo/legacy"));
}

TEST(PeerAuthenticationYamlTest, RequestAuthenticationIsReadAndOldVersionsAreNot) {
  ParsedFile parsed = ParseKubeYaml("security.yaml", R"(
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec: {}
---
apiVersion: security.istio.io/v1alpha1
kind: PeerAuthentication
metadata: {name: ancient, namespace: foo}
spec: {}
)");
  EXPECT_THAT(Only(parsed, /*warnings=*/false), IsEmpty()) << Describe(parsed);
  std::vector<ConfigError> warnings = Only(parsed, /*warnings=*/true);
  ASSERT_THAT(warnings, SizeIs(1)) << Describe(parsed);
  EXPECT_EQ(warnings[0].object, "PeerAuthentication foo/ancient");
  EXPECT_THAT(warnings[0].message, HasSubstr("apiVersion security.istio.io/v1alpha1"));
  EXPECT_THAT(Ids(parsed), ElementsAre("RequestAuthentication foo/jwt"));
}

TEST(PeerAuthenticationYamlTest, BadPolicyIsSkippedAndTheOthersApply) {
  ParsedFile parsed =
      ParseKubeYaml("p.yaml", Pa("foo", "good", "{mtls: {mode: STRICT}}") + "---\n" +
                                  Pa("foo", "bad", "{mtls: {mode: strict}}") + "---\n" +
                                  Pa("bar", "also-good", "{mtls: {mode: DISABLE}}"));
  std::vector<ConfigError> errors = Only(parsed, /*warnings=*/false);
  ASSERT_THAT(errors, SizeIs(1)) << Describe(parsed);
  EXPECT_EQ(errors[0].ToString(),
            "p.yaml:13:21: PeerAuthentication foo/bad: field spec.mtls.mode: 'strict' is not a "
            "mode: use UNSET, STRICT, PERMISSIVE or DISABLE");
  EXPECT_THAT(Ids(parsed),
              ElementsAre("PeerAuthentication foo/good", "PeerAuthentication bar/also-good"));
  EXPECT_THAT(parsed.rejected_ids, ElementsAre("PeerAuthentication foo/bad"));
}

// One invalid PeerAuthentication per row: exactly one error, naming file, resource and field.
struct BadCase {
  std::string name;
  std::string yaml;     // after apiVersion and kind
  std::string field;    // the field path the error names
  std::string message;  // a substring of the message
  std::string object = "PeerAuthentication foo/bad";
};

std::ostream& operator<<(std::ostream& os, const BadCase& c) { return os << c.name; }

constexpr char kMeta[] = "metadata: {name: bad, namespace: foo}\n";

std::vector<BadCase> BadCases() {
  const std::string m = kMeta;
  const std::string sel = "selector: {matchLabels: {app: a}}";
  return {
      {"SpecNotAMap", m + "spec: [mtls]\n", "spec", "must be a map"},
      {"UnknownSpecField", m + "spec: {mtl: {mode: STRICT}}\n", "spec.mtl", "unknown field"},
      {"PortLevelTlsIsUnknown", m + "spec: {" + sel + ", portLevelMTLS: {80: {mode: STRICT}}}\n",
       "spec.portLevelMTLS", "unknown field"},
      {"MtlsNotAMap", m + "spec: {mtls: STRICT}\n", "spec.mtls", "must be a map"},
      {"UnknownMtlsField", m + "spec: {mtls: {mode: STRICT, minVersion: TLSV1_3}}\n",
       "spec.mtls.minVersion", "unknown field"},
      {"ModeLowerCase", m + "spec: {mtls: {mode: strict}}\n", "spec.mtls.mode",
       "'strict' is not a mode"},
      {"ModeUnknown", m + "spec: {mtls: {mode: MUTUAL}}\n", "spec.mtls.mode",
       "use UNSET, STRICT, PERMISSIVE or DISABLE"},
      {"ModeEmpty", m + "spec: {mtls: {mode: ''}}\n", "spec.mtls.mode", "is not a mode"},
      {"ModeNotAString", m + "spec: {mtls: {mode: [STRICT]}}\n", "spec.mtls.mode",
       "must be a string"},
      {"SelectorNotAMap", m + "spec: {selector: app=a}\n", "spec.selector", "must be a map"},
      {"UnknownSelectorField",
       m + "spec: {selector: {matchLabels: {app: a}, matchExpressions: []}}\n",
       "spec.selector.matchExpressions", "unknown field"},
      {"MatchLabelsNotAMap", m + "spec: {selector: {matchLabels: [app]}}\n",
       "spec.selector.matchLabels", "must be a map of strings"},
      {"MatchLabelValueNotAString", m + "spec: {selector: {matchLabels: {app: [a, b]}}}\n",
       "spec.selector.matchLabels[app]", "must be a string"},
      {"MatchLabelWildcard", m + "spec: {selector: {matchLabels: {app: 'fin*'}}}\n",
       "spec.selector.matchLabels[app]", "wildcards are not supported"},
      {"MatchLabelEmptyKey", m + "spec: {selector: {matchLabels: {'': a}}}\n",
       "spec.selector.matchLabels[]", "must not be empty"},
      {"PortNotANumber", m + "spec: {" + sel + ", portLevelMtls: {http: {mode: STRICT}}}\n",
       "spec.portLevelMtls[http]", "is not a port number (1 to 65535)"},
      {"PortZero", m + "spec: {" + sel + ", portLevelMtls: {0: {mode: STRICT}}}\n",
       "spec.portLevelMtls[0]", "is not a port number"},
      {"PortTooLarge", m + "spec: {" + sel + ", portLevelMtls: {65536: {mode: STRICT}}}\n",
       "spec.portLevelMtls[65536]", "is not a port number"},
      {"PortNegative", m + "spec: {" + sel + ", portLevelMtls: {-1: {mode: STRICT}}}\n",
       "spec.portLevelMtls[-1]", "is not a port number"},
      {"PortListedTwice",
       m + "spec: {" + sel + ", portLevelMtls: {80: {mode: STRICT}, '080': {mode: DISABLE}}}\n",
       "spec.portLevelMtls[080]", "listed twice"},
      {"PortModeInvalid", m + "spec: {" + sel + ", portLevelMtls: {8080: {mode: OFF}}}\n",
       "spec.portLevelMtls[8080].mode", "'OFF' is not a mode"},
      {"PortUnknownField", m + "spec: {" + sel + ", portLevelMtls: {8080: {mode: STRICT, x: 1}}}\n",
       "spec.portLevelMtls[8080].x", "unknown field"},
      {"PortEntryNull", m + "spec:\n  " + sel + "\n  portLevelMtls:\n    8080:\n",
       "spec.portLevelMtls[8080]", "must not be empty"},
      {"PortEntryNotAMap", m + "spec: {" + sel + ", portLevelMtls: {8080: DISABLE}}\n",
       "spec.portLevelMtls[8080]", "must be a map with a mode"},
      {"PortLevelNotAMap", m + "spec: {" + sel + ", portLevelMtls: [8080]}\n", "spec.portLevelMtls",
       "must be a map"},
      {"PortLevelEmpty", m + "spec: {" + sel + ", portLevelMtls: {}}\n", "spec.portLevelMtls",
       "is empty"},
      {"PortLevelWithoutSelector",
       m + "spec: {mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}\n",
       "spec.portLevelMtls", "requires a workload selector"},
      {"PortLevelWithEmptySelector",
       m + "spec: {selector: {}, portLevelMtls: {8080: {mode: DISABLE}}}\n", "spec.portLevelMtls",
       "requires a workload selector"},
      {"PortLevelInMeshPolicy",
       "metadata: {name: bad, namespace: istio-system}\n"
       "spec: {portLevelMtls: {8080: {mode: DISABLE}}}\n",
       "spec.portLevelMtls", "requires a workload selector", "PeerAuthentication istio-system/bad"},
      {"BadCreationTimestamp",
       "metadata: {name: bad, namespace: foo, creationTimestamp: yesterday}\nspec: {}\n",
       "metadata.creationTimestamp", "is not an RFC 3339 time"},
      {"BadName", "metadata: {name: Bad_Name, namespace: foo}\nspec: {}\n", "metadata.name", "",
       "PeerAuthentication foo/Bad_Name"},
      {"BadNamespace", "metadata: {name: bad, namespace: Foo}\nspec: {}\n", "metadata.namespace",
       "", "PeerAuthentication Foo/bad"},
  };
}

class PeerAuthenticationValidationTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(PeerAuthenticationValidationTest, RejectsWithFileResourceAndField) {
  const BadCase& c = GetParam();
  ParsedFile parsed = ParseKubeYaml(
      "bad.yaml", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n" + c.yaml);
  std::vector<ConfigError> errors = Only(parsed, /*warnings=*/false);
  ASSERT_THAT(errors, SizeIs(1)) << Describe(parsed);
  EXPECT_EQ(errors[0].file, "bad.yaml");
  EXPECT_EQ(errors[0].object, c.object);
  EXPECT_EQ(errors[0].field, c.field) << errors[0].ToString();
  EXPECT_THAT(errors[0].message, HasSubstr(c.message));
  EXPECT_GT(errors[0].line, 0) << errors[0].ToString();
  EXPECT_THAT(parsed.objects, IsEmpty());
  EXPECT_THAT(parsed.rejected_ids, ElementsAre(c.object));
}

INSTANTIATE_TEST_SUITE_P(Table, PeerAuthenticationValidationTest, ::testing::ValuesIn(BadCases()),
                         [](const ::testing::TestParamInfo<BadCase>& info) {
                           return info.param.name;
                         });

// The loader.

TEST(PeerAuthenticationLoaderTest, PoliciesLandInTheSecurityConfig) {
  TempDir dir;
  dir.Write("mesh.yaml", "rootNamespace: istio-config\n");
  dir.Write("policies.yaml",
            Pa("istio-config", "default", "{mtls: {mode: STRICT}}") + "---\n" +
                Pa("foo", "default", "{mtls: {mode: UNSET}}", "security.istio.io/v1beta1") +
                "---\n" +
                Pa("foo", "legacy",
                   "{selector: {matchLabels: {app: legacy}}, "
                   "portLevelMtls: {8080: {mode: PERMISSIVE}}}"));
  DirectoryLoader loader(dir.path());
  LoadResult r = loader.Load();
  EXPECT_THAT(r.errors, IsEmpty()) << Describe(r);
  EXPECT_THAT(Keys(r), ElementsAre("foo/default", "foo/legacy", "istio-config/default"));
  EXPECT_EQ(r.security.peer_authentications.at("foo/legacy").source_file, "policies.yaml");

  const std::vector<PeerAuthentication> list = r.security.PeerAuthenticationList();
  ASSERT_THAT(list, SizeIs(3));
  const std::string& root = r.state.mesh.root_namespace;
  EXPECT_EQ(authz::ResolveMtlsMode(list, root, "foo", {{"app", "web"}}, 8080).mode,
            MtlsMode::kStrict);  // mesh-wide in the custom root, namespace UNSET inherits
  EXPECT_EQ(authz::ResolveMtlsMode(list, root, "foo", {{"app", "legacy"}}, 8080).mode,
            MtlsMode::kPermissive);
  EXPECT_EQ(authz::ResolveMtlsMode(list, root, "foo", {{"app", "legacy"}}, 9090).mode,
            MtlsMode::kStrict);
}

TEST(PeerAuthenticationLoaderTest, InvalidPolicyKeepsItsLastGoodVersion) {
  TempDir dir;
  dir.Write("p.yaml", Pa("foo", "default", "{mtls: {mode: STRICT}}") + "---\n" +
                          Pa("foo", "other", "{mtls: {mode: PERMISSIVE}}"));
  DirectoryLoader loader(dir.path());
  LoadResult first = loader.Load();
  ASSERT_THAT(first.errors, IsEmpty()) << Describe(first);
  ASSERT_THAT(Keys(first), ElementsAre("foo/default", "foo/other"));

  // A typo in one policy: it is reported, its last good version stays, the other one updates.
  dir.Write("p.yaml", Pa("foo", "default", "{mtls: {mode: DISABLED}}") + "---\n" +
                          Pa("foo", "other", "{mtls: {mode: DISABLE}}"));
  LoadResult r = loader.Load();
  std::vector<ConfigError> errors = Only(r, /*warnings=*/false);
  ASSERT_THAT(errors, SizeIs(1)) << Describe(r);
  EXPECT_EQ(errors[0].file, "p.yaml");
  EXPECT_EQ(errors[0].object, "PeerAuthentication foo/default");
  EXPECT_EQ(errors[0].field, "spec.mtls.mode");
  EXPECT_THAT(Describe(r), HasSubstr("PeerAuthentication foo/default: is invalid; its last good "
                                     "version stays in force"));
  EXPECT_EQ(r.security.peer_authentications.at("foo/default").mode, MtlsMode::kStrict);
  EXPECT_EQ(r.security.peer_authentications.at("foo/other").mode, MtlsMode::kDisable);

  // Still invalid on the next load: still the last good version.
  r = loader.Load();
  EXPECT_EQ(r.security.peer_authentications.at("foo/default").mode, MtlsMode::kStrict);

  // Fixed: the new version applies.
  dir.Write("p.yaml", Pa("foo", "default", "{mtls: {mode: DISABLE}}"));
  r = loader.Load();
  EXPECT_THAT(r.errors, IsEmpty()) << Describe(r);
  EXPECT_THAT(Keys(r), ElementsAre("foo/default"));
  EXPECT_EQ(r.security.peer_authentications.at("foo/default").mode, MtlsMode::kDisable);

  // Deleted: gone.
  dir.Remove("p.yaml");
  r = loader.Load();
  EXPECT_THAT(r.security.peer_authentications, IsEmpty());
}

TEST(PeerAuthenticationLoaderTest, NewInvalidPolicyIsDropped) {
  TempDir dir;
  dir.Write("p.yaml", Pa("foo", "default", "{portLevelMtls: {8080: {mode: DISABLE}}}"));
  LoadResult r = DirectoryLoader(dir.path()).Load();
  EXPECT_TRUE(r.HasErrors());
  EXPECT_THAT(r.security.peer_authentications, IsEmpty());
}

TEST(PeerAuthenticationLoaderTest, UnparseableFileKeepsItsPolicies) {
  TempDir dir;
  dir.Write("p.yaml", Pa("foo", "default", "{mtls: {mode: STRICT}}"));
  DirectoryLoader loader(dir.path());
  ASSERT_THAT(Keys(loader.Load()), ElementsAre("foo/default"));
  dir.Write("p.yaml", "apiVersion: security.istio.io/v1\nkind: [\n");
  LoadResult r = loader.Load();
  EXPECT_TRUE(r.HasErrors());
  EXPECT_THAT(Keys(r), ElementsAre("foo/default"));
}

TEST(PeerAuthenticationLoaderTest, DuplicateAcrossFilesFirstFileWins) {
  TempDir dir;
  dir.Write("a.yaml", Pa("foo", "default", "{mtls: {mode: STRICT}}"));
  dir.Write("b.yaml", Pa("foo", "default", "{mtls: {mode: DISABLE}}", "security.istio.io/v1beta1"));
  LoadResult r = DirectoryLoader(dir.path()).Load();
  std::vector<ConfigError> errors = Only(r, /*warnings=*/false);
  ASSERT_THAT(errors, SizeIs(1)) << Describe(r);
  EXPECT_EQ(errors[0].file, "b.yaml");
  EXPECT_EQ(errors[0].object, "PeerAuthentication foo/default");
  EXPECT_THAT(errors[0].message, HasSubstr("a.yaml"));
  EXPECT_EQ(r.security.peer_authentications.at("foo/default").mode, MtlsMode::kStrict);
}

TEST(PeerAuthenticationLoaderTest, SelectorPolicyInTheRootNamespaceIsAWarning) {
  TempDir dir;
  const std::string selected = "{selector: {matchLabels: {app: a}}, mtls: {mode: STRICT}}";
  dir.Write("p.yaml", Pa("istio-system", "in-root", selected));
  DirectoryLoader loader(dir.path());
  LoadResult r = loader.Load();
  EXPECT_FALSE(r.HasErrors()) << Describe(r);
  std::vector<ConfigError> warnings = Only(r, /*warnings=*/true);
  ASSERT_THAT(warnings, SizeIs(1)) << Describe(r);
  EXPECT_EQ(warnings[0].file, "p.yaml");
  EXPECT_EQ(warnings[0].object, "PeerAuthentication istio-system/in-root");
  EXPECT_EQ(warnings[0].field, "spec.selector");
  EXPECT_THAT(warnings[0].message, HasSubstr("is ignored"));
  EXPECT_THAT(Keys(r), ElementsAre("istio-system/in-root"));  // kept: the root may change

  // With another root namespace, istio-system is an ordinary namespace.
  dir.Write("mesh.yaml", "rootNamespace: istio-config\n");
  r = loader.Load();
  EXPECT_THAT(r.errors, IsEmpty()) << Describe(r);
}

TEST(PeerAuthenticationLoaderTest, PolicyChangeChangesTheResult) {
  TempDir dir;
  dir.Write("p.yaml", Pa("foo", "default", "{mtls: {mode: STRICT}}"));
  DirectoryLoader loader(dir.path());
  LoadResult before = loader.Load();
  EXPECT_EQ(loader.Load(), before);
  dir.Write("p.yaml", Pa("foo", "default", "{mtls: {mode: PERMISSIVE}}"));
  EXPECT_NE(loader.Load(), before);
}

}  // namespace
}  // namespace ambit::config
