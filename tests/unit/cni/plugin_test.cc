#include "agent/cni/plugin.h"

#include <fcntl.h>

#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::cni {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::ordered_json;

// ambitd and the kernel as the plug-in sees them; records what it was asked.
class FakeHandOff : public PodHandOff {
 public:
  absl::StatusOr<UniqueFd> OpenNetns(const std::string& path) override {
    opened.push_back(path);
    if (!netns_status.ok()) return netns_status;
    return UniqueFd(open("/dev/null", O_RDONLY | O_CLOEXEC));
  }
  absl::Status Add(const std::string& socket, const PodRef& pod, int netns_fd,
                   absl::Time deadline) override {
    adds.push_back(pod.uid);
    last_socket = socket;
    last_deadline = deadline;
    EXPECT_GE(netns_fd, 0);
    return add_status;
  }
  absl::Status Del(const std::string&, const std::string& uid, absl::Time) override {
    dels.push_back(uid);
    return del_status;
  }
  absl::Status Probe(const std::string&, absl::Time) override {
    ++probes;
    return probe_status;
  }

  absl::Status netns_status, add_status, del_status, probe_status;
  std::vector<std::string> opened, adds, dels;
  std::string last_socket;
  absl::Time last_deadline;
  int probes = 0;
};

constexpr char kConf[] = R"({"cniVersion":"1.0.0","name":"podnet","type":"ambit-cni",
  "zdsSocket":"/run/ambit/zds.sock","timeout":3,
  "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],
  "ips":[{"address":"198.18.0.7/24","interface":0}]}})";

std::map<std::string, std::string> PodEnv(const char* command) {
  return {{"CNI_COMMAND", command},
          {"CNI_CONTAINERID", "c1"},
          {"CNI_IFNAME", "eth0"},
          {"CNI_NETNS", "/var/run/netns/p1"},
          {"CNI_PATH", "/opt/cni/bin"},
          {"CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;K8S_POD_UID=u-1"}};
}

Outcome Invoke(const std::map<std::string, std::string>& env, absl::string_view stdin_text,
               FakeHandOff& handoff) {
  return RunCommand(
      [&env](const char* name) -> const char* {
        auto it = env.find(name);
        return it == env.end() ? nullptr : it->second.c_str();
      },
      stdin_text, handoff, absl::FromUnixSeconds(1000));
}

TEST(PluginTest, AddHandsThePodOverAndPrintsPrevResult) {
  FakeHandOff h;
  Outcome out = Invoke(PodEnv("ADD"), kConf, h);
  EXPECT_EQ(out.exit_code, 0) << out.stdout_text;
  EXPECT_THAT(h.opened, ::testing::ElementsAre("/var/run/netns/p1"));
  EXPECT_THAT(h.adds, ::testing::ElementsAre("u-1"));
  EXPECT_EQ(h.last_socket, "/run/ambit/zds.sock");
  EXPECT_EQ(h.last_deadline, absl::FromUnixSeconds(1003));
  EXPECT_EQ(Json::parse(out.stdout_text), Json::parse(kConf)["prevResult"]);
}

TEST(PluginTest, AddFailsWhenAmbitdIsAwayOrRefuses) {
  FakeHandOff h;
  h.add_status = CniStatus(kErrTryAgainLater, absl::StatusCode::kUnavailable, "no socket");
  Outcome out = Invoke(PodEnv("ADD"), kConf, h);
  EXPECT_NE(out.exit_code, 0);
  Json e = Json::parse(out.stdout_text);
  EXPECT_EQ(e["code"], 11);
  EXPECT_EQ(e["msg"], "no socket");
  EXPECT_EQ(e["cniVersion"], "1.0.0");
  EXPECT_TRUE(e.contains("details"));

  h.add_status = CniStatus(kErrAgentRefused, absl::StatusCode::kFailedPrecondition, "nope");
  out = Invoke(PodEnv("ADD"), kConf, h);
  EXPECT_NE(out.exit_code, 0);
  EXPECT_EQ(Json::parse(out.stdout_text)["code"], 999);
}

