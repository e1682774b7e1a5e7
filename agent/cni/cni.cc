#include "agent/cni/cni.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace ambit::cni {
namespace {

using Json = nlohmann::ordered_json;

constexpr absl::string_view kCodePayload = "ambit.dev/cni-code";

std::string Dump(const Json& j) {
  return j.dump(-1, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace);
}

bool Supported(absl::string_view version) {
  return std::find(std::begin(kSupportedVersions), std::end(kSupportedVersions), version) !=
         std::end(kSupportedVersions);
}

// A value from CNI_ARGS or stdin quoted for a message: bounded, so a huge value cannot flood the
// runtime's log.
std::string Quote(absl::string_view v) {
  constexpr size_t kMax = 120;
  if (v.size() <= kMax) return absl::StrCat("\"", v, "\"");
  return absl::StrCat("\"", v.substr(0, kMax), "...\"");
}

}  // namespace

absl::Status CniStatus(int code, absl::StatusCode status_code, absl::string_view message) {
  absl::Status s(status_code, message);
  s.SetPayload(kCodePayload, absl::Cord(absl::StrCat(code)));
  return s;
}

int CniCode(const absl::Status& status) {
  auto p = status.GetPayload(kCodePayload);
  int code = 0;
  if (p.has_value() && absl::SimpleAtoi(std::string(*p), &code)) return code;
  return kErrIo;
}

absl::StatusOr<std::optional<PodRef>> ParseCniArgs(absl::string_view args) {
  PodRef pod;
  bool has_namespace = false, has_name = false;
  if (args.empty()) return std::nullopt;
  for (absl::string_view pair : absl::StrSplit(args, ';')) {
    if (pair.empty()) continue;  // a trailing `;`
    size_t eq = pair.find('=');
    if (eq == absl::string_view::npos || eq == 0) {
      return CniStatus(kErrInvalidEnv, absl::StatusCode::kInvalidArgument,
                       absl::StrCat("CNI_ARGS: ", Quote(pair), " is not KEY=VALUE"));
    }
    absl::string_view key = pair.substr(0, eq), value = pair.substr(eq + 1);
    if (key == "K8S_POD_NAMESPACE") {
      pod.namespace_name = std::string(value);
      has_namespace = true;
    } else if (key == "K8S_POD_NAME") {
      pod.name = std::string(value);
      has_name = true;
    } else if (key == "K8S_POD_UID") {
      pod.uid = std::string(value);
    } else if (key == "K8S_POD_INFRA_CONTAINER_ID") {
      pod.infra_container_id = std::string(value);
    }
  }
  if (!has_namespace && !has_name) return std::nullopt;
  if (pod.namespace_name.empty() || pod.name.empty()) {
    return CniStatus(kErrInvalidEnv, absl::StatusCode::kInvalidArgument,
                     "CNI_ARGS: K8S_POD_NAMESPACE and K8S_POD_NAME must both be set and "
                     "non-empty for a pod");
  }
  return pod;
}

