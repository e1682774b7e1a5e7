#include "agent/tunnel/flow_stats.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/common/log.h"
#include "agent/common/metrics.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::tunnel {
namespace {

namespace pb = ::ambit::dataplane::v1;
constexpr char kFlagsSeparator = '\x1f';  // never part of a label value (they are escaped)

const std::string& OrUnknown(const std::string& s) {
  static const std::string kUnknown = "unknown";
  return s.empty() ? kUnknown : s;
}

// Istio names the destination service by its host name.
std::string ServiceHost(const std::string& ns_name) {
  std::pair<std::string, std::string> parts = absl::StrSplit(ns_name, absl::MaxSplits('/', 1));
  if (parts.second.empty()) return ns_name;
  return absl::StrCat(parts.second, ".", parts.first, ".svc.cluster.local");
}

// Istio's workload label of one end: the owner's name, else the pod's (a record without
// metadata), else unknown.
const std::string& WorkloadLabel(const FlowPeer& p) {
  return OrUnknown(p.workload_name.empty() ? p.workload : p.workload_name);
}

bool Known(const FlowPeer& p) { return !p.workload.empty() || !p.workload_name.empty(); }

// The values of FlowMetrics::LabelNames() but response_flags, in that order. app and version are
// the canonical service and revision, as ztunnel sets them.
std::vector<std::string> SeriesValues(const FlowRecord& r) {
  // A kubelet probe has no workload or identity of its own; Istio's metrics show it as coming
  // from no workload, ambit's name it.
  const bool probe = r.mode == kKubeletProbe;
  const FlowPeer& src = r.source;
  const FlowPeer& dst = r.destination;
  const std::string& src_cluster = Known(src) ? OrUnknown(r.cluster) : OrUnknown("");
  const std::string& dst_cluster = Known(dst) ? OrUnknown(r.cluster) : OrUnknown("");
  std::pair<std::string, std::string> svc = absl::StrSplit(dst.service, absl::MaxSplits('/', 1));
  const bool has_service = !dst.service.empty() && !svc.second.empty();
  return {r.direction == FlowDirection::kOutbound ? "source" : "destination",
          probe ? std::string(kKubeletProbe) : WorkloadLabel(src),
          OrUnknown(src.canonical_service),
          OrUnknown(src.canonical_revision),
          OrUnknown(src.namespace_name),
          OrUnknown(src.principal),
          OrUnknown(src.canonical_service),
          OrUnknown(src.canonical_revision),
          src_cluster,
          has_service ? ServiceHost(dst.service) : "unknown",
          has_service ? svc.first : "unknown",
          has_service ? svc.second : "unknown",
          WorkloadLabel(dst),
          OrUnknown(dst.canonical_service),
          OrUnknown(dst.canonical_revision),
          OrUnknown(dst.namespace_name),
          OrUnknown(dst.principal),
          OrUnknown(dst.canonical_service),
          OrUnknown(dst.canonical_revision),
          dst_cluster,
          "tcp",
          r.mtls ? "mutual_tls" : "none"};
}

// The label set connections are counted under once a worker holds kMaxSeries: the reporter,
// protocol and security policy are kept, everything naming a workload is unknown.
std::string OverflowSeries(const FlowRecord& r) {
  FlowRecord anonymous;
  anonymous.direction = r.direction;
  anonymous.mtls = r.mtls;
  std::string out;
  for (const auto& v : SeriesValues(anonymous)) {
    if (!out.empty()) out += kFlagsSeparator;
    out += v;
  }
  return out;
}

// "namespace/workload name" of a known end, the key Prune looks for; empty otherwise.
std::string StaleKey(const FlowPeer& p) {
  if (!Known(p) || p.namespace_name.empty()) return "";
  return absl::StrCat(p.namespace_name, "/",
                      p.workload_name.empty() ? p.workload : p.workload_name);
}

std::string Address(const FlowPeer& p) { return p.address ? p.address->ToString() : ""; }

std::string Workload(const FlowPeer& p) {
  if (p.workload.empty()) return "";
  return absl::StrCat(p.namespace_name, "/", p.workload);
}

// One line with ztunnel's keys, as its access log writes "connection complete" (src/proxy/
// metrics.rs): identities only for mutual TLS, absent values left out, bytes from the local
// workload's point of view (bytes_sent is what the pod sent: ztunnel "unflips" Istio's counters
// for the source reporter in this line only, istio/istio#32399), the duration as
// "<n>ms". Text quotes string values as ztunnel's tracing output does; JSON adds ztunnel's
// level, scope and message.
std::string ZtunnelLine(const FlowRecord& r, const FlowEnd& end, absl::Time now, bool json) {
  const bool outbound = r.direction == FlowDirection::kOutbound;
  const bool mtls = r.mtls;
  struct Field {
    const char* key;
    std::string value;
    bool quoted = true;  // a string (quoted in text); addresses and numbers are not
    std::optional<uint64_t> number = std::nullopt;
  };
  std::vector<Field> fields;
  auto add = [&](const char* key, std::string value, bool quoted = true) {
    if (!value.empty()) fields.push_back({key, std::move(value), quoted});
  };
  auto add_number = [&](const char* key, uint64_t n) {
    fields.push_back({key, absl::StrCat(n), false, n});
  };
  auto end_fields = [&](bool src, const FlowPeer& p) {
    add(src ? "src.addr" : "dst.addr", Address(p), /*quoted=*/false);
    if (!src) add("dst.service", p.service.empty() ? "" : ServiceHost(p.service));
    // ztunnel names the pod, else its canonical service.
    std::string workload = p.workload.empty() ? p.canonical_service : p.workload;
    add(src ? "src.workload" : "dst.workload", workload);
    add(src ? "src.namespace" : "dst.namespace", p.namespace_name);
    add(src ? "src.identity" : "dst.identity", mtls ? p.principal : "");
    add(src ? "src.cluster" : "dst.cluster", Known(p) ? r.cluster : "");
  };
  end_fields(true, r.source);
  end_fields(false, r.destination);
  add("direction", outbound ? "outbound" : "inbound");
  const uint64_t sent = outbound ? end.bytes_from_client : end.bytes_to_client;
  const uint64_t recv = outbound ? end.bytes_to_client : end.bytes_from_client;
  add_number("bytes_sent", sent);
  add_number("bytes_recv", recv);
  add("duration", absl::StrCat(absl::ToInt64Milliseconds(now - r.start), "ms"));
  add("error", end.reason);
  if (json) {
    nlohmann::json j = nlohmann::json::object();
    j["level"] = end.reason.empty() ? "info" : "error";
    j["time"] = absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", now, absl::UTCTimeZone());
    j["scope"] = "access";
    j["message"] = "connection complete";
    for (const Field& f : fields) {
      if (f.number) {
        j[f.key] = *f.number;
      } else {
        j[f.key] = f.value;
      }
    }
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  std::string out = "connection complete";
  for (const Field& f : fields) {
    absl::StrAppend(&out, " ", f.key, "=");
    if (f.quoted) {
      // A JSON string is what Rust's Debug prints for these values (no control characters
      // survive, so the line stays one line).
      out += nlohmann::json(f.value).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    } else {
      out += f.value;
    }
  }
  return out;
}

}  // namespace

const char* FlowDirectionName(FlowDirection direction) {
  return direction == FlowDirection::kOutbound ? "outbound" : "inbound";
}

std::optional<AccessLogFormat> ParseAccessLogFormat(std::string_view name) {
  if (name == "text") return AccessLogFormat::kText;
  if (name == "json") return AccessLogFormat::kJson;
  if (name == "ztunnel") return AccessLogFormat::kZtunnel;
  if (name == "ztunnel-json") return AccessLogFormat::kZtunnelJson;
  return std::nullopt;
}

std::string AccessLogLine(const FlowRecord& r, const FlowEnd& end, absl::Time now,
                          AccessLogFormat format) {
  if (format == AccessLogFormat::kZtunnel || format == AccessLogFormat::kZtunnelJson) {
    return ZtunnelLine(r, end, now, format == AccessLogFormat::kZtunnelJson);
  }
  const bool json = format == AccessLogFormat::kJson;
  // Numbers are numbers in JSON; the text form shows every field, "-" for an empty one.
  struct Field {
    const char* key;
    std::string text;
    std::optional<int64_t> number = std::nullopt;
    const char* json_key = nullptr;  // when JSON names it differently
  };
  int64_t duration_ms = absl::ToInt64Milliseconds(now - r.start);
  auto count = [](uint64_t n) { return static_cast<int64_t>(n); };
  const Field fields[] = {
      {"start", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", r.start, absl::UTCTimeZone())},
      {"direction", FlowDirectionName(r.direction)},
      {"mode", r.mode},
      {"src", Address(r.source)},
      {"src_workload", Workload(r.source)},
      {"src_identity", r.source.principal},
      {"dst", Address(r.destination)},
      {"dst_workload", Workload(r.destination)},
      {"dst_identity", r.destination.principal},
      {"dst_service", r.destination.service},
      {"security", r.mtls ? "mutual_tls" : "none"},
      {"decision", end.denied ? "deny" : "allow"},
      {"policy", r.policy},
      // Istio's definition, the one istio_tcp_{sent,received}_bytes_total use for both
      // reporters (and Envoy's %BYTES_SENT%/%BYTES_RECEIVED%): received is what came from the
      // client (the request direction), sent what went back to it. One definition, so a line and
      // the counters of its reporter always agree.
      {"bytes_sent", absl::StrCat(end.bytes_to_client), count(end.bytes_to_client)},
      {"bytes_received", absl::StrCat(end.bytes_from_client), count(end.bytes_from_client)},
      {"duration", absl::StrCat(duration_ms, "ms"), duration_ms, "duration_ms"},
      {"flags", end.flags},
      {"error", end.reason},
  };
  if (json) {
    nlohmann::json j = nlohmann::json::object();
    for (const Field& f : fields) {
      const char* key = f.json_key != nullptr ? f.json_key : f.key;
      if (f.number) {
        j[key] = *f.number;
      } else if (!f.text.empty()) {
        j[key] = f.text;
      }
    }
    // Replacement keeps a line a line whatever bytes a reason carries.
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  std::string out;
  for (const Field& f : fields) {
    if (!out.empty()) out += ' ';
    absl::StrAppend(&out, f.key, "=", log::FieldValue(f.text));
  }
  return out;
}

const std::vector<std::string>& FlowMetrics::LabelNames() {
  // ztunnel's label set (CommonTrafficLabels, without locality), response_flags last.
  static const std::vector<std::string> kNames = {
      "reporter",
      "source_workload",
      "source_canonical_service",
      "source_canonical_revision",
      "source_workload_namespace",
      "source_principal",
      "source_app",
      "source_version",
      "source_cluster",
      "destination_service",
      "destination_service_namespace",
      "destination_service_name",
      "destination_workload",
      "destination_canonical_service",
      "destination_canonical_revision",
      "destination_workload_namespace",
      "destination_principal",
      "destination_app",
      "destination_version",
      "destination_cluster",
      "request_protocol",
      "connection_security_policy",
      "response_flags",
  };
  return kNames;
}

void FlowMetrics::Opened(FlowRecord& record) {
  if (record.series.empty()) {
    // Values joined by a separator that cannot occur in them: label values are names,
    // SPIFFE IDs and host names.
    for (const auto& v : SeriesValues(record)) {
      if (!record.series.empty()) record.series += kFlagsSeparator;
      record.series += v;
    }
  }
  auto it = series_.find(record.series);
  if (it == series_.end()) {
    if (series_.size() >= kMaxSeries) {
      record.series = OverflowSeries(record);
      it = series_.try_emplace(record.series).first;
    } else {
      it = series_.try_emplace(record.series).first;
      it->second.source = StaleKey(record.source);
      it->second.destination = StaleKey(record.destination);
    }
  }
  it->second.by_flags["-"].opened++;
  it->second.live++;
}

void FlowMetrics::Closed(const FlowRecord& record, const FlowEnd& end) {
  auto it = series_.find(record.series);
  if (it == series_.end()) return;  // never opened here
  Series& s = it->second;
  s.by_flags[end.flags].closed++;
  // Bytes stay with the series the connection opened under, so a live connection's bytes never
  // move between series when it ends (a counter must not go down).
  Counts& open = s.by_flags["-"];
  open.received += end.bytes_from_client;
  open.sent += end.bytes_to_client;
  if (s.live > 0) s.live--;
  if (s.live == 0 && s.stale) series_.erase(it);
}

void FlowMetrics::Refused(FlowRecord& record, const FlowEnd& end) {
  Opened(record);
  Closed(record, end);
}

void FlowMetrics::Prune(const std::vector<mesh::Workload>& workloads) {
  // Only the workloads some series names are looked for: one pass over the snapshot, a set as
  // large as the series.
  absl::flat_hash_map<std::string, bool> present;
  for (const auto& [key, s] : series_) {
    if (!s.source.empty()) present.emplace(s.source, false);
    if (!s.destination.empty()) present.emplace(s.destination, false);
  }
  if (present.empty()) return;
  std::string key;
  for (const mesh::Workload& w : workloads) {
    key.assign(w.namespace_name);
    key += '/';
    key += w.workload_name.empty() ? w.name : w.workload_name;
    if (auto it = present.find(key); it != present.end()) it->second = true;
  }
  auto gone = [&](const std::string& k) { return !k.empty() && !present.at(k); };
  for (auto it = series_.begin(); it != series_.end();) {
    Series& s = it->second;
    s.stale = gone(s.source) || gone(s.destination);
    if (s.stale && s.live == 0) {
      series_.erase(it++);
    } else {
      ++it;
    }
  }
}

void FlowMetrics::AppendTo(const std::vector<Live>& live, pb::StatsResponse* out) const {
  // Live bytes counted in under the series' "-" set, as Closed will.
  absl::flat_hash_map<std::string, std::pair<uint64_t, uint64_t>> live_bytes;
  for (const Live& l : live) {
    auto& b = live_bytes[l.record->series];
    b.first += l.from_client;
    b.second += l.to_client;
  }
  const auto& names = LabelNames();
  for (const auto& [series, s] : series_) {
    std::vector<std::string> values = absl::StrSplit(series, kFlagsSeparator);
    for (const auto& [flags, c] : s.by_flags) {
      pb::TcpSeries* t = out->add_tcp();
      for (size_t i = 0; i + 1 < names.size() && i < values.size(); ++i) {
        pb::Label* l = t->add_labels();
        l->set_name(names[i]);
        l->set_value(values[i]);
      }
      pb::Label* l = t->add_labels();
      l->set_name(names.back());
      l->set_value(flags);
      uint64_t received = c.received, sent = c.sent;
      if (flags == "-") {
        if (auto it = live_bytes.find(series); it != live_bytes.end()) {
          received += it->second.first;
          sent += it->second.second;
        }
      }
      t->set_opened(c.opened);
      t->set_closed(c.closed);
      t->set_sent_bytes(sent);
      t->set_received_bytes(received);
    }
  }
  for (auto [result, value] : {std::pair{"allow", allowed_}, std::pair{"deny", denied_}}) {
    pb::CounterValue* c = out->add_counters();
    c->set_name(std::string(metrics::kPolicyDecisions.name));
    pb::Label* l = c->add_labels();
    l->set_name("result");
    l->set_value(result);
    c->set_value(value);
  }
}

std::vector<std::pair<std::string, std::string>> IstioLabels(const FlowRecord& record) {
  std::vector<std::string> values = SeriesValues(record);
  const auto& names = FlowMetrics::LabelNames();
  std::vector<std::pair<std::string, std::string>> out;
  for (size_t i = 0; i < values.size() && i + 1 < names.size(); ++i) {
    out.emplace_back(names[i], std::move(values[i]));
  }
  return out;
}

std::string WorkloadKey(const FlowPeer& peer) { return StaleKey(peer); }

void ToProto(const FlowRecord& r, uint64_t from_client, uint64_t to_client, int worker,
             pb::FlowStat* out) {
  out->set_id(r.id);
  out->set_direction(FlowDirectionName(r.direction));
  out->set_pod(r.pod);
  out->set_mode(r.mode);
  out->set_mtls(r.mtls);
  auto fill = [](const FlowPeer& p, pb::FlowPeer* o) {
    o->set_workload(p.workload);
    o->set_namespace_(p.namespace_name);
    o->set_principal(p.principal);
    o->set_address(Address(p));
    o->set_service(p.service);
  };
  fill(r.source, out->mutable_source());
  fill(r.destination, out->mutable_destination());
  out->set_policy(r.policy);
  out->set_bytes_from_client(from_client);
  out->set_bytes_to_client(to_client);
  out->set_start_unix_ms(absl::ToUnixMillis(r.start));
  out->set_worker(worker);
}

}  // namespace ambit::tunnel