TEST(PluginTest, AddPassesExcludedAndNonPodsThrough) {
  FakeHandOff h;
  auto env = PodEnv("ADD");
  env["CNI_ARGS"] = "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns;K8S_POD_UID=u-2";
  Outcome out = Invoke(env, kConf, h);
  EXPECT_EQ(out.exit_code, 0);
  env["CNI_ARGS"] = "IgnoreUnknown=1";
  out = Invoke(env, kConf, h);
  EXPECT_EQ(out.exit_code, 0);
  EXPECT_EQ(Json::parse(out.stdout_text), Json::parse(kConf)["prevResult"]);
  EXPECT_TRUE(h.adds.empty());
  EXPECT_TRUE(h.opened.empty());
}

TEST(PluginTest, AddWithoutUidFailsClosed) {
  FakeHandOff h;
  auto env = PodEnv("ADD");
  env["CNI_ARGS"] = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web";
  Outcome out = Invoke(env, kConf, h);
  EXPECT_NE(out.exit_code, 0);
  EXPECT_THAT(Json::parse(out.stdout_text)["msg"].get<std::string>(), HasSubstr("K8S_POD_UID"));
  EXPECT_TRUE(h.adds.empty());
}

TEST(PluginTest, AddNamesAMissingNetns) {
  FakeHandOff h;
  h.netns_status = CniStatus(kErrInvalidEnv, absl::StatusCode::kNotFound,
                             "CNI_NETNS: /var/run/netns/p1: No such file or directory");
  Outcome out = Invoke(PodEnv("ADD"), kConf, h);
  EXPECT_NE(out.exit_code, 0);
  EXPECT_EQ(Json::parse(out.stdout_text)["code"], kErrInvalidEnv);
  EXPECT_TRUE(h.adds.empty());
}

TEST(PluginTest, DelAlwaysSucceeds) {
  FakeHandOff h;
  h.del_status = CniStatus(kErrTryAgainLater, absl::StatusCode::kUnavailable, "no socket");
  auto env = PodEnv("DEL");
  env.erase("CNI_NETNS");
  Outcome out = Invoke(env, kConf, h);
  EXPECT_EQ(out.exit_code, 0);
  EXPECT_TRUE(out.stdout_text.empty());
  EXPECT_THAT(h.dels, ::testing::ElementsAre("u-1"));
  EXPECT_THAT(out.log, HasSubstr("ignored"));
}

TEST(PluginTest, CheckProbesAmbitdAndNeeds040) {
  FakeHandOff h;
  Outcome out = Invoke(PodEnv("CHECK"), kConf, h);
  EXPECT_EQ(out.exit_code, 0) << out.stdout_text;
  EXPECT_TRUE(out.stdout_text.empty());
  EXPECT_EQ(h.probes, 1);
  h.probe_status = CniStatus(kErrTryAgainLater, absl::StatusCode::kUnavailable, "down");
  EXPECT_NE(Invoke(PodEnv("CHECK"), kConf, h).exit_code, 0);

  Json old = Json::parse(kConf);
  old["cniVersion"] = "0.3.1";
  out = Invoke(PodEnv("CHECK"), old.dump(), h);
  EXPECT_NE(out.exit_code, 0);
  EXPECT_EQ(Json::parse(out.stdout_text)["code"], kErrIncompatibleVersion);
}

TEST(PluginTest, VersionNeedsNothingElse) {
  FakeHandOff h;
  Outcome out = Invoke({{"CNI_COMMAND", "VERSION"}}, R"({"cniVersion":"0.4.0"})", h);
  EXPECT_EQ(out.exit_code, 0);
  EXPECT_EQ(Json::parse(out.stdout_text)["cniVersion"], "0.4.0");
}

TEST(PluginTest, MalformedInputGivesAnErrorObject) {
  FakeHandOff h;
  Outcome out = Invoke(PodEnv("ADD"), "{\"cniVersion\": ", h);
  EXPECT_NE(out.exit_code, 0);
  EXPECT_EQ(Json::parse(out.stdout_text)["code"], kErrDecode);
  auto env = PodEnv("ADD");
  env.erase("CNI_IFNAME");
  out = Invoke(env, kConf, h);
  EXPECT_NE(out.exit_code, 0);
  EXPECT_THAT(Json::parse(out.stdout_text)["msg"].get<std::string>(), HasSubstr("CNI_IFNAME"));
  EXPECT_TRUE(h.adds.empty());
}

}  // namespace
}  // namespace ambit::cni
