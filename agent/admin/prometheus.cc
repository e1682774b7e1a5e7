#include "agent/admin/prometheus.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ambit::admin {
namespace {

std::string Escape(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return absl::StrFormat("%.0f", v);
  return absl::StrFormat("%.17g", v);
}

struct Known {
  const char* type;
  const char* help;
};

// HELP and TYPE of the data plane's counters, by name.
const std::map<std::string, Known>& DataPlaneCounters() {
  static const auto* kKnown = new std::map<std::string, Known>{
      {"ambit_policy_decisions_total",
       {"counter", "Authorization decisions on connections reaching local pods, by result."}},
      {"ambit_hbone_handshakes_total", {"counter", "HBONE (mTLS) sessions established."}},
      {"ambit_hbone_handshake_failures_total",
       {"counter", "HBONE handshakes that failed, by reason."}},
      {"ambit_hbone_errors_total", {"counter", "HTTP/2 misbehaviour of HBONE peers, by reason."}},
      {"ambit_hbone_streams_opened_total", {"counter", "HBONE CONNECT streams opened."}},
      {"ambit_hbone_sessions_drained_total",
       {"counter",
        "HBONE connections that stopped taking new streams because a certificate "
        "expired or is no longer accepted, by reason."}},
      {"ambit_plaintext_refused_total",
       {"counter", "Plaintext connections refused because the port requires mTLS (STRICT)."}},
      {"ambit_connections_closed_by_policy_total",
       {"counter", "Live connections closed because a policy change denied them."}},
      {"ambit_connections_refused_total",
       {"counter", "New connections the data plane refused before any policy, by reason."}},
      {"ambit_snapshots_rejected_total",
       {"counter", "Configuration snapshots the data plane could not apply."}},
  };
  return *kKnown;
}

}  // namespace

void PrometheusText::Add(const std::string& name, const std::string& type,
                         const std::string& help, const Labels& labels, double value) {
  auto [it, inserted] = families_.try_emplace(name);
  if (inserted) {
    order_.push_back(name);
    it->second.type = type;
    it->second.help = help;
  }
  std::string rendered;
  for (const auto& [k, v] : labels) {
    absl::StrAppend(&rendered, rendered.empty() ? "" : ",", k, "=\"", Escape(v), "\"");
  }
  it->second.samples[rendered] += value;
}

std::string PrometheusText::Render() const {
  std::string out;
  for (const auto& name : order_) {
    const Family& f = families_.at(name);
    absl::StrAppend(&out, "# HELP ", name, " ", f.help, "\n# TYPE ", name, " ", f.type, "\n");
    for (const auto& [labels, value] : f.samples) {
      absl::StrAppend(&out, name, labels.empty() ? "" : "{", labels, labels.empty() ? "" : "}",
                      " ", FormatValue(value), "\n");
    }
  }
  return out;
}

