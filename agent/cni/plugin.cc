#include "agent/cni/plugin.h"

#include "absl/strings/str_cat.h"

namespace ambit::cni {
namespace {

std::string PodName(const PodRef& pod) { return absl::StrCat(pod.namespace_name, "/", pod.name); }

Outcome Fail(absl::string_view version, const absl::Status& status,
             absl::string_view details = "") {
  return Outcome{ErrorAnswer(version, status, details),
                 absl::StrCat("ambit-cni: ", status.message()), 1};
}

Outcome Add(const Invocation& inv, const NetConf& conf, PodHandOff& handoff, absl::Time now) {
  absl::StatusOr<std::string> answer = AddAnswer(conf);
  if (!answer.ok()) return Fail(conf.cni_version, answer.status());
  if (!inv.pod.has_value()) {
    return Outcome{*std::move(answer), "ambit-cni: CNI_ARGS names no pod; passed through", 0};
  }
  const PodRef& pod = *inv.pod;
  if (Excluded(conf, pod)) {
    return Outcome{*std::move(answer),
                   absl::StrCat("ambit-cni: pod ", PodName(pod), " is in an excluded namespace"),
                   0};
  }
  if (pod.uid.empty()) {
    // ZDS names pods by uid; without one ambitd could never match a later DelWorkload.
    return Fail(conf.cni_version,
                CniStatus(kErrInvalidEnv, absl::StatusCode::kInvalidArgument,
                          absl::StrCat("CNI_ARGS: K8S_POD_UID missing for pod ", PodName(pod),
                                       " (the runtime must pass it: containerd 1.6+, CRI-O)")));
  }
  absl::StatusOr<UniqueFd> netns = handoff.OpenNetns(inv.netns);
  if (!netns.ok()) return Fail(conf.cni_version, netns.status());
  absl::Status added = handoff.Add(conf.zds_socket, pod, netns->get(), now + conf.timeout);
  if (!added.ok()) {
    std::string details;
    if (CniCode(added) == kErrTryAgainLater) {
      details = "the pod is not started uncaptured; the runtime retries the sandbox";
    }
    return Fail(conf.cni_version, added, details);
  }
  return Outcome{
      *std::move(answer),
      absl::StrCat("ambit-cni: pod ", PodName(pod), " (", pod.uid, ") captured by ambitd"), 0};
}

Outcome Del(const Invocation& inv, const NetConf& conf, PodHandOff& handoff, absl::Time now) {
  if (!inv.pod.has_value() || inv.pod->uid.empty() || Excluded(conf, *inv.pod)) {
    return Outcome{};
  }
  // Best effort: ambitd also removes a pod whose namespace went away, and DEL must succeed when
  // the agent is down (the spec: DEL tolerates missing state), or the pod could never be removed.
  absl::Status s = handoff.Del(conf.zds_socket, inv.pod->uid, now + conf.timeout);
  if (!s.ok()) {
    return Outcome{"",
                   absl::StrCat("ambit-cni: DelWorkload for pod ", PodName(*inv.pod),
                                " not delivered (ignored): ", s.message()),
                   0};
  }
  return Outcome{};
}

// CHECK checks what the plug-in can see: the configuration, that the pod's namespace still
// exists, and that ambitd answers on its ZDS socket. ZDS has no question "do you serve pod X",
// so it cannot confirm the capture; ambitd re-checks every enrolled pod's capture itself.
Outcome Check(const Invocation& inv, const NetConf& conf, PodHandOff& handoff, absl::Time now) {
  if (conf.cni_version == "0.3.0" || conf.cni_version == "0.3.1") {
    return Fail(conf.cni_version,
                CniStatus(kErrIncompatibleVersion, absl::StatusCode::kFailedPrecondition,
                          absl::StrCat("CHECK needs cniVersion 0.4.0 or later, the configuration "
                                       "says ",
                                       conf.cni_version)));
  }
  if (!conf.prev_result.has_value()) {
    return Fail(conf.cni_version, CniStatus(kErrInvalidConfig, absl::StatusCode::kInvalidArgument,
                                            "stdin: \"prevResult\" missing (CHECK needs it)"));
  }
  if (!inv.pod.has_value() || Excluded(conf, *inv.pod)) return Outcome{};
  absl::StatusOr<UniqueFd> netns = handoff.OpenNetns(inv.netns);
  if (!netns.ok()) return Fail(conf.cni_version, netns.status());
  absl::Status s = handoff.Probe(conf.zds_socket, now + conf.timeout);
  if (!s.ok()) return Fail(conf.cni_version, s);
  return Outcome{};
}

}  // namespace

Outcome RunCommand(const std::function<const char*(const char*)>& getenv,
                   absl::string_view stdin_text, PodHandOff& handoff, absl::Time now) {
  absl::StatusOr<Invocation> inv = ParseEnvironment(getenv);
  if (!inv.ok()) {
    // The version of the answer: the configuration's when it can be read.
    absl::StatusOr<NetConf> conf = ParseNetConf(stdin_text);
    return Fail(conf.ok() ? conf->cni_version : std::string(kLatestVersion), inv.status());
  }
  if (inv->command == Command::kVersion) return Outcome{VersionAnswer(stdin_text), "", 0};
  absl::StatusOr<NetConf> conf = ParseNetConf(stdin_text);
  if (!conf.ok()) return Fail(kLatestVersion, conf.status());
  switch (inv->command) {
    case Command::kAdd:
      return Add(*inv, *conf, handoff, now);
    case Command::kDel:
      return Del(*inv, *conf, handoff, now);
    case Command::kCheck:
      return Check(*inv, *conf, handoff, now);
    case Command::kVersion:
      break;
  }
  return Outcome{VersionAnswer(stdin_text), "", 0};
}

}  // namespace ambit::cni
