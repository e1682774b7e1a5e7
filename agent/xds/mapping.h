#pragma once

// istiod's workload API resources, as ztunnel receives them over delta ADS, mapped into ambit's
// model: the same objects (config::ConfigObject) the configuration directory and the API server
// yield, so that the loader merges, checks and reports them like any other source.
//
//  - istio.workload.Workload -> state::Pod: uid, name, namespace, service account, node,
//    addresses; HBONE workloads are in the mesh (Istio's dataplane-mode label), others are peers
//    only; the waypoint (by hostname) as Istio's use-waypoint labels plus the waypoint's Gateway;
//    Istio's workload metadata (workload_name, canonical service and revision); the
//    WORKLOAD_SELECTOR policies and services that select it as labels (below).
//  - istio.workload.Service -> state::Service: hostname's name, namespace, VIPs, ports, waypoint;
//    its endpoints are the workloads that name it, selected through a label.
//  - istio.security.Authorization -> authz::Policy under istiod's name and namespace (what
//    `ambitctl check` and `ambitctl policies` print), scope GLOBAL in the root namespace,
//    NAMESPACE without selector, WORKLOAD_SELECTOR selecting the label its workloads carry.
//    Converted PeerAuthentications (istio_converted_static_strict: DENY unless a principal is
//    present) are ordinary DENY policies, which is how STRICT keeps plaintext from the app.
//
// Istio's API has no labels for workloads and no selectors for services or policies: istiod
// resolves both and names the result on the workload. Labels under kLabelPrefix carry that
// resolution into the model, whose services and policies select by label; nothing else sets
// them, and every label of an xDS pod comes from here.
//
// Every resource is mapped on its own. A resource that cannot be mapped faithfully (an unknown
// enum value, a malformed address, a match ambit cannot express) is refused with an error naming
// the resource and field, never mapped in part: the xDS client NACKs it and keeps its last good
// version. Pure functions, thread-safe.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/config/kube_yaml.h"
#include "istio/security/authorization.pb.h"
#include "istio/workload/workload.pb.h"

namespace ambit::xds {

inline constexpr absl::string_view kAddressType = "type.googleapis.com/istio.workload.Address";
inline constexpr absl::string_view kAuthorizationType =
    "type.googleapis.com/istio.security.Authorization";
// The source name in errors and Pod::source_file.
inline constexpr absl::string_view kSourceName = "xds";

// Labels this mapping gives xDS pods (see above).
inline constexpr absl::string_view kLabelPrefix = "xds.ambit.dev/";
// "xds.ambit.dev/authz/<namespace>/<name>": the WORKLOAD_SELECTOR policy selects this pod.
std::string PolicyLabel(absl::string_view policy_namespace, absl::string_view policy_name);
// "xds.ambit.dev/service/<namespace>/<hostname>": the service of that name selects this pod.
std::string ServiceLabel(absl::string_view service_namespace, absl::string_view hostname);

// An expansion of one Authorization rule into ambit's rules (one from, one to and conditions
// each) may yield at most this many; more is refused rather than compiled into a huge policy.
inline constexpr size_t kMaxRulesPerPolicy = 256;

// What the mapping needs from the mesh configuration (mesh.yaml, from --config-dir).
struct MapContext {
  std::string trust_domain = "cluster.local";   // a workload of another is refused
  std::string root_namespace = "istio-system";  // where GLOBAL policies apply from

  friend bool operator==(const MapContext&, const MapContext&) = default;
};

// The objects one resource maps to, by config::ParsedObject id ("Pod ns/name",
// "Service ns/name", "Gateway ns/name", "AuthorizationPolicy ns/name").
using Mapped = std::vector<config::ParsedObject>;

// An Address resource (a workload or a service). The error names the resource
// ("Workload <uid>", "Service ns/hostname") and the field.
absl::StatusOr<Mapped> MapAddress(const istio::workload::Address& address, const MapContext& ctx);
// An Authorization resource; the policy it yields passed authz::Compile.
absl::StatusOr<Mapped> MapAuthorization(const istio::security::Authorization& authorization,
                                        const MapContext& ctx);

// Decodes `bytes` as a resource of `type_url` (kAddressType or kAuthorizationType) and maps it.
// `name` is the resource's name in the response; for an Address it must be the workload's uid or
// "<namespace>/<hostname>" of the service, for an Authorization "<namespace>/<name>", as istiod
// names them (removals come by name only, so a mismatch would leave a resource unremovable).
absl::StatusOr<Mapped> MapResource(absl::string_view type_url, absl::string_view name,
                                   absl::string_view bytes, const MapContext& ctx);

}  // namespace ambit::xds
