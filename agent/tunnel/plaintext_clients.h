#pragma once

// The plaintext clients of local pods, for `ambitctl strict-readiness`: who would be refused if a
// pod's PeerAuthentication became STRICT. Every plaintext connection that reached a pod's
// inbound-plaintext listener and got as far as the PeerAuthentication decision is recorded per
// (pod, port, source address), whether it was delivered (PERMISSIVE, DISABLE) or refused
// (STRICT), with the source's mesh workload when the snapshot knows the address.
//
// Bounded: at most kMaxEntries sources per worker; a new one beyond evicts the source seen least
// recently (counted), so a scan from many addresses costs memory once, not per address. The
// per-(pod, port) connection counters behind ambit_plaintext_connections_total are bounded the
// same way (kMaxPorts; beyond, counted under port "other").
//
// Thread-compatible: each worker owns one and touches it on its own thread only; the control
// thread merges the workers' answers (MergePlaintextClients).

#include <cstdint>
#include <list>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "agent/common/ip_address.h"

namespace ambit::dataplane::v1 {
class StatsResponse;
}  // namespace ambit::dataplane::v1

namespace ambit::tunnel {

class PlaintextClients {
 public:
  static constexpr size_t kMaxEntries = 1024;
  static constexpr size_t kMaxPorts = 256;

  explicit PlaintextClients(size_t max_entries = kMaxEntries, size_t max_ports = kMaxPorts)
      : max_entries_(max_entries), max_ports_(max_ports) {}

  // A plaintext connection from `source` to `pod` (namespace/name) on `port` was decided:
  // `refused` when STRICT refused it. `source_workload` is namespace/name of the mesh workload
  // holding the address, "" when none does.
  void Record(const std::string& pod, uint16_t port, const IpAddress& source,
              const std::string& source_workload, bool refused, absl::Time now);
  // The pod left this data plane: its sources and counters go.
  void ForgetPod(const std::string& pod);

  size_t size() const { return lru_.size(); }
  uint64_t evicted() const { return evicted_; }

  // Adds this worker's entries to out->plaintext_clients and, when `metrics`, its counters
  // (ambit_plaintext_connections_total by pod and port, the evictions).
  void AppendTo(bool metrics, ambit::dataplane::v1::StatsResponse* out) const;

 private:
  struct Entry {
    std::string key;
    std::string pod;
    uint16_t port = 0;
    IpAddress source;
    std::string source_workload;
    uint64_t connections = 0;
    uint64_t refused = 0;
    absl::Time first_seen, last_seen;
  };
  struct PortCount {
    uint64_t connections = 0, refused = 0;
  };

  const size_t max_entries_;
  const size_t max_ports_;
  std::list<Entry> lru_;  // most recently seen first
  absl::flat_hash_map<std::string, std::list<Entry>::iterator> index_;
  // Key: pod '\x1f' port ("other" past max_ports_).
  absl::flat_hash_map<std::string, PortCount> ports_;
  uint64_t evicted_ = 0;
};

// Folds the workers' entries in `stats` into one per (pod, port, source): counts summed, first
// and last seen widened; then adds the ambit_plaintext_clients gauge (distinct sources per pod and
// port) once for the whole process. Control thread.
void MergePlaintextClients(bool metrics, ambit::dataplane::v1::StatsResponse* stats);

}  // namespace ambit::tunnel