absl::StatusOr<Invocation> ParseEnvironment(const std::function<const char*(const char*)>& getenv) {
  auto get = [&](const char* name) -> std::optional<std::string> {
    const char* v = getenv(name);
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
  Invocation inv;
  std::optional<std::string> command = get("CNI_COMMAND");
  if (!command.has_value() || command->empty()) {
    return CniStatus(kErrInvalidEnv, absl::StatusCode::kInvalidArgument,
                     "CNI_COMMAND: not set (ambit-cni is run by a container runtime as a CNI "
                     "plug-in; --install/--uninstall set it up)");
  }
  if (*command == "ADD") {
    inv.command = Command::kAdd;
  } else if (*command == "DEL") {
    inv.command = Command::kDel;
  } else if (*command == "CHECK") {
    inv.command = Command::kCheck;
  } else if (*command == "VERSION") {
    inv.command = Command::kVersion;
    return inv;
  } else {
    return CniStatus(kErrInvalidEnv, absl::StatusCode::kInvalidArgument,
                     absl::StrCat("CNI_COMMAND: unknown command ", Quote(*command),
                                  " (ADD, DEL, CHECK or VERSION)"));
  }
  auto required = [&](const char* name, std::string* out) -> absl::Status {
    std::optional<std::string> v = get(name);
    if (!v.has_value() || v->empty()) {
      return CniStatus(kErrInvalidEnv, absl::StatusCode::kInvalidArgument,
                       absl::StrCat(name, ": not set (required for ", *command, ")"));
    }
    *out = *std::move(v);
    return absl::OkStatus();
  };
  absl::Status s = required("CNI_CONTAINERID", &inv.container_id);
  if (!s.ok()) return s;
  s = required("CNI_IFNAME", &inv.ifname);
  if (!s.ok()) return s;
  if (inv.command == Command::kDel) {
    // DEL may come after the namespace is gone (spec: "CNI_NETNS ... may be empty for DEL").
    inv.netns = get("CNI_NETNS").value_or("");
  } else {
    s = required("CNI_NETNS", &inv.netns);
    if (!s.ok()) return s;
  }
  if (!inv.netns.empty() && inv.netns[0] != '/') {
    return CniStatus(kErrInvalidEnv, absl::StatusCode::kInvalidArgument,
                     absl::StrCat("CNI_NETNS: ", Quote(inv.netns), " is not an absolute path"));
  }
  // CNI_PATH is where a plug-in would find the plug-ins it delegates to; ambit-cni runs none, so
  // it is read, never required.
  inv.path = get("CNI_PATH").value_or("");
  auto pod = ParseCniArgs(get("CNI_ARGS").value_or(""));
  if (!pod.ok()) return pod.status();
  inv.pod = *std::move(pod);
  return inv;
}

absl::StatusOr<NetConf> ParseNetConf(absl::string_view text) {
  if (text.size() > kMaxConfigBytes) {
    return CniStatus(kErrDecode, absl::StatusCode::kInvalidArgument,
                     absl::StrCat("stdin: network configuration of ", text.size(),
                                  " bytes; at most ", kMaxConfigBytes));
  }
  Json j = Json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return CniStatus(kErrDecode, absl::StatusCode::kInvalidArgument,
                     "stdin: the network configuration is not a JSON object");
  }
  NetConf conf;
  auto string_key = [&](const char* key, std::string* out, bool required) -> absl::Status {
    auto it = j.find(key);
    if (it == j.end()) {
      if (!required) return absl::OkStatus();
      return CniStatus(kErrInvalidConfig, absl::StatusCode::kInvalidArgument,
                       absl::StrCat("stdin: \"", key, "\" missing"));
    }
    if (!it->is_string() || (required && it->get_ref<const std::string&>().empty())) {
      return CniStatus(kErrInvalidConfig, absl::StatusCode::kInvalidArgument,
                       absl::StrCat("stdin: \"", key, "\" must be a non-empty string"));
    }
    *out = it->get<std::string>();
    return absl::OkStatus();
  };
  absl::Status s = string_key("cniVersion", &conf.cni_version, true);
  if (!s.ok()) return s;
  if (!Supported(conf.cni_version)) {
    return CniStatus(kErrIncompatibleVersion, absl::StatusCode::kFailedPrecondition,
                     absl::StrCat("stdin: \"cniVersion\" ", Quote(conf.cni_version),
                                  " is not supported (0.3.0, 0.3.1, 0.4.0, 1.0.0)"));
  }
  s = string_key("name", &conf.name, true);
  if (!s.ok()) return s;
  s = string_key("type", &conf.type, true);
  if (!s.ok()) return s;
  if (auto it = j.find("prevResult"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) {
      return CniStatus(kErrInvalidConfig, absl::StatusCode::kInvalidArgument,
                       "stdin: \"prevResult\" must be an object");
    }
    conf.prev_result = *it;
  }
  if (j.contains("zdsSocket")) {
    s = string_key("zdsSocket", &conf.zds_socket, true);
    if (!s.ok()) return s;
    if (conf.zds_socket[0] != '/') {
      return CniStatus(kErrInvalidConfig, absl::StatusCode::kInvalidArgument,
                       absl::StrCat("stdin: \"zdsSocket\" ", Quote(conf.zds_socket),
                                    " is not an absolute path"));
    }
  }
  if (auto it = j.find("timeout"); it != j.end()) {
    if (!it->is_number()) {
      return CniStatus(kErrInvalidConfig, absl::StatusCode::kInvalidArgument,
                       "stdin: \"timeout\" must be a number of seconds");
    }
    double seconds = it->get<double>();
    if (!std::isfinite(seconds) || seconds <= 0 || seconds > absl::ToDoubleSeconds(kMaxTimeout)) {
      return CniStatus(
          kErrInvalidConfig, absl::StatusCode::kInvalidArgument,
          absl::StrCat("stdin: \"timeout\" ", it->dump(),
                       " out of range (0 < seconds <= ", absl::ToInt64Seconds(kMaxTimeout), ")"));
    }
    conf.timeout = absl::Seconds(seconds);
  }
  if (auto it = j.find("excludeNamespaces"); it != j.end()) {
    if (!it->is_array()) {
      return CniStatus(kErrInvalidConfig, absl::StatusCode::kInvalidArgument,
                       "stdin: \"excludeNamespaces\" must be a list of namespace names");
    }
    conf.exclude_namespaces.clear();
    for (size_t i = 0; i < it->size(); ++i) {
      const Json& v = (*it)[i];
      if (!v.is_string()) {
        return CniStatus(kErrInvalidConfig, absl::StatusCode::kInvalidArgument,
                         absl::StrCat("stdin: \"excludeNamespaces\"[", i, "] must be a string"));
      }
      conf.exclude_namespaces.push_back(v.get<std::string>());
    }
  }
  return conf;
}

