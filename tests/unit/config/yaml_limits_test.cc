// YAML alias expansion limits (agent/config/yaml_limits.h) and how the config parser reports a
// file that exceeds them.

#include "agent/config/yaml_limits.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "agent/config/kube_yaml.h"

namespace ambit::config {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;

// "Billion laughs": nine levels of ten aliases each, 10^9 strings once expanded, in 1 KiB.
std::string Bomb(const std::string& indent = "") {
  std::string s = indent + "l0: &l0 [a, a, a, a, a, a, a, a, a, a]\n";
  for (int i = 1; i <= 9; ++i) {
    std::string prev = "*l" + std::to_string(i - 1);
    s += indent + "l" + std::to_string(i) + ": &l" + std::to_string(i) + " [";
    for (int j = 0; j < 10; ++j) s += (j ? ", " : "") + prev;
    s += "]\n";
  }
  return s;
}

TEST(YamlLimitsTest, CountsWhatAliasesExpandTo) {
  EXPECT_FALSE(CheckAliasExpansion("a: [1, 2, 3]").excessive);
  EXPECT_FALSE(CheckAliasExpansion("a: &x {b: 1}\nc: *x\nd: *x\n").excessive);
  EXPECT_FALSE(CheckAliasExpansion("not: [valid").excessive);  // the loader reports it
  AliasExpansion bomb = CheckAliasExpansion(Bomb());
  EXPECT_TRUE(bomb.excessive);
  EXPECT_GT(bomb.line, 1);
  // The limit itself: an anchored list of n nodes aliased k times adds n * k.
  std::string at_limit = "a: &a [" + std::string(999, ' ') + "]\n";
  std::string list = "[";
  for (int i = 0; i < 999; ++i) list += "x,";
  list += "x]";
  std::string refs = "b: [";
  for (int i = 0; i < 99; ++i) refs += "*a,";
  refs += "*a]\n";
  // 1001 nodes (the list and its 1000 items) times 100 aliases: just over the limit.
  EXPECT_TRUE(CheckAliasExpansion("a: &a " + list + "\n" + refs).excessive);
  // Times 99: under it.
  refs = "b: [";
  for (int i = 0; i < 98; ++i) refs += "*a,";
  refs += "*a]\n";
  EXPECT_FALSE(CheckAliasExpansion("a: &a " + list + "\n" + refs).excessive);
}

TEST(YamlLimitsTest, AnAliasBombIsRefusedWithFileAndLine) {
  ParsedFile parsed = ParseKubeYaml("bomb.yaml",
                                    "apiVersion: v1\nkind: Pod\nmetadata:\n"
                                    "  name: web\n  labels:\n" +
                                        Bomb("    "));
  EXPECT_TRUE(parsed.unparseable);
  EXPECT_THAT(parsed.objects, SizeIs(0));
  ASSERT_THAT(parsed.errors, SizeIs(1));
  EXPECT_EQ(parsed.errors[0].file, "bomb.yaml");
  EXPECT_GT(parsed.errors[0].line, 5);
  EXPECT_THAT(parsed.errors[0].message, HasSubstr("aliases expand"));
}

TEST(YamlLimitsTest, AnAliasBombInTheEmbeddedMeshConfigIsRefused) {
  std::string embedded;
  for (char c : Bomb()) {
    embedded += c;
    if (c == '\n') embedded += "    ";
  }
  ParsedFile parsed = ParseKubeYaml(
      "istio.yaml",
      "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n"
      "data:\n  mesh: |\n    " +
          embedded);
  ASSERT_FALSE(parsed.errors.empty());
  EXPECT_EQ(parsed.errors[0].field, "data.mesh");
  EXPECT_THAT(parsed.errors[0].message, HasSubstr("aliases expand"));
}

TEST(YamlLimitsTest, OrdinaryAnchorsStillLoad) {
  ParsedFile parsed = ParseKubeYaml("pods.yaml", R"(apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: a, labels: &labels {app: web, tier: front}}}
- {apiVersion: v1, kind: Pod, metadata: {name: b, labels: *labels}}
)");
  EXPECT_FALSE(parsed.unparseable);
  EXPECT_THAT(parsed.objects, SizeIs(2));
  EXPECT_THAT(parsed.errors, SizeIs(0));
}

// yaml-cpp 0.7 emits empty documents for ever on this text (found by tests/fuzz/config_yaml).
TEST(YamlLimitsTest, TextTheParserNeverFinishesIsRefused) {
  const std::string text = R"yaml(, namespace: prod}
spec:
  clusterIP: 198.19.0.1
  clusterIPs: [198.19.0.1, "2001:2::1:1"]
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
  - {name: named, port: 443, targetPort: https}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: prod, labels: {app: web}}
  status: {podIPs: [{ip: 198.18.0.1}]}
- prod/allow-nothingind: ConfigMap
  metadata: {name: other, namespace: prod}
...
)yaml";
  EXPECT_TRUE(CheckAliasExpansion(text).runaway);
  ParsedFile parsed = ParseKubeYaml("loop.yaml", text);
  EXPECT_TRUE(parsed.unparseable);
  ASSERT_THAT(parsed.errors, SizeIs(1));
  EXPECT_THAT(parsed.errors[0].message, HasSubstr("does not come to an end"));
  EXPECT_FALSE(CheckAliasExpansion("a: 1\n---\nb: [1, 2]\n...\n---\n").runaway);
}

}  // namespace
}  // namespace ambit::config
