#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/common/ip_address.h"
#include "agent/common/socket_mark.h"
#include "agent/common/unique_fd.h"
#include "agent/mesh/model.h"
#include "agent/tunnel/flow_stats.h"
#include "agent/tunnel/pod_sockets.h"

namespace ambit::tunnel {

// One enrolled pod as the data plane knows it, with the descriptors ambitd handed over.
// Immutable once built; shared by workers through shared_ptr<const Pod>.
struct Pod {
  // What the pod is (names, service account, identity, addresses), in the mesh model's types: a
  // new workload field touches the model, its wire mapping (agent/mesh/wire.h) and its reader.
  mesh::Workload workload;
  // Computed once from `workload`, because the data path reads them per connection:
  std::string uid;        // workload.Key(): the pod table's key
  std::string spiffe_id;  // workload.identity as text; empty for a pod without an identity
  uint64_t netns_cookie = 0;
  UniqueFd netns;
  UniqueFd outbound_v4, outbound_v6;
  UniqueFd plain_v4, plain_v6, hbone_v4, hbone_v6;  // inbound, bound to the pod's loopback
};

enum class ListenerKind { kOutbound, kInboundPlain, kHbone };

class InboundHandler;  // l7_hook.h

const char* ListenerKindName(ListenerKind kind);

// Settings every worker needs; fixed for the process lifetime.
struct DataPlaneSettings {
  uint32_t socket_mark = kDefaultSocketMark;                  // outbound sockets
  uint32_t delivery_mark = DeliveryMark(kDefaultSocketMark);  // inbound delivery sockets
  int host_netns = -1;    // fd of the data plane's own network namespace
  int orig_dst_map = -1;  // fd of the pinned ambit_orig_dst map
  int deliver_map = -1;   // fd of the pinned ambit_deliver map
  int probes_map = -1;    // fd of the pinned ambit_probes map; -1: no kubelet probe is admitted
  // Plaintext from one of these addresses, from outside the pod's network namespace, is a
  // kubelet probe (TunnelOptions::kubelet_probe_sources). Usually empty.
  std::vector<IpAddress> kubelet_probe_sources;
  size_t relay_buffer = 64 * 1024;
  size_t max_streams_per_connection = 100;          // then a new HBONE connection opens
  absl::Duration idle_timeout = absl::Seconds(30);  // idle HBONE connections close after this
  // Inbound HBONE: CONNECTs a client connection may have fail or reset before the answer (see
  // hbone::SessionOptions::stream_open_burst); then per second; beyond, ENHANCE_YOUR_CALM.
  uint32_t failed_stream_burst = 200;
  double failed_stream_rate = 100;
  AccessLogFormat access_log_format = AccessLogFormat::kText;
  // Every time a worker reads (certificate lifetimes, idle timers, flow start and end) comes
  // from this clock (tests substitute their own).
  const Clock* clock = &RealClock::Get();
  // How sockets are made inside a pod's network namespace (tests substitute their own).
  const PodSockets* sockets = &KernelPodSockets::Get();
  // ambit-waypoint only: what runs on its pods' listeners instead of delivery into the pod
  // (l7_hook.h). Null in ambit-tunnel.
  std::shared_ptr<InboundHandler> l7;
};

}  // namespace ambit::tunnel