std::string VersionAnswer(absl::string_view stdin_text) {
  // The spec answers with the cniVersion asked for; one ambit-cni does not speak (or none)
  // gets the latest, and the runtime sees from supportedVersions what it may use.
  std::string version(kLatestVersion);
  if (stdin_text.size() <= kMaxConfigBytes) {
    Json in = Json::parse(stdin_text.begin(), stdin_text.end(), nullptr, false);
    if (!in.is_discarded() && in.is_object()) {
      auto it = in.find("cniVersion");
      if (it != in.end() && it->is_string() && Supported(it->get_ref<const std::string&>())) {
        version = it->get<std::string>();
      }
    }
  }
  Json out;
  out["cniVersion"] = version;
  out["supportedVersions"] = Json::array();
  for (absl::string_view v : kSupportedVersions) out["supportedVersions"].push_back(v);
  return Dump(out);
}

absl::StatusOr<std::string> AddAnswer(const NetConf& conf) {
  if (!conf.prev_result.has_value()) {
    return CniStatus(kErrInvalidConfig, absl::StatusCode::kFailedPrecondition,
                     "stdin: \"prevResult\" missing: ambit-cni is a chained plug-in and must "
                     "come after the plug-in that creates the pod's interface");
  }
  Json out = *conf.prev_result;
  out["cniVersion"] = conf.cni_version;
  return Dump(out);
}

std::string ErrorAnswer(absl::string_view cni_version, const absl::Status& status,
                        absl::string_view details) {
  Json out;
  out["cniVersion"] =
      Supported(cni_version) ? std::string(cni_version) : std::string(kLatestVersion);
  out["code"] = CniCode(status);
  out["msg"] = std::string(status.message());
  if (!details.empty()) out["details"] = std::string(details);
  return Dump(out);
}

bool Excluded(const NetConf& conf, const PodRef& pod) {
  return std::find(conf.exclude_namespaces.begin(), conf.exclude_namespaces.end(),
                   pod.namespace_name) != conf.exclude_namespaces.end();
}

}  // namespace ambit::cni
