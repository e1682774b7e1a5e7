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
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return absl::StrFormat("%.0f", v);
  return absl::StrFormat("%.17g", v);
}

}  // namespace

void PrometheusText::AddReported(const std::string& name, const Labels& labels, double value) {
  if (const metrics::Metric* m = metrics::Find(name)) {
    Add(*m, labels, value);
    return;
  }
  Add(metrics::Metric{name, metrics::Type::kCounter, "Data-plane counter."}, labels, value);
}

void PrometheusText::Add(const metrics::Metric& metric, const Labels& labels, double value) {
  std::string name(metric.name);
  auto [it, inserted] = families_.try_emplace(name);
  if (inserted) {
    order_.push_back(name);
    it->second.type = metric.type == metrics::Type::kCounter     ? "counter"
                      : metric.type == metrics::Type::kHistogram ? "histogram"
                                                                 : "gauge";
    it->second.help = std::string(metric.help);
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
      absl::StrAppend(&out, name, labels.empty() ? "" : "{", labels, labels.empty() ? "" : "}", " ",
                      FormatValue(value), "\n");
    }
  }
  return out;
}

std::string RenderMetrics(const ambit::dataplane::v1::StatsResponse* stats, const AdminState& state,
                          absl::Time now) {
  PrometheusText p;
  if (stats != nullptr) {
    using ambit::dataplane::v1::TcpSeries;
    const std::pair<const metrics::Metric*, uint64_t (*)(const TcpSeries&)> tcp[] = {
        {&metrics::kTcpOpened, [](const TcpSeries& s) { return s.opened(); }},
        {&metrics::kTcpClosed, [](const TcpSeries& s) { return s.closed(); }},
        {&metrics::kTcpSentBytes, [](const TcpSeries& s) { return s.sent_bytes(); }},
        {&metrics::kTcpReceivedBytes, [](const TcpSeries& s) { return s.received_bytes(); }},
    };
    for (const auto& [metric, get] : tcp) {
      for (const auto& series : stats->tcp()) {
        Labels labels;
        for (const auto& l : series.labels()) labels.emplace_back(l.name(), l.value());
        p.Add(*metric, labels, static_cast<double>(get(series)));
      }
    }
    for (const auto& c : stats->counters()) {
      Labels labels;
      for (const auto& l : c.labels()) labels.emplace_back(l.name(), l.value());
      p.AddReported(c.name(), labels, static_cast<double>(c.value()));
    }
  }
  NodeHealth h = state.Health();
  if (h.ca_only) {
    // No data plane, pods or BPF here: their families would only say zero.
    for (const auto& [outcome, n] : h.ca_requests) {
      p.Add(metrics::kCaRequests, {{"outcome", outcome}}, static_cast<double>(n));
    }
    p.Add(metrics::kCaTokenReviews, {}, static_cast<double>(h.ca_token_reviews));
    const auto certs = state.Certificates();
    for (const auto& r : certs.trust_bundle()) {
      p.Add(metrics::kTrustRootExpiry, {{"subject", r.subject()}},
            static_cast<double>(r.not_after().unix_seconds() - absl::ToUnixSeconds(now)));
    }
    p.Add(metrics::kReady, {}, ReadinessProblems(state, now).empty() ? 1 : 0);
    return p.Render();
  }
  const bool responsive = h.dataplane_connected && !DataPlaneUnresponsive(h, now);
  p.Add(metrics::kDataplaneUp, {}, responsive && stats != nullptr ? 1 : 0);
  p.Add(metrics::kDataplaneResponsive, {}, responsive ? 1 : 0);
  p.Add(metrics::kDataplaneRestarts, {}, static_cast<double>(h.dataplane_restarts));
  p.Add(metrics::kConfigGeneration, {{"state", "desired"}},
        static_cast<double>(h.desired_generation));
  p.Add(metrics::kConfigGeneration, {{"state", "applied"}},
        static_cast<double>(h.applied_generation));
  p.Add(metrics::kDataplaneFailClosed, {}, h.fail_closed ? 1 : 0);
  p.Add(metrics::kEnrolledPods, {}, static_cast<double>(h.enrolled.size()));
  p.Add(metrics::kEnrollFailures, {}, h.enroll_failures);
  const auto certs = state.Certificates();
  for (const auto& c : certs.certificates()) {
    if (c.not_after().unix_seconds() == 0) continue;
    p.Add(metrics::kCertificateExpiry, {{"identity", c.identity()}},
          static_cast<double>(c.not_after().unix_seconds() - absl::ToUnixSeconds(now)));
  }
  for (const auto& r : certs.trust_bundle()) {
    p.Add(metrics::kTrustRootExpiry, {{"subject", r.subject()}},
          static_cast<double>(r.not_after().unix_seconds() - absl::ToUnixSeconds(now)));
  }
  const auto bpf = state.Bpf();
  for (const auto& m : bpf.maps()) {
    if (!m.error().empty()) continue;
    p.Add(metrics::kBpfMapEntries, {{"map", m.name()}}, static_cast<double>(m.entries()));
    p.Add(metrics::kBpfMapMaxEntries, {{"map", m.name()}}, static_cast<double>(m.max_entries()));
  }
  for (const auto& d : bpf.drops()) {
    p.Add(metrics::kBpfDrops, {{"reason", d.reason()}}, static_cast<double>(d.count()));
  }
  for (const NodeHealth::SourceResource& r : h.config_source) {
    const Labels labels = {{"resource", r.resource}};
    p.Add(metrics::kKubeSynced, labels, r.synced ? 1 : 0);
    p.Add(metrics::kKubeLists, labels, static_cast<double>(r.lists));
    p.Add(metrics::kKubeWatchRestarts, labels, static_cast<double>(r.watch_restarts));
    p.Add(metrics::kKubeErrors, labels, static_cast<double>(r.errors));
    if (r.last_sync != absl::InfinitePast()) {
      p.Add(metrics::kKubeLastSyncAge, labels, absl::ToDoubleSeconds(now - r.last_sync));
    }
  }
  if (h.xds.has_value()) {
    p.Add(metrics::kXdsConnected, {}, h.xds->connected ? 1 : 0);
    p.Add(metrics::kXdsReconnects, {}, static_cast<double>(h.xds->reconnects));
    for (const NodeHealth::XdsType& t : h.xds->types) {
      const Labels labels = {{"type_url", t.type_url}};
      p.Add(metrics::kXdsResources, labels, static_cast<double>(t.resources));
      p.Add(metrics::kXdsAcks, labels, static_cast<double>(t.acks));
      p.Add(metrics::kXdsNacks, labels, static_cast<double>(t.nacks));
    }
  }
  for (const auto& [source, count] : h.zds_sessions) {
    p.Add(metrics::kZdsSessions, {{"source", source}}, static_cast<double>(count));
  }
  for (const auto& [key, count] : h.zds_requests) {
    p.Add(metrics::kZdsRequests, {{"type", key.first}, {"outcome", key.second}},
          static_cast<double>(count));
  }
  p.Add(metrics::kReady, {}, ReadinessProblems(state, now).empty() ? 1 : 0);
  std::string out = p.Render();
  // The waypoint's HTTP metrics arrive rendered: families of their own, appended as they are.
  if (stats != nullptr) out += stats->l7_metrics_text();
  return out;
}

