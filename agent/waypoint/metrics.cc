#include "agent/waypoint/metrics.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/common/metrics.h"

namespace ambit::waypoint {
namespace {

// Istio's default buckets: milliseconds for durations, powers of ten for sizes.
constexpr double kDurationBuckets[] = {0.5,   1,      5,      10,      25,     50,    100,
                                       250,   500,    1000,   2500,    5000,   10000, 30000,
                                       60000, 300000, 600000, 1800000, 3600000};
constexpr double kSizeBuckets[] = {1, 10, 100, 1000, 10000, 100000, 1e6, 1e7, 1e8, 1e9};

template <size_t N>
void Observe(const double (&bounds)[N], double v, std::vector<uint64_t>& counts, double& sum,
             uint64_t& count) {
  if (counts.empty()) counts.assign(N, 0);
  for (size_t i = 0; i < N; ++i) {
    if (v <= bounds[i]) {
      ++counts[i];
      break;
    }
  }
  sum += v;
  ++count;
}

std::string Num(double v) {
  if (v == static_cast<double>(static_cast<int64_t>(v))) {
    return absl::StrCat(static_cast<int64_t>(v));
  }
  return absl::StrFormat("%g", v);
}

std::string Header(const metrics::Metric& m) {
  const char* type = m.type == metrics::Type::kCounter     ? "counter"
                     : m.type == metrics::Type::kHistogram ? "histogram"
                                                           : "gauge";
  return absl::StrCat("# HELP ", std::string(m.name), " ", std::string(m.help), "\n# TYPE ",
                      std::string(m.name), " ", type, "\n");
}

// Provider names come from configuration: quoted as the exposition format wants.
std::string EscapeLabel(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string Labels(int code) {
  return absl::StrCat("reporter=\"waypoint\",response_code=\"", code, "\"");
}

template <size_t N>
void RenderHistogram(std::string& out, const metrics::Metric& m, int code,
                     const double (&bounds)[N], const std::vector<uint64_t>& counts, double sum,
                     uint64_t count) {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < N; ++i) {
    cumulative += counts.empty() ? 0 : counts[i];
    absl::StrAppend(&out, std::string(m.name), "_bucket{", Labels(code), ",le=\"", Num(bounds[i]),
                    "\"} ", cumulative, "\n");
  }
  absl::StrAppend(&out, std::string(m.name), "_bucket{", Labels(code), ",le=\"+Inf\"} ", count,
                  "\n");
  absl::StrAppend(&out, std::string(m.name), "_sum{", Labels(code), "} ", Num(sum), "\n");
  absl::StrAppend(&out, std::string(m.name), "_count{", Labels(code), "} ", count, "\n");
}

}  // namespace

void HttpMetrics::Record(int code, double duration_ms, uint64_t request_bytes,
                         uint64_t response_bytes) {
  absl::MutexLock lock(&mu_);
  Series& s = by_code_[code];
  ++s.requests;
  Observe(kDurationBuckets, duration_ms, s.duration.counts, s.duration.sum, s.duration.count);
  Observe(kSizeBuckets, static_cast<double>(request_bytes), s.request_bytes.counts,
          s.request_bytes.sum, s.request_bytes.count);
  Observe(kSizeBuckets, static_cast<double>(response_bytes), s.response_bytes.counts,
          s.response_bytes.sum, s.response_bytes.count);
}

void HttpMetrics::RecordExtAuthz(const std::string& provider, const std::string& result,
                                 double duration_ms) {
  absl::MutexLock lock(&mu_);
  ++ext_authz_checks_[{provider, result}];
  Histogram& h = ext_authz_duration_[provider];
  Observe(kDurationBuckets, duration_ms, h.counts, h.sum, h.count);
}

uint64_t HttpMetrics::ext_authz_checks(const std::string& provider,
                                       const std::string& result) const {
  absl::MutexLock lock(&mu_);
  auto it = ext_authz_checks_.find({provider, result});
  return it == ext_authz_checks_.end() ? 0 : it->second;
}

uint64_t HttpMetrics::requests(int code) const {
  absl::MutexLock lock(&mu_);
  auto it = by_code_.find(code);
  return it == by_code_.end() ? 0 : it->second.requests;
}

std::string HttpMetrics::RenderPrometheus() const {
  absl::MutexLock lock(&mu_);
  std::string out = Header(metrics::kRequestsTotal);
  for (const auto& [code, s] : by_code_) {
    absl::StrAppend(&out, std::string(metrics::kRequestsTotal.name), "{", Labels(code), "} ",
                    s.requests, "\n");
  }
  out += Header(metrics::kRequestDuration);
  for (const auto& [code, s] : by_code_) {
    RenderHistogram(out, metrics::kRequestDuration, code, kDurationBuckets, s.duration.counts,
                    s.duration.sum, s.duration.count);
  }
  out += Header(metrics::kRequestBytes);
  for (const auto& [code, s] : by_code_) {
    RenderHistogram(out, metrics::kRequestBytes, code, kSizeBuckets, s.request_bytes.counts,
                    s.request_bytes.sum, s.request_bytes.count);
  }
  out += Header(metrics::kResponseBytes);
  for (const auto& [code, s] : by_code_) {
    RenderHistogram(out, metrics::kResponseBytes, code, kSizeBuckets, s.response_bytes.counts,
                    s.response_bytes.sum, s.response_bytes.count);
  }
  out += Header(metrics::kExtAuthzChecks);
  for (const auto& [key, n] : ext_authz_checks_) {
    absl::StrAppend(&out, std::string(metrics::kExtAuthzChecks.name), "{provider=\"",
                    EscapeLabel(key.first), "\",result=\"", key.second, "\"} ", n, "\n");
  }
  out += Header(metrics::kExtAuthzDuration);
  for (const auto& [provider, h] : ext_authz_duration_) {
    const std::string labels = absl::StrCat("provider=\"", EscapeLabel(provider), "\"");
    const std::string name(metrics::kExtAuthzDuration.name);
    uint64_t cumulative = 0;
    for (size_t i = 0; i < std::size(kDurationBuckets); ++i) {
      cumulative += h.counts.empty() ? 0 : h.counts[i];
      absl::StrAppend(&out, name, "_bucket{", labels, ",le=\"", Num(kDurationBuckets[i]), "\"} ",
                      cumulative, "\n");
    }
    absl::StrAppend(&out, name, "_bucket{", labels, ",le=\"+Inf\"} ", h.count, "\n");
    absl::StrAppend(&out, name, "_sum{", labels, "} ", Num(h.sum), "\n");
    absl::StrAppend(&out, name, "_count{", labels, "} ", h.count, "\n");
  }
  return out;
}

}  // namespace ambit::waypoint
