#pragma once

// The cluster as ambit sees it: pods, namespaces, services and mesh-wide settings. Plain value
// types with no YAML or Protobuf in them; the config layer fills them, the rest of the agent reads
// them. Thread-compatible: build a ClusterState once, then share it as `shared_ptr<const ...>`.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "agent/common/ip_address.h"
#include "agent/state/labels.h"

namespace ambit::state {

// The annotation that names an enrolled pod's network namespace, e.g. /var/run/netns/web-1.
inline constexpr std::string_view kNetnsAnnotation = "ambit.dev/netns";
// Istio ambient's enrollment label, on a pod or its namespace: "ambient" captures, "none" on a
// pod opts it out of its namespace's choice.
inline constexpr std::string_view kDataplaneModeLabel = "istio.io/dataplane-mode";

struct Pod {
  std::string name;
  std::string namespace_name = "default";
  std::string uid;      // metadata.uid, may be empty
  SharedLabels labels;  // shared with every pod of the configuration that has the same ones
  // Only the annotations ambit reads (kWaypointBypassAnnotation); the parser drops the rest.
  std::map<std::string, std::string> annotations;
  std::string service_account = "default";  // spec.serviceAccountName (or spec.serviceAccount)
  std::string node_name;                    // spec.nodeName
  // Istio's workload metadata (telemetry labels): the owner as Istio names it (a Deployment's
  // name, not the pod's), and the canonical service and revision. Empty: not known.
  std::string workload_name;
  std::string canonical_service;
  std::string canonical_revision;
  std::vector<ambit::IpAddress> ips;  // status.podIPs[].ip, else status.podIP
  std::string netns_path;             // annotation ambit.dev/netns, empty if absent
  std::string source_file;            // the file (or source) the pod came from
  // metadata.creationTimestamp; nullopt when absent (hand-written manifests usually have none).
  std::optional<absl::Time> creation_time;
  // When this agent first saw the pod, and in which load of the configuration (set by the config
  // loader; a pod deleted and added again is seen anew). Only used to tell which of two pods
  // claiming one address came first (IsOlder).
  absl::Time first_seen = absl::InfinitePast();
  uint64_t first_seen_load = 0;

  // "namespace/name".
  std::string Key() const;
  friend bool operator==(const Pod&, const Pod&) = default;
};

// Whether a counts as older than b when both claim an address. A pod's age is its
// metadata.creationTimestamp, else the time this agent first saw it; equal ages go to the pod seen
// in an earlier load, then to the smaller "namespace/name". A total order: exactly one of
// IsOlder(a, b) and IsOlder(b, a) holds for two different pods.
bool IsOlder(const Pod& a, const Pod& b);

// A pod left out because another, older pod holds one of its addresses (see ResolveIpConflicts).
struct IpConflict {
  ambit::IpAddress ip;      // the first address of the pod that is held by the other
  std::string holder;       // "namespace/name" of the pod that keeps the address
  std::string holder_file;  // the file the holder came from
  std::string holder_age;   // why the holder counts as older, e.g. "created 2024-05-01..."

  // "IP 198.18.0.5 held by prod/web-0".
  std::string Summary() const;
  friend bool operator==(const IpConflict&, const IpConflict&) = default;
};

struct Namespace {
  std::string name;
  std::map<std::string, std::string> labels;
  std::map<std::string, std::string> annotations;
  std::string source_file;

  friend bool operator==(const Namespace&, const Namespace&) = default;
};

struct ServicePort {
  std::string name;
  uint16_t port = 0;
  std::string protocol = "TCP";
  std::string target_port;   // a port number or a container port name, as text
  std::string app_protocol;  // spec.ports[].appProtocol, as written

  friend bool operator==(const ServicePort&, const ServicePort&) = default;
};

struct Service {
  std::string name;
  std::string namespace_name = "default";
  std::map<std::string, std::string> labels;  // metadata.labels (istio.io/use-waypoint)
  std::vector<ambit::IpAddress> cluster_ips;  // empty for headless services
  std::map<std::string, std::string> selector;
  std::vector<ServicePort> ports;
  std::string source_file;

  // "namespace/name".
  std::string Key() const;
  friend bool operator==(const Service&, const Service&) = default;
};

// A Gateway API Gateway (gateway.networking.k8s.io v1 or v1beta1). Only what makes it a waypoint
// is kept: its class and labels (istio.io/waypoint-for); listeners and addresses are the
// waypoint's own business. agent/state/waypoint.h says who uses it.
struct Gateway {
  std::string name;
  std::string namespace_name = "default";
  std::string gateway_class;  // spec.gatewayClassName
  std::map<std::string, std::string> labels;
  std::string source_file;

  // "namespace/name".
  std::string Key() const;
  friend bool operator==(const Gateway&, const Gateway&) = default;
};

// MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationRequestBody.
struct ExtAuthzRequestBody {
  uint32_t max_request_bytes = 0;
  bool allow_partial_message = false;
  bool pack_as_bytes = false;