std::vector<std::string> ReadinessProblems(const AdminState& state, absl::Time now) {
  std::vector<std::string> problems;
  NodeHealth h = state.Health();
  if (h.ca_only) {
    if (!h.config_loaded) {
      problems.push_back("the pods' placement is not loaded yet: no node's request can be judged");
      for (const auto& p : h.ca_pending) problems.push_back(p);
    }
    return problems;
  }
  if (!h.bpf_attached) problems.push_back("BPF programs are not attached");
  if (!h.dataplane_connected) {
    problems.push_back(
        h.dataplane_missing.empty()
            ? std::string("the data plane is not connected")
            : absl::StrCat("the data plane is not connected: ", h.dataplane_missing));
  }
  if (DataPlaneUnresponsive(h, now)) {
    problems.push_back(absl::StrCat(
        "the data plane has not answered a heartbeat for ",
        absl::FormatDuration(absl::Trunc(now - h.heartbeat_waiting_since, absl::Milliseconds(100))),
        " (deadline ", absl::FormatDuration(h.heartbeat_deadline),
        "): it or one of its worker threads is stalled; new connections may time out"));
  }
  for (const auto& f : h.enroll_failing) {
    if (now - f.since <= kGenerationGrace) continue;  // a retry may still succeed
    problems.push_back(absl::StrCat(
        "pod ", f.pod, " cannot be enrolled (failing for ",
        absl::FormatDuration(absl::Trunc(now - f.since, absl::Seconds(1))), "): ", f.error));
  }
  for (const auto& c : h.capture_problems) problems.push_back(c);
  for (const auto& l : h.listener_problems) problems.push_back(l);
  if (!h.config_loaded) problems.push_back("no configuration loaded yet");
  for (const auto& p : h.config_pending) problems.push_back(p);
  if (const NodeHealth::WaypointProcess& w = h.waypoint; w.needed) {
    if (!w.connected) {
      problems.push_back(
          absl::StrCat("the waypoint data plane is not connected (waypoint pods are enrolled here)",
                       w.missing.empty() ? "" : ": ", w.missing));
    } else {
      if (now - w.heartbeat_waiting_since > h.heartbeat_deadline) {
        problems.push_back(
            absl::StrCat("the waypoint data plane has not answered a heartbeat for ",
                         absl::FormatDuration(
                             absl::Trunc(now - w.heartbeat_waiting_since, absl::Milliseconds(100))),
                         " (deadline ", absl::FormatDuration(h.heartbeat_deadline),
                         "): it or one of its worker threads is stalled"));
      }
      if (w.desired_generation != w.applied_generation &&
          (w.fail_closed || now - w.pending_since > kGenerationGrace)) {
        problems.push_back(absl::StrCat(
            "configuration generation ", w.desired_generation,
            " is not applied by the waypoint data plane (it ",
            w.applied_generation == 0 ? std::string("has none")
                                      : absl::StrCat("enforces generation ", w.applied_generation),
            w.generation_error.empty() ? "" : ": ", w.generation_error, ")",
            w.fail_closed ? "; new connections to waypoint pods are refused" : ""));
      }
    }
  }
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
                                      found->state(), found->last_error().empty() ? "" : ": ",
                                      found->last_error()));
    }
  }
  return problems;
}

}  // namespace ambit::admin
