#pragma once

// `ambitctl verify mtls`: what ambitd keeps of the wire-accounting map (ambit_wire,
// agent/bpf/wire.h) between reads, and the per-pod, per-peer report with its verdicts. Pure: no
// I/O, time passed in. Not thread-safe; ambitd uses it from its control thread.
//
// Why time buckets: the map holds running totals, which say nothing about when bytes flowed.
// Each read's growth per entry goes into the bucket of the read's time (kWireBucket wide, the
// last kWireBuckets kept: one hour), so `--since D` sums the buckets from now - D on. A bucket is
// included whole, so the window starts at most one bucket earlier than asked (more traffic
// shown, never less). Only entries that grew take room in a bucket. ambitd reads the map every
// bucket and at each question, so the newest bucket is current.

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/authz/peer_authentication.h"
#include "agent/bpf/wire.h"
#include "agent/common/ip_address.h"
#include "agent/state/model.h"

namespace ambit::node {

inline constexpr absl::Duration kWireBucket = absl::Seconds(10);
inline constexpr size_t kWireBuckets = 360;

struct WireKey {
  uint64_t netns_cookie = 0;
  IpAddress peer;
  uint16_t port = 0;
  uint8_t proto = 0;
  bool egress = false, local_port = false, mtls = false;
  friend auto operator<=>(const WireKey&, const WireKey&) = default;
  friend bool operator==(const WireKey&, const WireKey&) = default;
};

struct WireCounters {
  uint64_t bytes = 0, packets = 0, payload = 0, syns = 0, resets = 0;
  WireCounters& operator+=(const WireCounters& o);
  bool empty() const { return packets == 0 && bytes == 0; }
  friend bool operator==(const WireCounters&, const WireCounters&) = default;
};

using WireTotals = std::map<WireKey, WireCounters>;

class WireLedger {
 public:
  // Folds one read of the map taken at `now`. The first read after start is the baseline: what
  // was counted before (by an earlier agent) goes into the totals, not into any bucket. An entry
  // that shrank since the last read was evicted and counted anew: its whole value is growth.
  void Fold(absl::Time now, const std::vector<bpf::WireEntry>& read);
  // Forgets a pod (it left the mesh; its map entries were deleted).
  void ForgetPod(uint64_t netns_cookie);

  // Totals since the first read (everything this agent or its predecessors counted).
  const WireTotals& totals() const { return totals_; }
  // Totals from `since` on; also the window's real start (a bucket boundary at or before it).
  // OutOfRange when `since` is older than the history kept.
  absl::StatusOr<std::pair<WireTotals, absl::Time>> Since(absl::Time since) const;
  // Whether the first read found counts of an earlier agent (the totals then start before it).
  bool inherited() const { return inherited_; }
  // When the first read was taken (InfinitePast: none yet), and the oldest time Since accepts.
  absl::Time started() const { return started_; }
  absl::Time history_start() const;

 private:
  struct Bucket {
    absl::Time start;
    WireTotals growth;
  };
  absl::Time started_ = absl::InfinitePast();
  bool inherited_ = false;
  WireTotals last_read_;
  WireTotals totals_;
  std::deque<Bucket> buckets_;  // oldest first, at most kWireBuckets
};

// One class of traffic between an enrolled pod and a peer.
struct WireFlowReport {
  IpAddress peer;
  std::string peer_workload;  // namespace/name of the peer pod; "" when no pod has the address
  bool mtls = false;
  uint8_t proto = 0;
  uint16_t port = 0;
  bool port_is_local = false;  // the pod's port: the peer dialled the pod
  WireCounters out, in;        // left the pod, entered it
  // For plaintext TCP to the pod's own port: the effective PeerAuthentication mode there now.
  std::string mtls_mode;
  // "mtls", "plaintext", "plaintext-refused" (STRICT refused every attempt: the pod sent no
  // payload back and reset each one), "plaintext-under-strict" (plaintext the pod answered, to a
  // port STRICT now applies to).
  std::string verdict;
};

struct PodWireReport {
  std::string pod;  // namespace/name
  uint64_t encrypted_bytes = 0, plaintext_bytes = 0;
  bool plaintext_under_strict = false;
  std::vector<WireFlowReport> flows;
  std::vector<std::string> verdicts;  // one line per peer, and one per plaintext flow
};

struct WireReportInput {
  const WireTotals* totals = nullptr;
  absl::Time window_start;
  bool window_starts_earlier = false;          // counts from before window_start are included
  std::map<uint64_t, const state::Pod*> pods;  // enrolled pods by netns cookie
  std::function<const state::Pod*(const IpAddress&)> peer_pod;
  std::function<authz::PeerAuthnDecision(const state::Pod&, uint16_t port)> mtls_at;
  std::string pod_filter;  // namespace/name; "" for every pod
};

// Per pod (every enrolled pod that matches the filter, also one with no traffic) and per peer.
std::vector<PodWireReport> BuildWireReport(const WireReportInput& in);

// "tcp", "udp", or "ip-<n>".
std::string WireProtocolName(uint8_t proto);

}  // namespace ambit::node
