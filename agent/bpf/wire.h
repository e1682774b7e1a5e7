#pragma once

// Wire accounting (ambitctl verify mtls): the tc programs that count what crosses an enrolled
// pod's network namespace boundary into ambit_wire (bpf/progs/wire.bpf.c, bpf/abi/wire.h), and
// the reads of that map. Functions only, no state of their own: the pinned map and the tc filters
// are the state, so a restarted agent finds both as it left them. Thread-compatible; ambitd calls
// them from its control thread.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/common/ip_address.h"
#include "agent/common/unique_fd.h"

namespace ambit::bpf {

// Where ambit_wire is pinned under a pin root.
std::string WireMapPin(const std::string& pin_root);

// Opens ambit_wire at pin_root, creating and pinning it if absent (the first start of this ABI).
absl::StatusOr<UniqueFd> OpenWireMap(const std::string& pin_root);

// Loads a wire program instance for the pod (its netns cookie in rodata) and attaches it to the
// clsact ingress and egress hooks of every Ethernet interface of the network namespace netns_fd
// (loopback is inside the namespace, so it is skipped), replacing ambit's filter if one is there
// (a restarted agent, an upgrade). Returns the interfaces it attached to. An interface that is not
// Ethernet (the program parses an Ethernet header) is an error naming it: counting nothing for
// it would let `verify mtls` call plaintext on it encrypted.
struct WireAttachment {
  std::vector<std::string> interfaces;
  // The programs, for a description (ambitctl bpf); valid until the next AttachWire call.
  int ingress_fd = -1, egress_fd = -1;
  // Keeps the descriptors above open; the filters hold the programs themselves.
  std::shared_ptr<void> holder;
};
absl::StatusOr<WireAttachment> AttachWire(const std::string& pin_root, int netns_fd,
                                          uint64_t netns_cookie);

// Removes ambit's filters from the interfaces of netns_fd (the pod left the mesh but its network
// namespace lives on). A gone namespace took its filters with it.
absl::Status DetachWire(int netns_fd);

// For `ambitd --cleanup`, which knows no pod list: removes ambit's filters from every interface of
// netns_fd whose program counts into the map with id map_id (one instance's ambit_wire), and
// leaves alone those of other instances. Returns how many filters it removed.
absl::StatusOr<int> DetachWireOfMap(int netns_fd, uint32_t map_id);

// The kernel id of the map pinned at path; NotFound when nothing is pinned there.
absl::StatusOr<uint32_t> PinnedMapId(const std::string& path);

// One ambit_wire entry with its per-CPU counters summed.
struct WireEntry {
  uint64_t netns_cookie = 0;
  IpAddress peer;
  uint16_t port = 0;
  uint8_t proto = 0;
  bool egress = false;      // left the pod
  bool local_port = false;  // `port` is the pod's (the peer dialled the pod)
  bool mtls = false;        // TCP on 15008
  uint64_t bytes = 0, packets = 0, payload = 0, syns = 0, resets = 0;
};

// Every entry of the map. Entries may be created or evicted while it is read; each one read is
// consistent per CPU.
absl::StatusOr<std::vector<WireEntry>> ReadWire(int map_fd);

// Deletes every entry of the pod; returns how many there were.
absl::StatusOr<uint64_t> ForgetWire(int map_fd, uint64_t netns_cookie);

}  // namespace ambit::bpf