  friend bool operator==(const ExtAuthzRequestBody&, const ExtAuthzRequestBody&) = default;
};

// One MeshConfig.extensionProviders entry, as named by AuthorizationPolicy `provider.name`. The
// two external-authorizer kinds are kept field by field (Istio's JSON names in the comments);
// other kinds (tracing, logging, metrics) are only named, so that a CUSTOM policy naming one can be
// told apart from one naming no provider at all.
struct ExtensionProvider {
  enum class Kind { kEnvoyExtAuthzHttp, kEnvoyExtAuthzGrpc, kOther };

  std::string name;
  Kind kind = Kind::kOther;
  std::string kind_name;  // the YAML key: "envoyExtAuthzHttp", "envoyExtAuthzGrpc", "zipkin", ...

  // envoyExtAuthzHttp and envoyExtAuthzGrpc.
  std::string service;                      // service: "[<namespace>/]<hostname>"
  uint16_t port = 0;                        // port
  std::optional<absl::Duration> timeout;    // timeout; nullopt: Istio's default, 600s
  bool fail_open = false;                   // failOpen
  std::optional<bool> clear_route_cache;    // clearRouteCache
  std::optional<uint32_t> status_on_error;  // statusOnError; nullopt: 403
  std::optional<ExtAuthzRequestBody> include_request_body_in_check;  // includeRequestBodyInCheck
  // envoyExtAuthzHttp only.
  std::string path_prefix;  // pathPrefix
  // includeRequestHeadersInCheck, plus the deprecated includeHeadersInCheck.
  std::vector<std::string> include_request_headers_in_check;
  std::map<std::string, std::string> include_additional_headers_in_check;
  std::vector<std::string> headers_to_upstream_on_allow;    // headersToUpstreamOnAllow
  std::vector<std::string> headers_to_downstream_on_deny;   // headersToDownstreamOnDeny
  std::vector<std::string> headers_to_downstream_on_allow;  // headersToDownstreamOnAllow

  bool IsExtAuthz() const { return kind != Kind::kOther; }
  friend bool operator==(const ExtensionProvider&, const ExtensionProvider&) = default;
};

// The subset of Istio's MeshConfig that ambit uses.
struct MeshConfig {
  std::string trust_domain = "cluster.local";
  // trustDomainAliases: trust domains whose identities count as this mesh's (a migration from
  // or to another trust domain). Validated, without duplicates, in file order.
  std::vector<std::string> trust_domain_aliases;
  std::string root_namespace = "istio-system";
  std::vector<ExtensionProvider> extension_providers;  // extensionProviders, in file order
  // pathNormalization.normalization: "" (Istio's default, BASE), "NONE", "BASE", "MERGE_SLASHES"
  // or "DECODE_AND_MERGE_SLASHES".
  std::string path_normalization;

  // The provider called `name`, or nullptr.
  const ExtensionProvider* FindExtensionProvider(std::string_view name) const;

  friend bool operator==(const MeshConfig&, const MeshConfig&) = default;
};

struct ClusterState {
  MeshConfig mesh;
  std::map<std::string, Pod> pods;              // by Pod::Key()
  std::map<std::string, Namespace> namespaces;  // by name
  std::map<std::string, Service> services;      // by Service::Key()
  std::map<std::string, Gateway> gateways;      // by Gateway::Key()

  // Pods that claim an address an older pod holds, by Pod::Key(): they stay listed (so that
  // `ambitctl workloads` can say why) but own no address, are not enrolled and are not sent to
  // the data plane. Filled by ResolveIpConflicts.
  std::map<std::string, IpConflict> ip_conflicts;

  // The pod that owns ip, or nullptr. A pod in ip_conflicts owns no address. Linear in the number
  // of pods: callers on a hot path build their own index.
  const Pod* FindPodByIp(const ambit::IpAddress& ip) const;
  // Whether the pod with this key lost an address to an older pod.
  bool HasIpConflict(const std::string& pod_key) const { return ip_conflicts.contains(pod_key); }

  friend bool operator==(const ClusterState&, const ClusterState&) = default;
};

// Whether ambit captures the pod on its node: it names its network namespace (ambit.dev/netns),
// or Istio's label enrolls it as in ambient mode (istio.io/dataplane-mode=ambient on the pod, or
// on its namespace while the pod's own label is not "none"). In a cluster the API server's pods
// name no namespace, so the label is how they join; their namespace is found by IP
// (enroll::NetnsFinder). A hostNetwork pod's IP is the node's, which the finder refuses.
bool InMesh(const Pod& pod, const ClusterState& state);

// True when the pod runs on node_name and is InMesh.
bool IsEnrolled(const Pod& pod, const ClusterState& state, std::string_view node_name);

// Gives every address to one pod: pods are taken oldest first (IsOlder), and a pod that claims an
// address an older pod already holds gets none of its addresses; it is recorded in
// state->ip_conflicts instead (which this replaces). Deterministic: the result depends only on
// the pods, never on the order they were loaded in.
void ResolveIpConflicts(ClusterState* state);

// The SPIFFE identity, spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
std::string SpiffeId(const MeshConfig& mesh, const Pod& pod);

// Whether `svc`'s selector picks `pod` (same namespace, every selector label equal). A Service
// without a selector picks no pod.
bool Selects(const Service& svc, const Pod& pod);

}  // namespace ambit::state
