#include "agent/cni/cni.h"

#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::cni {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::ordered_json;

std::function<const char*(const char*)> Env(const std::map<std::string, std::string>& vars) {
  return [vars](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
}

TEST(CniArgsTest, ReadsThePodFromK8sArgs) {
  auto pod = ParseCniArgs(
      "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;"
      "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=0f1e-22");
  ASSERT_TRUE(pod.ok()) << pod.status();
  ASSERT_TRUE(pod->has_value());
  EXPECT_EQ((*pod)->namespace_name, "shop");
  EXPECT_EQ((*pod)->name, "web-1");
  EXPECT_EQ((*pod)->uid, "0f1e-22");
  EXPECT_EQ((*pod)->infra_container_id, "abc");
}

TEST(CniArgsTest, NoK8sArgsIsNotAPod) {
  auto pod = ParseCniArgs("IgnoreUnknown=1");
  ASSERT_TRUE(pod.ok());
  EXPECT_FALSE(pod->has_value());
  EXPECT_FALSE(ParseCniArgs("")->has_value());
}

TEST(CniArgsTest, RefusesPairsWithoutValueAndHalfAPod) {
  auto bad = ParseCniArgs("K8S_POD_NAMESPACE=a;garbage");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(CniCode(bad.status()), kErrInvalidEnv);
  EXPECT_THAT(bad.status().message(), HasSubstr("CNI_ARGS: \"garbage\""));
  auto half = ParseCniArgs("K8S_POD_NAMESPACE=a");
  ASSERT_FALSE(half.ok());
  EXPECT_THAT(half.status().message(), HasSubstr("K8S_POD_NAME"));
}

TEST(EnvironmentTest, AddNeedsContainerIfnameAndNetns) {
  std::map<std::string, std::string> env = {{"CNI_COMMAND", "ADD"},
                                            {"CNI_CONTAINERID", "c1"},
                                            {"CNI_IFNAME", "eth0"},
                                            {"CNI_NETNS", "/var/run/netns/p"}};
  ASSERT_TRUE(ParseEnvironment(Env(env)).ok());
  for (const char* var : {"CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"}) {
    auto missing = env;
    missing.erase(var);
    auto inv = ParseEnvironment(Env(missing));
    ASSERT_FALSE(inv.ok()) << var;
    EXPECT_EQ(CniCode(inv.status()), kErrInvalidEnv);
    EXPECT_THAT(inv.status().message(), HasSubstr(var));
  }
  env["CNI_NETNS"] = "relative/path";
  EXPECT_THAT(ParseEnvironment(Env(env)).status().message(), HasSubstr("CNI_NETNS"));
}

TEST(EnvironmentTest, DelMayComeWithoutNetns) {
  auto inv = ParseEnvironment(
      Env({{"CNI_COMMAND", "DEL"}, {"CNI_CONTAINERID", "c1"}, {"CNI_IFNAME", "eth0"}}));
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->command, Command::kDel);
  EXPECT_TRUE(inv->netns.empty());
}

TEST(EnvironmentTest, UnknownCommandNamesIt) {
  auto inv = ParseEnvironment(Env({{"CNI_COMMAND", "GC"}}));
  ASSERT_FALSE(inv.ok());
  EXPECT_THAT(inv.status().message(), HasSubstr("CNI_COMMAND: unknown command \"GC\""));
  EXPECT_THAT(ParseEnvironment(Env({})).status().message(), HasSubstr("CNI_COMMAND: not set"));
}

TEST(NetConfTest, DefaultsAndKeys) {
  auto conf = ParseNetConf(R"({"cniVersion":"1.0.0","name":"k8s","type":"ambit-cni"})");
  ASSERT_TRUE(conf.ok()) << conf.status();
  EXPECT_EQ(conf->zds_socket, "/var/run/ambit/zds.sock");
  EXPECT_EQ(conf->timeout, absl::Seconds(10));
  EXPECT_THAT(conf->exclude_namespaces, ::testing::ElementsAre("kube-system"));
  EXPECT_FALSE(conf->prev_result.has_value());

  conf = ParseNetConf(R"({"cniVersion":"0.4.0","name":"k8s","type":"ambit-cni",
    "zdsSocket":"/run/z.sock","timeout":2.5,"excludeNamespaces":["a","b"],
    "prevResult":{"cniVersion":"0.4.0","ips":[]}})");
  ASSERT_TRUE(conf.ok()) << conf.status();
  EXPECT_EQ(conf->zds_socket, "/run/z.sock");
  EXPECT_EQ(conf->timeout, absl::Milliseconds(2500));
  EXPECT_THAT(conf->exclude_namespaces, ::testing::ElementsAre("a", "b"));
  EXPECT_TRUE(conf->prev_result.has_value());
}

