// What a runtime (or whoever can write the CNI conf dir) hands ambit-cni: CNI_ARGS and the
// network configuration on stdin, and the conflists --install rewrites. The first line is
// CNI_ARGS, the first byte picks CNI_COMMAND, the rest is stdin. Checks, besides "no crash":
// every failure carries a CNI error code and a message; the answer printed is always one JSON
// object (a result, an error object or version info) with the configuration's cniVersion; an
// edited conflist parses, ends with ambit-cni, and removing it again leaves no ambit-cni entry.

#include <cstdint>
#include <string>

#include "agent/cni/cni.h"
#include "agent/cni/install.h"
#include "agent/cni/plugin.h"
#include "nlohmann/json.hpp"
#include "tests/fuzz/fuzz_util.h"

namespace {

using Json = nlohmann::ordered_json;

// ambitd as the plug-in sees it: never reached (a fuzz run opens no namespace or socket).
class NoAgent : public ambit::cni::PodHandOff {
 public:
  absl::StatusOr<ambit::UniqueFd> OpenNetns(const std::string& path) override {
    return ambit::cni::CniStatus(ambit::cni::kErrInvalidEnv, absl::StatusCode::kNotFound,
                                 "CNI_NETNS: " + path + ": no such namespace in a fuzz run");
  }
  absl::Status Add(const std::string&, const ambit::cni::PodRef&, int, absl::Time) override {
    return absl::OkStatus();
  }
  absl::Status Del(const std::string&, const std::string&, absl::Time) override {
    return absl::OkStatus();
  }
  absl::Status Probe(const std::string&, absl::Time) override { return absl::OkStatus(); }
};

void CheckAnswer(const std::string& out) {
  if (out.empty()) return;
  Json j = Json::parse(out, nullptr, false);
  FUZZ_REQUIRE(!j.is_discarded() && j.is_object());
  FUZZ_REQUIRE(j.contains("cniVersion") && j["cniVersion"].is_string());
  if (j.contains("code")) {
    FUZZ_REQUIRE(j["code"].is_number_integer() && j["code"].get<int>() > 0);
    FUZZ_REQUIRE(j["msg"].is_string() && !j["msg"].get<std::string>().empty());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace cni = ambit::cni;
  std::string text(reinterpret_cast<const char*>(data), size);
  if (text.empty()) return 0;
  static const char* kCommands[] = {"ADD", "DEL", "CHECK", "VERSION", "GC", ""};
  const char* command = kCommands[static_cast<uint8_t>(text[0]) % 6];
  text.erase(0, 1);
  size_t nl = text.find('\n');
  std::string args = nl == std::string::npos ? text : text.substr(0, nl);
  std::string stdin_text = nl == std::string::npos ? "" : text.substr(nl + 1);

  auto pod = cni::ParseCniArgs(args);
  if (!pod.ok()) FUZZ_REQUIRE(cni::CniCode(pod.status()) == cni::kErrInvalidEnv);

  auto getenv = [&](const char* name) -> const char* {
    std::string n = name;
    if (n == "CNI_COMMAND") return command;
    if (n == "CNI_ARGS") return args.c_str();
    if (n == "CNI_CONTAINERID") return "fuzz";
    if (n == "CNI_IFNAME") return "eth0";
    if (n == "CNI_NETNS") return "/nonexistent/netns";
    return nullptr;
  };
  NoAgent agent;
  cni::Outcome outcome = cni::RunCommand(getenv, stdin_text, agent, absl::UnixEpoch());
  CheckAnswer(outcome.stdout_text);
  FUZZ_REQUIRE(outcome.exit_code == 0 || !outcome.stdout_text.empty());

  auto conf = cni::ParseNetConf(stdin_text);
  if (!conf.ok()) {
    FUZZ_REQUIRE(!conf.status().message().empty());
    FUZZ_REQUIRE(cni::CniCode(conf.status()) > 0);
  } else {
    FUZZ_REQUIRE(conf->timeout > absl::ZeroDuration());
    auto added = cni::AddAnswer(*conf);
    if (added.ok()) CheckAnswer(*added);
  }

  // The same bytes as a file in the CNI conf dir.
  Json entry = Json::object();
  entry["zdsSocket"] = "/var/run/ambit/zds.sock";
  auto edited = cni::ConfToConflist(stdin_text, "/etc/cni/net.d/10-x.conf", entry);
  if (!edited.ok()) {
    FUZZ_REQUIRE(!edited.status().message().empty());
    return 0;
  }
  Json list = Json::parse(*edited, nullptr, false);
  FUZZ_REQUIRE(!list.is_discarded() && list["plugins"].is_array() && !list["plugins"].empty());
  FUZZ_REQUIRE(list["plugins"].back()["type"] == "ambit-cni");
  auto again = cni::ConflistWithPlugin(*edited, "/etc/cni/net.d/10-x.conflist", entry);
  FUZZ_REQUIRE(again.ok() && *again == *edited);
  auto removed = cni::WithoutPlugin(*edited, "/etc/cni/net.d/10-x.conflist");
  FUZZ_REQUIRE(removed.ok() && removed->has_value());
  FUZZ_REQUIRE((*removed)->text.find("\"ambit-cni\"") == std::string::npos ||
               stdin_text.find("ambit-cni") != std::string::npos);
  return 0;
}
