#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "agent/common/ip_address.h"
#include "agent/mesh/model.h"

namespace ambit::dataplane::v1 {
class StatsResponse;
class FlowStat;
}  // namespace ambit::dataplane::v1

namespace ambit::tunnel {

// The mode, policy and source workload of a connection from the node's network namespace that
// was delivered as a kubelet probe, in access logs and metrics.
inline constexpr char kKubeletProbe[] = "kubelet probe";

// One end of a connection as metrics, access logs and `ambitctl connections` name it.
struct FlowPeer {
  std::string workload;  // pod name; empty when not a known workload
  std::string namespace_name;
  std::string principal;  // SPIFFE ID; empty when unauthenticated
  std::string service;    // destination only: namespace/name of the Service dialled
  std::optional<SocketAddress> address;
  // Istio's workload metadata of a known workload (mesh::Workload's); empty: not known.
  std::string workload_name = {};
  std::string canonical_service = {};
  std::string canonical_revision = {};
};

// The access log's layout: ambit's keys as text or JSON, or ztunnel's keys (src.addr,
// src.workload, ..., bytes_sent, bytes_recv, duration) as key=value text or JSON, for tools that
// read ztunnel's access log.
enum class AccessLogFormat { kText, kJson, kZtunnel, kZtunnelJson };

// "text", "json", "ztunnel", "ztunnel-json"; nullopt for anything else.
std::optional<AccessLogFormat> ParseAccessLogFormat(std::string_view name);

enum class FlowDirection { kOutbound, kInbound };

// What is known about a connection when it is accepted and decided. The reporter is this node:
// "source" for connections leaving a local pod, "destination" for connections reaching one.
struct FlowRecord {
  uint64_t id = 0;  // unique within the data plane process; set by Worker::Adopt
  FlowDirection direction = FlowDirection::kOutbound;
  std::string pod;   // the local pod, namespace/name
  std::string mode;  // hbone, passthrough, plaintext, kubelet probe (kKubeletProbe)
  bool mtls = false;
  FlowPeer source, destination;
  std::string policy;  // the policy that decided (namespace/name), "default", or empty
  absl::Time start;
  // Istio's cluster name of this mesh (the snapshot's): the cluster of every known workload.
  std::string cluster;
  // Istio's labels without response_flags, rendered once when the flow opens.
  std::string series;
};

// How a connection ended.
struct FlowEnd {
  bool denied = false;      // refused or closed by policy
  std::string flags = "-";  // Istio response_flags: "-", "DENY", "CONNECT"
  std::string reason;       // in words; empty for a clean close
  uint64_t bytes_from_client = 0;
  uint64_t bytes_to_client = 0;
};

// One access-log line for a connection that ended: text (key=value, values with spaces quoted)
// or a JSON object. Never contains key material: identities and addresses only.
std::string AccessLogLine(const FlowRecord& record, const FlowEnd& end, absl::Time now,
                          AccessLogFormat format);

// Istio's TCP metrics and ambit's decision counters for one worker. Worker-thread only: the
// worker updates it when a connection opens and closes (never per byte; live byte counts are
// read from the connections when stats are collected), and answers collection requests on its
// own thread, so nothing here takes a lock.
class FlowMetrics {
 public:
  // At most this many label sets (without response_flags) per worker; a connection that would
  // add one more is counted under the reporter's overflow set (every workload label "unknown").
  static constexpr size_t kMaxSeries = 10000;

  void Opened(FlowRecord& record);
  void Closed(const FlowRecord& record, const FlowEnd& end);
  // A connection refused before it was relayed: opened and closed at once.
  void Refused(FlowRecord& record, const FlowEnd& end);
  void Decision(bool allowed) { ++(allowed ? allowed_ : denied_); }

  // Forgets the series that name a workload (namespace and workload name, source or destination)
  // no workload of `workloads` has any more, once no connection of theirs is open; one still
  // open is forgotten when its last connection closes. So /metrics does not keep the series of
  // every workload that ever was.
  void Prune(const std::vector<mesh::Workload>& workloads);
  size_t series_count() const { return series_.size(); }

  // Adds this worker's series to `out`, with `live` (a live flow's current bytes) counted in.
  struct Live {
    const FlowRecord* record;
    uint64_t from_client, to_client;
  };
  void AppendTo(const std::vector<Live>& live, ambit::dataplane::v1::StatsResponse* out) const;

  // Istio's label names, in the order series are rendered.
  static const std::vector<std::string>& LabelNames();

 private:
  struct Counts {
    uint64_t opened = 0, closed = 0, sent = 0, received = 0;
  };
  // One label set: its counts by response_flags, and what makes it stale.
  struct Series {
    absl::flat_hash_map<std::string, Counts> by_flags;
    uint64_t live = 0;
    bool stale = false;
    // "namespace/workload name" of each end that is a known workload; empty: none.
    std::string source, destination;
  };

  // Key: the label values joined by '\x1f', without response_flags (FlowRecord::series).
  absl::flat_hash_map<std::string, Series> series_;
  uint64_t allowed_ = 0, denied_ = 0;
};

// Istio's labels of a flow as its TCP series carries them, response_flags left out: (name,
// value) in FlowMetrics::LabelNames() order. The waypoint's HTTP series use them too.
std::vector<std::pair<std::string, std::string>> IstioLabels(const FlowRecord& record);
// "namespace/workload name" of a known workload end; empty otherwise (what FlowMetrics::Prune
// looks for).
std::string WorkloadKey(const FlowPeer& peer);

// Fills a FlowStat (for `ambitctl connections`) from a live flow.
void ToProto(const FlowRecord& record, uint64_t from_client, uint64_t to_client, int worker,
             ambit::dataplane::v1::FlowStat* out);

const char* FlowDirectionName(FlowDirection direction);

}  // namespace ambit::tunnel
