#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/common/ip_address.h"
#include "agent/common/unique_fd.h"

namespace ambit::bpf {

struct RedirectConfig {
  // <bpffs>/ambit/<instance>: this build pins under its v<AMBIT_ABI_VERSION> subdirectory, and
  // migrates from any other version's pins found here.
  std::string instance_dir;
  std::string cgroup_path;     // cgroup-v2 directory the programs attach to
  uint32_t socket_mark = 0;    // SO_MARK of ambit's outbound sockets: never redirected
  uint32_t delivery_mark = 0;  // SO_MARK of ambit's inbound delivery sockets: same
  // SO_MARK of an earlier build's delivery sockets (PreviousDeliveryMark): same
  uint32_t previous_delivery_mark = 0;
  uint64_t agent_cgroup_id = 0;  // processes directly in this cgroup are never redirected
};

struct ProgramInfo {
  std::string name;
  uint32_t id = 0;
  uint32_t verified_insns = 0;
  std::string attached_to;
};

// The redirect programs of one agent instance: attached once at the cgroup, their links and maps
// pinned under pin_root so that a restarted agent re-opens them (swapping in its own programs)
// instead of attaching a second copy, and live connections keep their state. Not thread-safe;
// owned by ambitd's control thread.
// A pod's loopback-bound inbound listeners, one per family and kind; -1: absent (a pod without
// IPv6 has no IPv6 pair).
struct InboundListenerFds {
  int plain_v4 = -1, plain_v6 = -1, hbone_v4 = -1, hbone_v6 = -1;
};

// Where this build pins: <instance_dir>/v<AMBIT_ABI_VERSION>.
std::string VersionedPinRoot(const std::string& instance_dir);

// The pins of another ABI version found under an instance directory.
struct PreviousAbi {
  uint32_t version = 0;
  std::string root;  // its pin root; for version 1 the instance directory itself
};
// Every other version's pins under instance_dir, newest first.
std::vector<PreviousAbi> FindPreviousAbis(const std::string& instance_dir);

class Redirector {
 public:
  // Loads this build's programs and pins them under VersionedPinRoot(instance_dir). Pins of a
  // previous ABI are migrated: each of its maps whose definition is unchanged is adopted as it
  // is (its entries, and the data plane's handle on it, stay valid), the others start empty and
  // the agent fills them from its own state; its cgroup links keep running the old programs
  // until FinishMigration() swaps them.
  static absl::StatusOr<std::unique_ptr<Redirector>> Open(const RedirectConfig& config);
  // Detaches and removes everything pinned under instance_dir (every ABI version); returns how
  // many pinned objects (links and maps) there were, 0 when instance_dir did not exist.
  static absl::StatusOr<uint64_t> Cleanup(const std::string& instance_dir);
  // True when a run of any ABI version attached programs under instance_dir (some agent's
  // capture is in place).
  static bool HasPinnedLinks(const std::string& instance_dir);

  ~Redirector();

  // Steers the pod's traffic: inbound listeners into the sockmap, the pod into ambit_pods (which
  // turns on outbound redirection), and an sk_lookup link on its netns (re-used if pinned). Also
  // puts the wire-accounting tc programs on the pod's interfaces (AttachWire).
  absl::Status EnrollPod(uint64_t netns_cookie, uint32_t slot, int netns_fd,
                         const InboundListenerFds& listeners);
  // Makes the pod's addresses known to sockops, so that connections from the node's network
  // namespace to them are recorded as kubelet probes; forgets the pod's addresses not in `ips`.
  absl::Status SetPodAddresses(uint64_t netns_cookie, const std::vector<IpAddress>& ips);
  // The network namespace whose connections to enrolled pods are kubelet probes (ambit_node);
  // 0 records none.
  absl::Status SetNodeNetns(uint64_t netns_cookie);
  // Stops steering; connections already redirected are not touched. The pod's wire-accounting
  // entries go too, and, given its still-open network namespace, its tc filters.
  absl::Status RemovePod(uint64_t netns_cookie, uint32_t slot, int netns_fd = -1);
  // Pods enrolled by this or an earlier run: netns cookie -> slot.
  absl::StatusOr<std::map<uint64_t, uint32_t>> EnrolledPods() const;

  // Completes a migration from a previous ABI once every pod is enrolled in this version's maps:
  // swaps this build's programs into the old cgroup links (atomic for new connections), pins
  // the links here and removes every previous version's pins (pods no longer enrolled lose
  // their sk_lookup link with them). A no-op without a migration.
  absl::Status FinishMigration();
  // True from Open() until FinishMigration() when there is a previous ABI to migrate from.
  bool migrating() const;
  // The ABI version migrated from (0: none), and what became of its maps.
  uint32_t migrated_from() const;
  std::vector<std::string> adopted_maps() const;
  std::vector<std::string> fresh_maps() const;

  // This build's pin root.
  const std::string& pin_root() const;
  // The pinned ambit_drops map (per-CPU drop counters).
  int drops_map_fd() const;

  absl::Status SetPortFlags(uint16_t port, uint8_t flags);
  absl::Status AddBypassCidr(const Cidr& cidr);

  // The pinned ambit_wire map (per-CPU wire accounting, ambitctl verify mtls; agent/bpf/wire.h).
  int wire_map_fd() const;

  int orig_dst_map_fd() const { return orig_dst_map_.get(); }
  int deliver_map_fd() const { return deliver_map_.get(); }
  int probes_map_fd() const { return probes_map_.get(); }
  // True when the cgroup links were found pinned and re-used.
  bool reused_links() const { return reused_links_; }
  std::vector<ProgramInfo> Programs() const;

  // Checks, changing nothing, that the cgroup programs are still attached where Open attached
  // them and that their link and map pins exist (another tool may detach a link or delete a
  // pin: the first ends capture now, the second makes the next ambitd attach a second copy or
  // lose the maps). One line per finding; empty when all is in place. A few syscalls.
  std::vector<std::string> VerifyCapture() const;
  // The same for one enrolled pod: its sk_lookup link is pinned and attached to the network
  // namespace `netns_fd`, and the pod is in ambit_pods.
  absl::Status VerifyPod(uint64_t netns_cookie, int netns_fd) const;

 private:
  struct State;
  explicit Redirector(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
  UniqueFd orig_dst_map_;
  UniqueFd deliver_map_;
  UniqueFd probes_map_;
  bool reused_links_ = false;
};

}  // namespace ambit::bpf
