#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/authz/engine.h"
#include "agent/common/ip_address.h"
#include "agent/mesh/model.h"

namespace ambit::dataplane::v1 {
class Snapshot;
}

namespace ambit::tunnel {

// The routing view of one Service: ports as a map, endpoints as the snapshot's own workloads.
struct ServiceInfo {
  std::string namespace_name, name;
  std::vector<IpAddress> cluster_ips;
  std::map<uint16_t, uint16_t> target_ports;  // TCP service port -> pod port
  std::vector<const mesh::Workload*> endpoints;
};

// Where an outbound connection goes.
struct Route {
  enum class Kind { kPassthrough, kHbone };
  Kind kind = Kind::kPassthrough;
  SocketAddress target;                      // the pod address (a Service IP is resolved)
  const mesh::Workload* workload = nullptr;  // set for kHbone
  const ServiceInfo* service = nullptr;      // set when dst was a Service IP
  // Both pointers are the snapshot's: valid while the MeshSnapshot that resolved them lives.
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
  // The workload owning `ip`, or nullptr. Valid while this snapshot lives.
  const mesh::Workload* WorkloadByIp(const IpAddress& ip) const;
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
  // Never resized after indexing: the index and services point into it.
  std::vector<mesh::Workload> workloads_;
  absl::flat_hash_map<IpAddress, const mesh::Workload*> by_ip_;
  absl::flat_hash_map<IpAddress, std::shared_ptr<const ServiceInfo>> services_;
  std::unique_ptr<authz::Engine> authz_;
  std::vector<std::string> authz_errors_;
  absl::flat_hash_set<uint16_t> reserved_ports_;
};

}  // namespace ambit::tunnel