TEST(NetConfTest, ErrorsNameTheKeyAndCarryTheSpecCode) {
  struct Case {
    std::string text;
    int code;
    std::string says;
  } cases[] = {
      {"not json", kErrDecode, "not a JSON object"},
      {"[1]", kErrDecode, "not a JSON object"},
      {R"({"name":"n","type":"t"})", kErrInvalidConfig, "\"cniVersion\" missing"},
      {R"({"cniVersion":"0.2.0","name":"n","type":"t"})", kErrIncompatibleVersion, "0.2.0"},
      {R"({"cniVersion":"1.0.0","type":"t"})", kErrInvalidConfig, "\"name\" missing"},
      {R"({"cniVersion":"1.0.0","name":"n","type":7})", kErrInvalidConfig, "\"type\""},
      {R"({"cniVersion":"1.0.0","name":"n","type":"t","timeout":0})", kErrInvalidConfig,
       "\"timeout\""},
      {R"({"cniVersion":"1.0.0","name":"n","type":"t","timeout":"10"})", kErrInvalidConfig,
       "\"timeout\""},
      {R"({"cniVersion":"1.0.0","name":"n","type":"t","zdsSocket":"rel"})", kErrInvalidConfig,
       "\"zdsSocket\""},
      {R"({"cniVersion":"1.0.0","name":"n","type":"t","excludeNamespaces":"a"})", kErrInvalidConfig,
       "\"excludeNamespaces\""},
      {R"({"cniVersion":"1.0.0","name":"n","type":"t","excludeNamespaces":["a",1]})",
       kErrInvalidConfig, "\"excludeNamespaces\"[1]"},
      {R"({"cniVersion":"1.0.0","name":"n","type":"t","prevResult":[]})", kErrInvalidConfig,
       "\"prevResult\""},
      {std::string(kMaxConfigBytes + 1, ' '), kErrDecode, "bytes"},
  };
  for (const Case& c : cases) {
    auto conf = ParseNetConf(c.text);
    ASSERT_FALSE(conf.ok()) << c.text.substr(0, 80);
    EXPECT_EQ(CniCode(conf.status()), c.code) << c.text.substr(0, 80);
    EXPECT_THAT(conf.status().message(), HasSubstr(c.says)) << c.text.substr(0, 80);
  }
}

TEST(AnswersTest, AddPassesPrevResultOnWithTheConfigsVersion) {
  auto conf = ParseNetConf(R"({"cniVersion":"0.4.0","name":"n","type":"ambit-cni",
    "prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"eth0"}],"ips":[{"version":"4",
    "address":"198.18.0.2/24","interface":0}],"dns":{}}})");
  ASSERT_TRUE(conf.ok());
  auto out = AddAnswer(*conf);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(Json::parse(*out), conf->prev_result);
  // Key order is kept: the runtime gets the previous plug-in's bytes back.
  EXPECT_EQ(*out, conf->prev_result->dump());
}

TEST(AnswersTest, AddWithoutPrevResultIsAnError) {
  auto conf = ParseNetConf(R"({"cniVersion":"1.0.0","name":"n","type":"ambit-cni"})");
  auto out = AddAnswer(*conf);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(CniCode(out.status()), kErrInvalidConfig);
  EXPECT_THAT(out.status().message(), HasSubstr("chained"));
}

TEST(AnswersTest, VersionEchoesASupportedVersion) {
  Json v = Json::parse(VersionAnswer(R"({"cniVersion":"0.3.1"})"));
  EXPECT_EQ(v["cniVersion"], "0.3.1");
  EXPECT_EQ(v["supportedVersions"], Json::parse(R"(["0.3.0","0.3.1","0.4.0","1.0.0"])"));
  EXPECT_EQ(Json::parse(VersionAnswer(""))["cniVersion"], "1.0.0");
  EXPECT_EQ(Json::parse(VersionAnswer(R"({"cniVersion":"0.1.0"})"))["cniVersion"], "1.0.0");
}

TEST(AnswersTest, ErrorObjectHasTheSpecsShape) {
  Json e = Json::parse(ErrorAnswer(
      "0.4.0", CniStatus(11, absl::StatusCode::kUnavailable, "try later"), "details here"));
  EXPECT_EQ(e, Json::parse(R"({"cniVersion":"0.4.0","code":11,"msg":"try later",
                               "details":"details here"})"));
  // Invalid UTF-8 in a message is replaced, never a crash.
  Json bad = Json::parse(ErrorAnswer(
      "x", CniStatus(7, absl::StatusCode::kInvalidArgument, std::string("\xff\xfe", 2))));
  EXPECT_EQ(bad["cniVersion"], "1.0.0");
  EXPECT_EQ(bad["code"], 7);
}

}  // namespace
}  // namespace ambit::cni
