#include "agent/cni/install.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::cni {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::ordered_json;

Json Entry() {
  Json e = Json::object();
  e["zdsSocket"] = "/var/run/ambit/zds.sock";
  return e;
}

constexpr char kCalico[] = R"({
  "name": "k8s-pod-network", "cniVersion": "0.3.1",
  "plugins": [
    {"type": "calico", "log_level": "info", "datastore_type": "kubernetes",
     "ipam": {"type": "calico-ipam"}, "policy": {"type": "k8s"},
     "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}},
    {"type": "bandwidth", "capabilities": {"bandwidth": true}}
  ]
})";

TEST(ConflistTest, AppendsLastAndKeepsEverythingElse) {
  auto out = ConflistWithPlugin(kCalico, "10-calico.conflist", Entry());
  ASSERT_TRUE(out.ok()) << out.status();
  Json j = Json::parse(*out);
  Json before = Json::parse(kCalico);
  ASSERT_EQ(j["plugins"].size(), 4u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(j["plugins"][i], before["plugins"][i]);
  EXPECT_EQ(j["plugins"][3]["type"], "ambit-cni");
  EXPECT_EQ(j["plugins"][3]["zdsSocket"], "/var/run/ambit/zds.sock");
  EXPECT_EQ(j["name"], "k8s-pod-network");
  EXPECT_EQ(j.begin().key(), "name");  // key order kept
}

TEST(ConflistTest, IdempotentAndMovesAnEarlierEntryLast) {
  auto once = ConflistWithPlugin(kCalico, "f", Entry());
  auto twice = ConflistWithPlugin(*once, "f", Entry());
  EXPECT_EQ(*once, *twice);
  Json j = Json::parse(kCalico);
  j["plugins"].insert(j["plugins"].begin(), Json::parse(R"({"type":"ambit-cni"})"));
  auto moved = ConflistWithPlugin(j.dump(), "f", Entry());
  EXPECT_EQ(*moved, *once);
}

TEST(ConflistTest, ConvertsASingleConfAndRestoresIt) {
  constexpr char kBridge[] = R"({"cniVersion":"0.4.0","name":"mynet","type":"bridge",
    "bridge":"cni0","isGateway":true,"ipam":{"type":"host-local","subnet":"198.18.0.0/24"}})";
  auto out = ConfToConflist(kBridge, "/etc/cni/net.d/10-bridge.conf", Entry());
  ASSERT_TRUE(out.ok()) << out.status();
  Json j = Json::parse(*out);
  EXPECT_EQ(j["cniVersion"], "0.4.0");
  EXPECT_EQ(j["name"], "mynet");
  ASSERT_EQ(j["plugins"].size(), 2u);
  EXPECT_EQ(j["plugins"][0]["type"], "bridge");
  EXPECT_FALSE(j["plugins"][0].contains("name"));
  EXPECT_EQ(j["plugins"][1]["ambitConvertedFrom"], "10-bridge.conf");
  auto back = WithoutPlugin(*out, "/etc/cni/net.d/10-bridge.conflist");
  ASSERT_TRUE(back.ok() && back->has_value());
  EXPECT_EQ((*back)->file, "/etc/cni/net.d/10-bridge.conf");
  EXPECT_EQ(Json::parse((*back)->text), Json::parse(kBridge));
}

TEST(ConflistTest, RemovalTakesOnlyOurEntry) {
  auto out = ConflistWithPlugin(kCalico, "/d/10-calico.conflist", Entry());
  auto back = WithoutPlugin(*out, "/d/10-calico.conflist");
  ASSERT_TRUE(back.ok() && back->has_value());
  EXPECT_EQ((*back)->file, "/d/10-calico.conflist");
  EXPECT_EQ(Json::parse((*back)->text), Json::parse(kCalico));
  auto none = WithoutPlugin(kCalico, "/d/10-calico.conflist");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST(ConflistTest, RefusesWhatItCannotRead) {
  for (const char* bad : {"{\"plugins\": [", "[]", R"({"plugins": {}})",
                          R"({"plugins": [{"notype": 1}]})", R"({"name": "x"})"}) {
    auto out = ConfToConflist(bad, "/d/00-bad.conflist", Entry());
    ASSERT_FALSE(out.ok()) << bad;
    EXPECT_THAT(out.status().message(), HasSubstr("/d/00-bad.conflist")) << bad;
    EXPECT_THAT(out.status().message(), HasSubstr("untouched")) << bad;
  }
}

}  // namespace
}  // namespace ambit::cni
