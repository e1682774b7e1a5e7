#include "agent/cli/output.h"

#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::cli {
namespace {

Value CertRows() {
  Value rows = Value::MakeList();
  rows.Append(Value::Object({{"identity", "spiffe://cluster.local/ns/default/sa/web"},
                             {"state", "valid"},
                             {"serial", 42}}));
  rows.Append(Value::Object({{"identity", "spiffe://cluster.local/ns/a/sa/b"},
                             {"state", "pending"},
                             {"notAfter", Value()}}));
  return rows;
}

TEST(ValueTest, MapKeepsInsertionOrderAndReplacesInPlace) {
  Value v;
  v.Set("b", 1).Set("a", 2).Set("b", 3);
  ASSERT_EQ(v.kind(), Value::Kind::kMap);
  ASSERT_EQ(v.as_map().size(), 2u);
  EXPECT_EQ(v.as_map()[0].first, "b");
  EXPECT_EQ(v.as_map()[0].second.as_int(), 3);
  EXPECT_EQ(v.as_map()[1].first, "a");
  ASSERT_NE(v.Find("a"), nullptr);
  EXPECT_EQ(v.Find("a")->as_int(), 2);
  EXPECT_EQ(v.Find("c"), nullptr);
}

TEST(ValueTest, ScalarKinds) {
  EXPECT_EQ(Value().kind(), Value::Kind::kNull);
  EXPECT_EQ(Value(true).kind(), Value::Kind::kBool);
  EXPECT_EQ(Value(7).kind(), Value::Kind::kInt);
  EXPECT_EQ(Value(uint16_t{7}).kind(), Value::Kind::kInt);
  EXPECT_EQ(Value(1.5).kind(), Value::Kind::kDouble);
  EXPECT_EQ(Value("x").kind(), Value::Kind::kString);
  EXPECT_EQ(Value(std::string("x")).kind(), Value::Kind::kString);
  EXPECT_EQ(Value::MakeList().kind(), Value::Kind::kList);
  EXPECT_EQ(Value::Array({1, "a"}).as_list().size(), 2u);
}

TEST(ParseOutputFormatTest, AcceptsKnownNames) {
  EXPECT_EQ(*ParseOutputFormat("table"), OutputFormat::kTable);
  EXPECT_EQ(*ParseOutputFormat("json"), OutputFormat::kJson);
  EXPECT_EQ(*ParseOutputFormat("yaml"), OutputFormat::kYaml);
  EXPECT_EQ(*ParseOutputFormat("wide"), OutputFormat::kWide);
  auto bad = ParseOutputFormat("xml");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "unknown output format 'xml': use table, wide, json or yaml");
}

TEST(RenderJsonTest, NestedValuesInOrder) {
  Value v = Value::Object({{"valid", true},
                           {"trustDomain", "cluster.local"},
                           {"count", 3},
                           {"ratio", 0.5},
                           {"none", Value()},
                           {"tags", Value::Array({"a", "b"})},
                           {"empty", Value::MakeMap()}});
  EXPECT_EQ(RenderJson(v),
            "{\n"
            "  \"valid\": true,\n"
            "  \"trustDomain\": \"cluster.local\",\n"
            "  \"count\": 3,\n"
            "  \"ratio\": 0.5,\n"
            "  \"none\": null,\n"
            "  \"tags\": [\n"
            "    \"a\",\n"
            "    \"b\"\n"
            "  ],\n"
            "  \"empty\": {}\n"
            "}\n");
}

TEST(RenderJsonTest, EscapesAndSurvivesInvalidUtf8) {
  EXPECT_EQ(RenderJson(Value("a\"b\n")), "\"a\\\"b\\n\"\n");
  EXPECT_EQ(RenderJson(Value(std::string("bad\xff"))), "\"bad\xef\xbf\xbd\"\n");
  EXPECT_EQ(RenderJson(Value(std::numeric_limits<int64_t>::min())), "-9223372036854775808\n");
}

TEST(RenderYamlTest, BlockStyleInOrder) {
  Value v = Value::Object({{"valid", true},
                           {"trustDomain", "cluster.local"},
                           {"port", 15008},
                           {"ratio", 0.1},
                           {"none", Value()},
                           {"rows", CertRows()}});
  EXPECT_EQ(RenderYaml(v),
            "valid: true\n"
            "trustDomain: cluster.local\n"
            "port: 15008\n"
            "ratio: 0.1\n"
            "none: ~\n"
            "rows:\n"
            "  - identity: spiffe://cluster.local/ns/default/sa/web\n"
            "    state: valid\n"
            "    serial: 42\n"
            "  - identity: spiffe://cluster.local/ns/a/sa/b\n"
            "    state: pending\n"
            "    notAfter: ~\n");
}