std::string RenderMetrics(const ambit::dataplane::v1::StatsResponse* stats,
                          const AdminState& state, absl::Time now) {
  PrometheusText p;
  if (stats != nullptr) {
    struct TcpMetric {
      const char* name;
      const char* help;
      uint64_t (*get)(const ambit::dataplane::v1::TcpSeries&);
    };
    const TcpMetric tcp[] = {
        {"istio_tcp_connections_opened_total", "Total TCP connections opened.",
         [](const ambit::dataplane::v1::TcpSeries& s) { return s.opened(); }},
        {"istio_tcp_connections_closed_total", "Total TCP connections closed.",
         [](const ambit::dataplane::v1::TcpSeries& s) { return s.closed(); }},
        {"istio_tcp_sent_bytes_total", "Bytes sent to the client (the response direction).",
         [](const ambit::dataplane::v1::TcpSeries& s) { return s.sent_bytes(); }},
        {"istio_tcp_received_bytes_total",
         "Bytes received from the client (the request direction).",
         [](const ambit::dataplane::v1::TcpSeries& s) { return s.received_bytes(); }},
    };
    for (const auto& m : tcp) {
      for (const auto& series : stats->tcp()) {
        Labels labels;
        for (const auto& l : series.labels()) labels.emplace_back(l.name(), l.value());
        p.Add(m.name, "counter", m.help, labels, static_cast<double>(m.get(series)));
      }
    }
    for (const auto& c : stats->counters()) {
      auto it = DataPlaneCounters().find(c.name());
      Known k = it == DataPlaneCounters().end() ? Known{"counter", "Data-plane counter."}
                                                : it->second;
      Labels labels;
      for (const auto& l : c.labels()) labels.emplace_back(l.name(), l.value());
      p.Add(c.name(), k.type, k.help, labels, static_cast<double>(c.value()));
    }
  }
  NodeHealth h = state.Health();
  p.Add("ambit_dataplane_up", "gauge",
        "1 when ambitd is connected to a data plane and could read its counters.", {},
        h.dataplane_connected && stats != nullptr ? 1 : 0);
  p.Add("ambit_dataplane_restarts_total", "counter",
        "Data-plane restarts since ambitd started.", {}, static_cast<double>(h.dataplane_restarts));
  p.Add("ambit_config_generation", "gauge",
        "Configuration generation: desired (built by ambitd) and applied (acknowledged by the "
        "data plane).",
        {{"state", "desired"}}, static_cast<double>(h.desired_generation));
  p.Add("ambit_config_generation", "gauge", "", {{"state", "applied"}},
        static_cast<double>(h.applied_generation));
  p.Add("ambit_dataplane_fail_closed", "gauge",
        "1 while the data plane refuses new connections because the newest configuration could "
        "not be applied.",
        {}, h.fail_closed ? 1 : 0);
  p.Add("ambit_enrolled_pods", "gauge", "Pods enrolled on this node.", {},
        static_cast<double>(h.enrolled.size()));
  p.Add("ambit_enroll_failures", "gauge", "Pods this node should enroll but could not.", {},
        h.enroll_failures);
  const auto certs = state.Certificates();
  for (const auto& c : certs.certificates()) {
    if (c.not_after().unix_seconds() == 0) continue;
    p.Add("ambit_certificate_expiry_seconds", "gauge",
          "Seconds until the workload certificate expires (negative: expired).",
          {{"identity", c.identity()}},
          static_cast<double>(c.not_after().unix_seconds() - absl::ToUnixSeconds(now)));
  }
  for (const auto& r : certs.trust_bundle()) {
    p.Add("ambit_trust_root_expiry_seconds", "gauge", "Seconds until a trusted root expires.",
          {{"subject", r.subject()}},
          static_cast<double>(r.not_after().unix_seconds() - absl::ToUnixSeconds(now)));
  }
  const auto bpf = state.Bpf();
  for (const auto& m : bpf.maps()) {
    if (!m.error().empty()) continue;
    p.Add("ambit_bpf_map_entries", "gauge", "Entries in an ambit BPF map.", {{"map", m.name()}},
          static_cast<double>(m.entries()));
    p.Add("ambit_bpf_map_max_entries", "gauge", "Capacity of an ambit BPF map.",
          {{"map", m.name()}}, static_cast<double>(m.max_entries()));
  }
  p.Add("ambit_ready", "gauge", "1 when /healthz/ready answers 200.", {},
        ReadinessProblems(state, now).empty() ? 1 : 0);
  return p.Render();
}

std::vector<std::string> ReadinessProblems(const AdminState& state, absl::Time now) {
  std::vector<std::string> problems;
  NodeHealth h = state.Health();
  if (!h.bpf_attached) problems.push_back("BPF programs are not attached");
  if (!h.dataplane_connected) problems.push_back("the data plane is not connected");
  if (!h.config_loaded) problems.push_back("no configuration loaded yet");
  if (h.desired_generation != h.applied_generation &&
      (h.fail_closed || now - h.pending_since > kGenerationGrace)) {
    problems.push_back(absl::StrCat(
        "configuration generation ", h.desired_generation, " is not applied (the data plane ",
        h.applied_generation == 0 ? std::string("has none")
                                  : absl::StrCat("enforces generation ", h.applied_generation),
        ", for ", absl::FormatDuration(absl::Trunc(now - h.pending_since, absl::Milliseconds(100))),
        h.generation_error.empty() ? "" : ": ", h.generation_error, ")",
        h.fail_closed ? "; new connections are refused" : ""));
  }
  auto certs = state.Certificates();
  for (const auto& [pod, identity] : h.enrolled) {
    const ambit::admin::v1::Certificate* found = nullptr;
    for (const auto& c : certs.certificates()) {
      if (c.identity() == identity) found = &c;
    }
    if (found == nullptr) {
      problems.push_back(absl::StrCat("pod ", pod, ": no certificate for ", identity, " yet"));
    } else if ((found->state() != "valid" && found->state() != "renewing") ||
               found->not_after().unix_seconds() <= absl::ToUnixSeconds(now)) {
      problems.push_back(absl::StrCat("pod ", pod, ": certificate for ", identity, " is ",
                                      found->state(),
                                      found->last_error().empty() ? "" : ": ",
                                      found->last_error()));
    }
  }
  return problems;
}

}  // namespace ambit::admin
