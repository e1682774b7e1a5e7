#pragma once

// The cluster as ambit sees it: pods, namespaces, services and mesh-wide settings. Plain value
// types with no YAML or Protobuf in them; the config layer fills them, the rest of the agent reads
// them. Thread-compatible: build a ClusterState once, then share it as `shared_ptr<const ...>`.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "agent/common/ip_address.h"

namespace ambit::state {

// The annotation that names an enrolled pod's network namespace, e.g. /var/run/netns/web-1.
inline constexpr std::string_view kNetnsAnnotation = "ambit.dev/netns";

struct Pod {
  std::string name;
  std::string namespace_name = "default";
  std::string uid;  // metadata.uid, may be empty
  std::map<std::string, std::string> labels;
  std::map<std::string, std::string> annotations;
  std::string service_account = "default";  // spec.serviceAccountName (or spec.serviceAccount)
  std::string node_name;                    // spec.nodeName
  std::vector<ambit::IpAddress> ips;        // status.podIPs[].ip, else status.podIP
  std::string netns_path;                   // annotation ambit.dev/netns, empty if absent
  std::string source_file;                  // the file (or source) the pod came from

  // "namespace/name".
  std::string Key() const;
  friend bool operator==(const Pod&, const Pod&) = default;
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
  std::string target_port;  // a port number or a container port name, as text

  friend bool operator==(const ServicePort&, const ServicePort&) = default;
};

struct Service {
  std::string name;
  std::string namespace_name = "default";
  std::vector<ambit::IpAddress> cluster_ips;  // empty for headless services
  std::map<std::string, std::string> selector;
  std::vector<ServicePort> ports;
  std::string source_file;

  // "namespace/name".
  std::string Key() const;
  friend bool operator==(const Service&, const Service&) = default;
};

// The subset of Istio's MeshConfig that ambit uses.
struct MeshConfig {
  std::string trust_domain = "cluster.local";
  std::string root_namespace = "istio-system";

  friend bool operator==(const MeshConfig&, const MeshConfig&) = default;
};

struct ClusterState {
  MeshConfig mesh;
  std::map<std::string, Pod> pods;              // by Pod::Key()
  std::map<std::string, Namespace> namespaces;  // by name
  std::map<std::string, Service> services;      // by Service::Key()

  // The pod that owns ip, or nullptr. If several pods claim the address, the first by key wins.
  // Linear in the number of pods: callers on a hot path build their own index.
  const Pod* FindPodByIp(const ambit::IpAddress& ip) const;

  friend bool operator==(const ClusterState&, const ClusterState&) = default;
};

// True when the pod runs on node_name and names its network namespace (ambit.dev/netns).
bool IsEnrolled(const Pod& pod, std::string_view node_name);

// The SPIFFE identity, spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
std::string SpiffeId(const MeshConfig& mesh, const Pod& pod);

}  // namespace ambit::state