TEST(RenderYamlTest, QuotesStringsThatWouldReadAsOtherTypes) {
  Value v = Value::Object({{"a", "true"},
                           {"b", "8080"},
                           {"c", ""},
                           {"d", "null"},
                           {"e", "No"},
                           {"f", "-1.5"},
                           {"g", "plain-text"},
                           {"h", "with: colon"},
                           {"i", Value::MakeList()},
                           {"j", Value::MakeMap()}});
  EXPECT_EQ(RenderYaml(v),
            "a: \"true\"\n"
            "b: \"8080\"\n"
            "c: \"\"\n"
            "d: \"null\"\n"
            "e: \"No\"\n"
            "f: \"-1.5\"\n"
            "g: plain-text\n"
            "h: \"with: colon\"\n"
            "i: []\n"
            "j: {}\n");
}

TEST(RenderTableTest, ListOfMapsIsAlignedTable) {
  EXPECT_EQ(RenderTable(CertRows()),
            "IDENTITY                                   STATE     SERIAL   NOT AFTER\n"
            "spiffe://cluster.local/ns/default/sa/web   valid     42       -\n"
            "spiffe://cluster.local/ns/a/sa/b           pending   -        -\n");
}

TEST(RenderTableTest, MapIsAlignedKeyValueLines) {
  Value v = Value::Object({{"valid", true},
                           {"trustDomain", "cluster.local"},
                           {"path", ""},
                           {"serviceAccount", "web"},
                           {"dnsNames", Value::Array({"a", "b"})}});
  EXPECT_EQ(RenderTable(v),
            "Valid:            true\n"
            "Trust domain:     cluster.local\n"
            "Path:             -\n"
            "Service account:  web\n"
            "Dns names:        a,b\n");
}

TEST(RenderTableTest, NestedListsBecomeTitledSections) {
  Value v =
      Value::Object({{"node", "n1"}, {"certificates", CertRows()}, {"roots", Value::MakeList()}});
  EXPECT_EQ(RenderTable(v),
            "Node:  n1\n"
            "\n"
            "Certificates:\n"
            "  IDENTITY                                   STATE     SERIAL   NOT AFTER\n"
            "  spiffe://cluster.local/ns/default/sa/web   valid     42       -\n"
            "  spiffe://cluster.local/ns/a/sa/b           pending   -        -\n"
            "\n"
            "Roots:\n"
            "  (none)\n");
}

TEST(RenderTableTest, ScalarsAndEdgeCases) {
  EXPECT_EQ(RenderTable(Value("hello")), "hello\n");
  EXPECT_EQ(RenderTable(Value::Array({"a", 1, false})), "a\n1\nfalse\n");
  EXPECT_EQ(RenderTable(Value::MakeList()), "(none)\n");
  EXPECT_EQ(RenderTable(Value::MakeMap()), "(none)\n");
  EXPECT_EQ(RenderTable(Value("two\nlines")), "two lines\n");
  // A map inside a cell is shown as compact JSON rather than breaking the row.
  Value rows =
      Value::Array({Value::Object({{"name", "x"}, {"labels", Value::Object({{"a", "b"}})}})});
  EXPECT_EQ(RenderTable(rows),
            "NAME   LABELS\n"
            "x      {\"a\":\"b\"}\n");
}

TEST(RenderTableTest, HeadersFromCamelSnakeAndDashedKeys) {
  Value rows = Value::Array({Value::Object({{"notBefore", 1}, {"not_after", 2}, {"root-ca", 3}})});
  EXPECT_EQ(RenderTable(rows),
            "NOT BEFORE   NOT AFTER   ROOT CA\n"
            "1            2           3\n");
}

TEST(RenderTest, DispatchesOnFormat) {
  Value v = Value::Object({{"k", "v"}});
  EXPECT_EQ(Render(v, OutputFormat::kTable), "K:  v\n");
  EXPECT_EQ(Render(v, OutputFormat::kJson), "{\n  \"k\": \"v\"\n}\n");
  EXPECT_EQ(Render(v, OutputFormat::kYaml), "k: v\n");
}

}  // namespace
}  // namespace ambit::cli
