#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/authn/model.h"
#include "agent/authz/engine.h"
#include "agent/authz/ext_authz.h"
#include "agent/common/ip_address.h"
#include "agent/mesh/model.h"

namespace ambit::dataplane::v1 {
class Snapshot;
}

namespace ambit::tunnel {

// A waypoint with its pods as the snapshot's own workloads.
struct WaypointInfo {
  std::string key;  // "namespace/name" of its Gateway
  std::vector<const mesh::Workload*> instances;

  // Whether `principal` (a verified SPIFFE ID) is one of its pods' identities.
  bool IsIdentity(const std::string& principal) const;
};

// The routing view of one Service: ports as a map, endpoints as the snapshot's own workloads.
struct ServiceInfo {
  std::string namespace_name, name;
  std::vector<IpAddress> cluster_ips;
  std::map<uint16_t, uint16_t> target_ports;            // TCP service port -> pod port
  std::map<uint16_t, mesh::AppProtocol> app_protocols;  // TCP service port -> declared protocol
  std::vector<const mesh::Workload*> endpoints;
  const WaypointInfo* waypoint = nullptr;  // traffic to a cluster IP goes through it
};

// Where an outbound connection goes.
struct Route {
  // kRefused: the destination uses a waypoint that has no pod to send to (`refused` says so).
  enum class Kind { kPassthrough, kHbone, kRefused };
  Kind kind = Kind::kPassthrough;
  // The pod address (a Service IP is resolved), or, through a waypoint, the address dialled:
  // ztunnel's CONNECT target, the service or pod address the waypoint forwards to.
  SocketAddress target;
  // Set for kHbone: where the HBONE connection goes (its 15008) and whose identity it proves.
  // Through a waypoint, the waypoint's pod.
  const mesh::Workload* workload = nullptr;
  IpAddress hbone_ip;                      // kHbone: the address of `workload` to dial
  const ServiceInfo* service = nullptr;    // set when dst was a Service IP
  const WaypointInfo* waypoint = nullptr;  // set when the traffic goes through a waypoint
  std::string refused;                     // kRefused: why
  // The pointers are the snapshot's: valid while the MeshSnapshot that resolved them lives.
};

// The mesh as of one configuration version: the shared model (agent/mesh) indexed for the data
// path. Immutable; shared by workers through shared_ptr<const MeshSnapshot>, replaced whole on
// every update. Per peer pod it holds the one mesh::Workload record and an index entry per
// address.
class MeshSnapshot {
 public:
  // The empty configuration (before the first snapshot arrives).
  MeshSnapshot() = default;
  // A large snapshot hands its memory back to the kernel when it goes (malloc_trim): the last
  // reference is usually a worker's, dropped when it switches to the next snapshot, after the
  // control thread's own trim has run.
  ~MeshSnapshot();
  // Indexes `snapshot`; an AuthorizationPolicy that does not compile is recorded in
  // authz_errors() and makes Authorize deny everything.
  static std::shared_ptr<const MeshSnapshot> Create(mesh::Snapshot snapshot);
  // Maps (agent/mesh/wire.h) and indexes a snapshot from the wire. An error names what is wrong;
  // the caller refuses the whole generation.
  static absl::StatusOr<std::shared_ptr<const MeshSnapshot>> FromProto(
      const ambit::dataplane::v1::Snapshot& s);
  // The same from a serialized Snapshot (mesh::DecodeSnapshot): the form to use for a large
  // one, which is never held whole as a message.
  static absl::StatusOr<std::shared_ptr<const MeshSnapshot>> Decode(absl::string_view bytes);

  uint64_t version() const { return version_; }
  const std::string& trust_domain() const { return trust_domain_; }
  // MeshConfig trustDomainAliases: HBONE peers of these trust domains are accepted.
  const std::vector<std::string>& trust_domain_aliases() const { return trust_domain_aliases_; }
  // MeshConfig rootNamespace ("istio-system" when the snapshot names none).
  const std::string& root_namespace() const { return root_namespace_; }
  // Istio's cluster name for telemetry labels; empty: not known.
  const std::string& cluster_id() const { return cluster_id_; }
  // The Service an inbound connection to `workload` (enrolled here) on pod port `port` was
  // for, as ztunnel guesses it for its destination_service label: the first of the workload's
  // services with a TCP port mapped to `port`. nullptr when none.
  const ServiceInfo* InboundService(const mesh::Workload& workload, uint16_t port) const;
  // Every workload of the snapshot.
  const std::vector<mesh::Workload>& workloads() const { return workloads_; }
  // The workload owning `ip`, or nullptr. Valid while this snapshot lives.
  const mesh::Workload* WorkloadByIp(const IpAddress& ip) const;
  // A destination that is a mesh pod (directly or behind a Service IP) goes over HBONE to that
  // pod; anything else passes through. `pick` spreads connections over a service's endpoints
  // (and a waypoint's pods). A service (for a cluster IP) or pod (for its own address) that uses
  // a waypoint is reached over HBONE to the waypoint instead, unless the connection comes from
  // one of that waypoint's own pods (`source_ips` are the client pod's addresses).
  Route Resolve(const SocketAddress& dst, uint64_t pick,
                const std::vector<IpAddress>& source_ips = {}) const;

