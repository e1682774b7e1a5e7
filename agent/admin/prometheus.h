#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "agent/admin/admin_server.h"
#include "agent/common/metrics.h"

namespace ambit::admin {

using Labels = std::vector<std::pair<std::string, std::string>>;

// Prometheus text exposition format 0.0.4. Debian 12 packages no Prometheus client library for
// C++, and the format is a few lines of escaping; samples of one metric are grouped under one
// HELP/TYPE header, in the order metrics were first seen. Samples with the same name and labels
// are summed (the data plane reports per worker).
class PrometheusText {
 public:
  // One sample of a declared metric (agent/common/metrics.h).
  void Add(const metrics::Metric& metric, const Labels& labels, double value);
  // A sample the data plane reported by name: its declaration when there is one, else a
  // counter with a generic help text (a data plane newer than this ambitd).
  void AddReported(const std::string& name, const Labels& labels, double value);
  std::string Render() const;

 private:
  struct Family {
    std::string type, help;
    std::map<std::string, double> samples;  // rendered label set -> value
  };
  std::vector<std::string> order_;
  std::map<std::string, Family> families_;
};

// The whole /metrics page: the data plane's counters (`stats`, may be null when the data plane
// is not reachable) and ambitd's own.
std::string RenderMetrics(const ambit::dataplane::v1::StatsResponse* stats, const AdminState& state,
                          absl::Time now);

// Why the node is not ready (empty: ready): BPF attached, data plane connected, and every
// enrolled pod holding a valid certificate.
std::vector<std::string> ReadinessProblems(const AdminState& state, absl::Time now);

}  // namespace ambit::admin
