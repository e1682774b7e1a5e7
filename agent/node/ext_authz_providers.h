#pragma once

// MeshConfig's ext_authz extensionProviders as the waypoint gets them in the snapshot: Istio's
// defaults filled in (timeout 600s, statusOnError 403), header names lower-cased, and `service`
// resolved to a Service of the cluster state. A provider whose service names no Service, or
// whose settings the waypoint cannot use, still goes down, marked `unresolved` with why: a CUSTOM
// policy naming it then denies (fail closed) and the waypoint's log says why, instead of the name
// being unknown there.
//
// `service` is "[<namespace>/]<hostname>". istiod looks the hostname up in its service registry,
// where a Kubernetes Service is "<name>.<namespace>.svc.<cluster domain>" (a namespace part must
// then be the Service's own). ambit takes that form and the short ones a pod's resolver would
// (`<name>.<namespace>.svc`, `<name>.<namespace>`, and a bare `<name>` when the namespace part
// says where).
//
// Pure function of its inputs: thread-safe.

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/authz/ext_authz.h"
#include "agent/state/model.h"

namespace ambit::node {

// Istio's default domain suffix; ambit takes no other.
inline constexpr absl::string_view kClusterDomain = "cluster.local";

struct ExtAuthzProviders {
  std::vector<authz::ExtAuthzProvider> providers;  // in MeshConfig order, each name once
  // One line per provider that is unresolved or skipped, naming the provider and the field.
  std::vector<std::string> warnings;
};

// The Service key ("namespace/name") `service` names in `services` (by Service::Key()), or
// NotFound / InvalidArgument saying why.
absl::StatusOr<std::string> ResolveProviderService(
    absl::string_view service, const std::map<std::string, state::Service>& services,
    absl::string_view cluster_domain = kClusterDomain);

// Every ext_authz provider of `state.mesh`; other kinds are left out.
ExtAuthzProviders ConvertExtAuthzProviders(const state::ClusterState& state,
                                           absl::string_view cluster_domain = kClusterDomain);

}  // namespace ambit::node
