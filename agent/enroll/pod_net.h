#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "agent/common/socket_mark.h"
#include "agent/common/unique_fd.h"

namespace ambit::enroll {

// The listeners ambit keeps inside one pod's network namespace. ambitd creates and owns them and
// hands duplicates to the data plane, so they outlive a data-plane restart: SYNs wait in the
// backlog until the new data plane accepts.
struct PodListeners {
  UniqueFd outbound_v4;  // 127.0.0.1:15001
  UniqueFd outbound_v6;  // [::1]:15001; absent when the pod has no IPv6
  // Inbound listeners, bound to loopback: only sk_lookup (bpf_sk_assign) brings them a
  // connection for a pod address. The IPv6 pair is absent when the pod has no IPv6.
  UniqueFd plain_v4;  // 127.0.0.1:15006
  UniqueFd plain_v6;  // [::1]:15006
  UniqueFd hbone_v4;  // 127.0.0.1:15008
  UniqueFd hbone_v6;  // [::1]:15008
};

struct PodNetOptions {
  // SO_MARK of the data plane's inbound delivery sockets.
  uint32_t delivery_mark = DeliveryMark(kDefaultSocketMark);
  // The delivery mark of an earlier build's data plane, routed the same way while one may still
  // serve the pod during an upgrade (0: none).
  uint32_t previous_delivery_mark = PreviousDeliveryMark(kDefaultSocketMark);
  uint32_t route_table = 133;  // table holding "local 0/0 dev lo" for marked replies
  uint32_t rule_priority = 32000;
  int backlog = 4096;
  // The procfs pod sysctls are written through. A container's own /proc/sys is mounted
  // read-only, so in a DaemonSet the host's /proc is mounted elsewhere (/host/proc) and named
  // here. The files are opened from a thread inside the pod's namespace, which is what makes
  // /proc/sys/net show that namespace's values, whichever procfs mount they are reached through.
  std::string proc_root = "/proc";
};

// Creates the listeners inside the namespace. Fails with a message naming the listener when the
// pod's loopback is down or a port is taken by the application.
absl::StatusOr<PodListeners> CreatePodListeners(int netns_fd, const PodNetOptions& options);

// Lets the data plane deliver inbound connections with the client's own source address
// (docs/ARCHITECTURE.md#hbone): tcp_fwmark_accept=1, fwmark_reflect=1 (a RST for a port without
// listener comes back to the data plane at once), and "ip rule fwmark MARK lookup TABLE" with
// "local 0.0.0.0/0 dev lo table TABLE" (and the IPv6 pair), so the application's replies to a
// transparent socket come back to it instead of leaving the pod. Idempotent.
absl::Status ConfigurePodRouting(int netns_fd, const PodNetOptions& options);

}  // namespace ambit::enroll
