#pragma once

// The waypoint's HTTP metrics (Istio's istio_requests_total, istio_request_duration_milliseconds,
// istio_request_bytes, istio_response_bytes; declared in agent/common/metrics.h) and their
// Prometheus text. A registry of its own, separate from ambit-tunnel's counters: the waypoint
// process exposes it on its own endpoint.
//
// Thread-safe: one registry per process, shared by the workers (one short lock per finished
// request; a scrape renders under the same lock).

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace ambit::waypoint {

class HttpMetrics {
 public:
  // At most this many label sets (RequestLabels::text); requests of more are counted under none.
  static constexpr size_t kMaxLabelSets = 10000;

  // Istio's labels of one downstream connection's requests (source and destination workload,
  // service, principals, ...), rendered once per connection by whoever knows the mesh
  // (agent/waypointd), and the workloads they name, so their series can be forgotten.
  struct RequestLabels {
    std::string text;  // name="value",... without reporter and response_code; empty: none
    std::string source, destination;  // "namespace/workload name"; empty: not a known workload
  };

  // One finished request (answered locally or by the upstream).
  void Record(const RequestLabels& labels, int response_code, double duration_ms,
              uint64_t request_bytes, uint64_t response_bytes);
  void Record(int response_code, double duration_ms, uint64_t request_bytes,
              uint64_t response_bytes) {
    Record(RequestLabels{}, response_code, duration_ms, request_bytes, response_bytes);
  }
  // name="value" pairs joined by commas, values escaped for the exposition format.
  static std::string RenderLabels(const std::vector<std::pair<std::string, std::string>>& labels);
  // Every workload some series names ("namespace/workload name").
  std::vector<std::string> Workloads() const;
  // Forgets the series naming any of `gone` (workloads that left the configuration).
  void Forget(const std::vector<std::string>& gone);
  // Prometheus text exposition format 0.0.4, every family with HELP and TYPE.
  std::string RenderPrometheus() const;

  uint64_t requests(int response_code) const;

  // One finished ext_authz check: `result` is allow, deny, error or failure_mode_allowed.
  void RecordExtAuthz(const std::string& provider, const std::string& result, double duration_ms);
  uint64_t ext_authz_checks(const std::string& provider, const std::string& result) const;

 private:
  struct Histogram {
    std::vector<uint64_t> counts;  // per bucket, not cumulative
    double sum = 0;
    uint64_t count = 0;
  };
  struct Series {
    uint64_t requests = 0;
    Histogram duration, request_bytes, response_bytes;
  };
  struct LabelSet {
    std::string source, destination;
    std::map<int, Series> by_code;
  };
  mutable absl::Mutex mu_;
  // By RequestLabels::text.
  std::map<std::string, LabelSet> by_labels_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, std::string>, uint64_t> ext_authz_checks_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Histogram> ext_authz_duration_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ambit::waypoint
