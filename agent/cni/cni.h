#pragma once

// ambit-cni's reading of a CNI invocation (CNI spec 1.0.0, as libcni runs a plug-in): the
// environment (CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH) and the
// network configuration on stdin, plus the answers a plug-in prints (result, error object,
// version info). Pure: no I/O. Thread-compatible.

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace ambit::cni {

// The spec's well-known error codes (SPEC.md "Error"), and ambit's own (100+ are the plug-in's).
inline constexpr int kErrIncompatibleVersion = 1;
inline constexpr int kErrUnsupportedField = 2;
inline constexpr int kErrInvalidEnv = 4;
inline constexpr int kErrIo = 5;
inline constexpr int kErrDecode = 6;
inline constexpr int kErrInvalidConfig = 7;
inline constexpr int kErrTryAgainLater = 11;
// ambitd answered, and refused the pod (the ack's error), or did not speak ZDS.
inline constexpr int kErrAgentRefused = 999;

// Versions whose result ambit-cni passes on as it came: every one that has prevResult (0.3.0
// introduced it); 0.1.0/0.2.0 results have another shape and no chaining.
inline constexpr absl::string_view kSupportedVersions[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0"};
inline constexpr absl::string_view kLatestVersion = "1.0.0";

// Defaults of the plug-in's configuration keys (README "CNI").
inline constexpr absl::string_view kDefaultZdsSocket = "/var/run/ambit/zds.sock";
inline constexpr absl::Duration kDefaultTimeout = absl::Seconds(10);
inline constexpr absl::Duration kMaxTimeout = absl::Minutes(5);
// Larger network configurations are refused before parsing (a prevResult is a few KiB).
inline constexpr size_t kMaxConfigBytes = 1 << 20;

// A Status that carries the CNI error code to print; CniCode reads it back (kErrIo when absent).
absl::Status CniStatus(int code, absl::StatusCode status_code, absl::string_view message);
int CniCode(const absl::Status& status);

enum class Command { kAdd, kDel, kCheck, kVersion };

// The pod CNI_ARGS names (K8S_POD_*), when the runtime is a Kubernetes one.
struct PodRef {
  std::string namespace_name;
  std::string name;
  std::string uid;  // empty when the runtime did not pass K8S_POD_UID
  std::string infra_container_id;
};

struct Invocation {
  Command command = Command::kVersion;
  std::string container_id;
  std::string netns;
  std::string ifname;
  std::string path;
  std::optional<PodRef> pod;  // absent: CNI_ARGS names no pod (not a Kubernetes pod)
};

// Reads the environment through getenv (nullptr = unset). Errors name the variable; code 4.
absl::StatusOr<Invocation> ParseEnvironment(const std::function<const char*(const char*)>& getenv);

// CNI_ARGS: `K=V` pairs separated by `;` (libcni's format; `IgnoreUnknown` and unknown keys
// are accepted and ignored).
absl::StatusOr<std::optional<PodRef>> ParseCniArgs(absl::string_view args);

struct NetConf {
  std::string cni_version;
  std::string name;
  std::string type;
  // The previous plug-in's result, as it came (key order kept); absent for a first plug-in.
  std::optional<nlohmann::ordered_json> prev_result;
  std::string zds_socket{kDefaultZdsSocket};
  absl::Duration timeout = kDefaultTimeout;
  std::vector<std::string> exclude_namespaces{"kube-system"};
};

// Parses stdin's network configuration. VERSION only needs cniVersion (ParseVersionRequest).
// Errors name the key: code 6 for bytes that are not a JSON object, 1 for a version ambit-cni
// does not speak, 7 for a bad value.
absl::StatusOr<NetConf> ParseNetConf(absl::string_view text);

// VERSION's stdin: `{"cniVersion": "..."}` (may be empty or absent; then the latest).
std::string VersionAnswer(absl::string_view stdin_text);

// ADD's answer: prevResult unchanged but for cniVersion, which is the configuration's (the
// runtime parses the result as the version it asked for). Fails (code 7) without prevResult.
absl::StatusOr<std::string> AddAnswer(const NetConf& conf);

// The error object on stdout: {"cniVersion", "code", "msg", "details"}.
std::string ErrorAnswer(absl::string_view cni_version, const absl::Status& status,
                        absl::string_view details = "");

// True when the pod is to be left alone (namespace excluded).
bool Excluded(const NetConf& conf, const PodRef& pod);

}  // namespace ambit::cni
