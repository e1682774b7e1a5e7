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

std::string Labels(const std::string& text, int code) {
  return absl::StrCat("reporter=\"waypoint\",", text, text.empty() ? "" : ",", "response_code=\"",
                      code, "\"");
}

template <size_t N>
void RenderHistogram(std::string& out, const metrics::Metric& m, const std::string& labels,
                     int code, const double (&bounds)[N], const std::vector<uint64_t>& counts,
                     double sum, uint64_t count) {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < N; ++i) {
    cumulative += counts.empty() ? 0 : counts[i];
    absl::StrAppend(&out, std::string(m.name), "_bucket{", Labels(labels, code), ",le=\"",
                    Num(bounds[i]), "\"} ", cumulative, "\n");
  }
  absl::StrAppend(&out, std::string(m.name), "_bucket{", Labels(labels, code), ",le=\"+Inf\"} ",
                  count, "\n");
  absl::StrAppend(&out, std::string(m.name), "_sum{", Labels(labels, code), "} ", Num(sum), "\n");
  absl::StrAppend(&out, std::string(m.name), "_count{", Labels(labels, code), "} ", count, "\n");
}

}  // namespace

void HttpMetrics::Record(const RequestLabels& labels, int code, double duration_ms,
                         uint64_t request_bytes, uint64_t response_bytes) {
  absl::MutexLock lock(&mu_);
  auto it = by_labels_.find(labels.text);
  if (it == by_labels_.end()) {
    // Bounded: past the limit a request is counted under the set without workload labels.
    const bool full = by_labels_.size() >= kMaxLabelSets;
    it = by_labels_.try_emplace(full ? std::string() : labels.text).first;
    if (!full) {
      it->second.source = labels.source;
      it->second.destination = labels.destination;
    }
  }
  Series& s = it->second.by_code[code];
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
  uint64_t n = 0;
  for (const auto& [text, set] : by_labels_) {
    if (auto it = set.by_code.find(code); it != set.by_code.end()) n += it->second.requests;
  }
  return n;
}

std::string HttpMetrics::RenderLabels(
    const std::vector<std::pair<std::string, std::string>>& labels) {
  std::string out;
  for (const auto& [name, value] : labels) {
    if (!out.empty()) out += ',';
    absl::StrAppend(&out, name, "=\"", EscapeLabel(value), "\"");
  }
  return out;
}

std::vector<std::string> HttpMetrics::Workloads() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [text, set] : by_labels_) {
    if (!set.source.empty()) out.push_back(set.source);
    if (!set.destination.empty()) out.push_back(set.destination);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

void HttpMetrics::Forget(const std::vector<std::string>& gone) {
  if (gone.empty()) return;
  absl::MutexLock lock(&mu_);
  for (auto it = by_labels_.begin(); it != by_labels_.end();) {
    auto named = [&](const std::string& k) {
      return !k.empty() && std::find(gone.begin(), gone.end(), k) != gone.end();
    };
    if (named(it->second.source) || named(it->second.destination)) {
      it = by_labels_.erase(it);
    } else {
      ++it;
    }
  }
}

std::string HttpMetrics::RenderPrometheus() const {
  absl::MutexLock lock(&mu_);
  std::string out = Header(metrics::kRequestsTotal);
  for (const auto& [text, set] : by_labels_) {
    for (const auto& [code, s] : set.by_code) {
      absl::StrAppend(&out, std::string(metrics::kRequestsTotal.name), "{", Labels(text, code),
                      "} ", s.requests, "\n");
    }
  }
  out += Header(metrics::kRequestDuration);
  for (const auto& [text, set] : by_labels_) {
    for (const auto& [code, s] : set.by_code) {
      RenderHistogram(out, metrics::kRequestDuration, text, code, kDurationBuckets,
                      s.duration.counts, s.duration.sum, s.duration.count);
    }
  }
  out += Header(metrics::kRequestBytes);
  for (const auto& [text, set] : by_labels_) {
    for (const auto& [code, s] : set.by_code) {
      RenderHistogram(out, metrics::kRequestBytes, text, code, kSizeBuckets, s.request_bytes.counts,
                      s.request_bytes.sum, s.request_bytes.count);
    }
  }
  out += Header(metrics::kResponseBytes);
  for (const auto& [text, set] : by_labels_) {
    for (const auto& [code, s] : set.by_code) {
      RenderHistogram(out, metrics::kResponseBytes, text, code, kSizeBuckets,
                      s.response_bytes.counts, s.response_bytes.sum, s.response_bytes.count);
    }
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
