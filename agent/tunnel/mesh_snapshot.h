#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "agent/authz/engine.h"
#include "agent/common/ip_address.h"

namespace ambit::dataplane::v1 {
class Snapshot;
}

namespace ambit::tunnel {

enum class MtlsMode { kStrict, kPermissive, kDisable };
const char* MtlsModeName(MtlsMode mode);

// PeerAuthentication as resolved by the agent for one local workload.
struct MtlsPolicy {
  MtlsMode mode = MtlsMode::kPermissive;  // Istio's default when nothing is configured
  std::string policy;                     // namespace/name; empty: the default
  std::map<uint16_t, std::pair<MtlsMode, std::string>> ports;  // portLevelMtls overrides

  std::pair<MtlsMode, std::string> ForPort(uint16_t port) const {
    auto it = ports.find(port);
    return it == ports.end() ? std::make_pair(mode, policy) : it->second;
  }
};

// A pod anywhere in the cluster, as the data plane needs it for routing and policy.
struct WorkloadInfo {
  std::string uid;  // namespace/name
  std::string namespace_name, name, service_account, spiffe_id, node;
  std::vector<IpAddress> ips;
  std::map<std::string, std::string> labels;
  bool enrolled_here = false;
  bool in_mesh = false;  // captured by ambit on its node: reachable over HBONE
  MtlsPolicy mtls;       // meaningful for pods enrolled here
};

struct ServiceInfo {
  std::string namespace_name, name;
  std::vector<IpAddress> cluster_ips;
  std::map<uint16_t, uint16_t> target_ports;  // service port -> pod port
  std::vector<std::shared_ptr<const WorkloadInfo>> endpoints;
};

// Where an outbound connection goes.
struct Route {
  enum class Kind { kPassthrough, kHbone };
  Kind kind = Kind::kPassthrough;
  SocketAddress target;                            // the pod address (a Service IP is resolved)
  std::shared_ptr<const WorkloadInfo> workload;    // set for kHbone
  const ServiceInfo* service = nullptr;            // set when dst was a Service IP
};

// The mesh as of one configuration version. Immutable; shared by workers through
// shared_ptr<const MeshSnapshot>, replaced whole on every update.
class MeshSnapshot {
 public:
  static std::shared_ptr<const MeshSnapshot> FromProto(const ambit::dataplane::v1::Snapshot& s);

  uint64_t version() const { return version_; }
  const std::string& trust_domain() const { return trust_domain_; }
  std::shared_ptr<const WorkloadInfo> WorkloadByIp(const IpAddress& ip) const;
  // A destination that is a mesh pod (directly or behind a Service IP) goes over HBONE to that
  // pod; anything else passes through. `pick` spreads connections over a service's endpoints.
  Route Resolve(const SocketAddress& dst, uint64_t pick) const;

  // AuthorizationPolicy for a connection arriving at a local workload (L4: what the node tunnel
  // can know). `principal` is the client's verified SPIFFE ID, empty for plaintext. OK, or
  // PermissionDenied with the explanation (which policy, which rule). AUDIT and dry-run results
  // are logged, never enforced.
  absl::Status Authorize(const SocketAddress& source, const SocketAddress& destination,
                         const std::string& principal, std::string* decided_by) const;
  const std::vector<std::string>& authz_errors() const { return authz_errors_; }

  // A port of one of ambit's own listeners (15001, 15006, 15008, and the agent's metrics and
  // readiness ports): the data plane never delivers a connection there.
  bool IsReservedPort(uint16_t port) const;

 private:
  uint64_t version_ = 0;
  std::string trust_domain_;
  absl::flat_hash_map<IpAddress, std::shared_ptr<const WorkloadInfo>> workloads_;
  absl::flat_hash_map<IpAddress, std::shared_ptr<const ServiceInfo>> services_;
  std::unique_ptr<authz::Engine> authz_;
  std::vector<std::string> authz_errors_;
  absl::flat_hash_set<uint16_t> reserved_ports_;
};

}  // namespace ambit::tunnel