  // The waypoint check, then AuthorizationPolicy, for a connection arriving at a local workload
  // (L4: what the node tunnel can know). A workload that uses a waypoint, or that a service using
  // one selects, accepts only that waypoint's identities (bypass closed) unless its
  // waypoint_bypass_allowed; the denial's decided_by is "waypoint <namespace/name>". `principal` is
  // the client's verified SPIFFE ID, empty for plaintext. OK, or PermissionDenied with the
  // explanation (which policy, which rule). AUDIT and dry-run results are logged, never enforced.
  absl::Status Authorize(const SocketAddress& source, const SocketAddress& destination,
                         const std::string& principal, std::string* decided_by) const;
  const std::vector<std::string>& authz_errors() const { return authz_errors_; }
  // The compiled policies; null when authz_errors() is not empty (then everything is denied).
  const authz::Engine* engine() const { return authz_.get(); }

  // ambit-waypoint: the waypoint that `pod` (a local pod) is an instance of, or nullptr.
  const WaypointInfo* WaypointOf(const mesh::Workload& pod) const;
  // ambit-waypoint: what a request arriving at waypoint `wp` for `dst` is decided against: the
  // destination's namespace (and labels), the waypoint, and the service when `dst` is a cluster
  // IP. nullopt, with `why`, when `dst` does not use `wp`: a waypoint forwards only traffic bound
  // to it, or any mesh identity could borrow the waypoint's identity to reach anything.
  // `app` (may be null) gets the port's declared application protocol (kDetect when the port is
  // not declared, as for a pod's own address).
  std::optional<authz::Workload> WaypointTarget(const WaypointInfo& wp, const SocketAddress& dst,
                                                std::string* why,
                                                mesh::AppProtocol* app = nullptr) const;

  // A port of one of ambit's own listeners (15001, 15006, 15008, and the agent's metrics and
  // readiness ports): the data plane never delivers a connection there.
  bool IsReservedPort(uint16_t port) const;

  // Every RequestAuthentication of the generation, of every namespace, as the wire mapping
  // checked them, in the agent's order (by namespace/name). For the waypoint, which
  // authenticates requests with them; the node tunnel sees no HTTP and uses none.
  const std::vector<authn::RequestAuthentication>& request_authentications() const {
    return request_authentications_;
  }

  // ambit-waypoint: the ext_authz provider called `name` (MeshConfig extensionProviders), or
  // nullptr. Valid while this snapshot lives.
  const authz::ExtAuthzProvider* FindExtAuthzProvider(std::string_view name) const;
  const std::vector<authz::ExtAuthzProvider>& ext_authz_providers() const {
    return ext_authz_providers_;
  }
  // Where checks of `provider` go: its Service's first cluster IP and the provider's port (a TCP
  // port of the Service), dialled like any connection from the waypoint's pod (Resolve picks an
  // endpoint). nullopt, with `why` (may be null), when the provider is unresolved, its Service is
  // headless or lacks the port.
  std::optional<SocketAddress> ExtAuthzTarget(const authz::ExtAuthzProvider& provider,
                                              std::string* why = nullptr) const;

 private:
  uint64_t version_ = 0;
  std::string trust_domain_;
  std::vector<std::string> trust_domain_aliases_;
  std::string root_namespace_ = "istio-system";
  std::string cluster_id_;
  // Never resized after indexing: the index and services point into it.
  std::vector<mesh::Workload> workloads_;
  absl::flat_hash_map<IpAddress, const mesh::Workload*> by_ip_;
  absl::flat_hash_map<IpAddress, std::shared_ptr<const ServiceInfo>> services_;
  absl::flat_hash_map<std::string, std::unique_ptr<WaypointInfo>> waypoints_;
  // Per workload enrolled here: the services selecting it (InboundService).
  absl::flat_hash_map<const mesh::Workload*, std::vector<std::shared_ptr<const ServiceInfo>>>
      local_services_;
  // Per workload enrolled here: the waypoints traffic to it must come through.
  absl::flat_hash_map<const mesh::Workload*, std::vector<const WaypointInfo*>> bound_to_;
  std::unique_ptr<authz::Engine> authz_;
  std::vector<std::string> authz_errors_;
  absl::flat_hash_set<uint16_t> reserved_ports_;
  std::vector<authn::RequestAuthentication> request_authentications_;
  std::vector<authz::ExtAuthzProvider> ext_authz_providers_;
  // By Service key, only the services a provider names (headless ones too).
  absl::flat_hash_map<std::string, std::shared_ptr<const ServiceInfo>> ext_authz_services_;
};

}  // namespace ambit::tunnel
