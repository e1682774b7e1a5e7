#include "agent/state/workload_meta.h"

#include "absl/strings/ascii.h"

namespace ambit::state {
namespace {

std::string_view Label(const std::map<std::string, std::string>& labels, const std::string& key) {
  auto it = labels.find(key);
  return it == labels.end() ? std::string_view() : std::string_view(it->second);
}

// Istio's cronJobNameRegexp, `(.+)-\d{8,10}$`: the CronJob's name when `job` is one of its Jobs
// (named after the schedule time in minutes), else empty. Written out rather than a regex
// library for one fixed pattern.
std::string_view CronJobOf(std::string_view job) {
  size_t digits = 0;
  while (digits < job.size() && absl::ascii_isdigit(job[job.size() - 1 - digits])) ++digits;
  if (digits < 8 || digits > 10) return {};
  const size_t dash = job.size() - digits - 1;
  if (dash == 0 || dash >= job.size() || job[dash] != '-') return {};
  return job.substr(0, dash);
}

// `owner` without "-<hash>" when it ends in the hash (Istio checks the suffix without the dash,
// then trims with it).
std::string TrimHash(std::string_view owner, std::string_view hash) {
  std::string suffix = "-";
  suffix += hash;
  if (owner.ends_with(suffix)) owner.remove_suffix(suffix.size());
  return std::string(owner);
}

}  // namespace

std::string WorkloadName(std::string_view pod_name, std::string_view generate_name,
                         const std::vector<OwnerReference>& owners,
                         const std::map<std::string, std::string>& labels) {
  if (generate_name.empty()) return std::string(pod_name);
  const OwnerReference* controller = nullptr;
  for (const OwnerReference& o : owners) {
    if (o.controller) {
      controller = &o;
      break;
    }
  }
  if (controller == nullptr || controller->name.empty()) return std::string(pod_name);
  const std::string_view name = controller->name;
  if (controller->kind == "ReplicaSet") {
    if (std::string_view hash = Label(labels, "pod-template-hash");
        !hash.empty() && name.ends_with(hash)) {
      return TrimHash(name, hash);
    }
    if (std::string_view hash = Label(labels, "rollouts-pod-template-hash");
        !hash.empty() && name.ends_with(hash)) {
      return TrimHash(name, hash);
    }
  } else if (controller->kind == "ReplicationController") {
    if (std::string_view dc = Label(labels, "deploymentconfig"); !dc.empty()) {
      return std::string(dc);
    }
  } else if (controller->kind == "Job") {
    if (std::string_view cron = CronJobOf(name); !cron.empty()) return std::string(cron);
  }
  return std::string(name);
}

std::string CanonicalService(const std::map<std::string, std::string>& labels,
                             std::string_view workload_name) {
  for (const char* key : {"service.istio.io/canonical-name", "app.kubernetes.io/name", "app"}) {
    if (auto it = labels.find(key); it != labels.end()) return it->second;
  }
  return std::string(workload_name);
}

std::string CanonicalRevision(const std::map<std::string, std::string>& labels) {
  for (const char* key :
       {"service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"}) {
    if (auto it = labels.find(key); it != labels.end()) return it->second;
  }
  return "latest";
}

}  // namespace ambit::state
