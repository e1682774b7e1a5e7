#pragma once

// Istio's workload metadata for a pod, derived as istiod derives it from Kubernetes objects: the
// workload name (the owner the pod's controller reference leads to) and the canonical service
// and revision (from labels). Telemetry labels (source_workload, source_canonical_service, ...)
// and the config dump show them. Pure functions on plain values; thread-safe.

#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace ambit::state {

// One entry of metadata.ownerReferences, as far as the workload name needs it.
struct OwnerReference {
  std::string kind;
  std::string name;
  bool controller = false;

  friend bool operator==(const OwnerReference&, const OwnerReference&) = default;
};

// The workload a pod belongs to, as Istio names it (pkg/kube GetDeployMetaFromPod): only for a
// pod whose name was generated (metadata.generateName set), its controller reference names the
// workload: a ReplicaSet whose name ends in the pod-template-hash label is its Deployment's (the
// hash trimmed), likewise an Argo Rollout's (rollouts-pod-template-hash); a ReplicationController
// of an OpenShift DeploymentConfig is the deploymentconfig label; a Job named <cronjob>-<8 to 10
// digits> is its CronJob's; any other controller is itself. Else the pod's own name.
std::string WorkloadName(std::string_view pod_name, std::string_view generate_name,
                         const std::vector<OwnerReference>& owners,
                         const std::map<std::string, std::string>& labels);

// Istio's canonical service: label service.istio.io/canonical-name, else app.kubernetes.io/name,
// else app, else the workload name.
std::string CanonicalService(const std::map<std::string, std::string>& labels,
                             std::string_view workload_name);

// Istio's canonical revision: label service.istio.io/canonical-revision, else
// app.kubernetes.io/version, else version, else "latest".
std::string CanonicalRevision(const std::map<std::string, std::string>& labels);

}  // namespace ambit::state
