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

std::vector<std::string> SeriesValues(const FlowRecord& r) {
  // A kubelet probe has no workload or identity of its own; Istio's metrics show it as coming
  // from no workload, ambit's name it.
  const bool probe = r.mode == kKubeletProbe;
  return {r.direction == FlowDirection::kOutbound ? "source" : "destination",
          probe ? std::string(kKubeletProbe) : OrUnknown(r.source.workload),
          OrUnknown(r.source.namespace_name),
          OrUnknown(r.source.principal),
          OrUnknown(r.destination.workload),
          OrUnknown(r.destination.namespace_name),
          OrUnknown(r.destination.principal),
          r.destination.service.empty() ? "unknown" : ServiceHost(r.destination.service),
          "tcp",
          r.mtls ? "mutual_tls" : "none"};
}

std::string Address(const FlowPeer& p) { return p.address ? p.address->ToString() : ""; }

std::string Workload(const FlowPeer& p) {
  if (p.workload.empty()) return "";
  return absl::StrCat(p.namespace_name, "/", p.workload);
}

}  // namespace

const char* FlowDirectionName(FlowDirection direction) {
  return direction == FlowDirection::kOutbound ? "outbound" : "inbound";
}

std::string AccessLogLine(const FlowRecord& r, const FlowEnd& end, absl::Time now, bool json) {
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
      {"bytes_sent", absl::StrCat(end.bytes_from_client), count(end.bytes_from_client)},
      {"bytes_received", absl::StrCat(end.bytes_to_client), count(end.bytes_to_client)},
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
  static const std::vector<std::string> kNames = {
      "reporter",
      "source_workload",
      "source_workload_namespace",
      "source_principal",
      "destination_workload",
      "destination_workload_namespace",
      "destination_principal",
      "destination_service",
      "request_protocol",
      "connection_security_policy",
      "response_flags",
  };
  return kNames;
}

FlowMetrics::Series& FlowMetrics::At(const std::string& series, const std::string& flags) {
  std::string key = series;
  key += kFlagsSeparator;
  key += flags;
  return series_[key];
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
  At(record.series, "-").opened++;
}

void FlowMetrics::Closed(const FlowRecord& record, const FlowEnd& end) {
  At(record.series, end.flags).closed++;
  // Bytes stay with the series the connection opened under, so a live connection's bytes never
  // move between series when it ends (a counter must not go down).
  Series& open = At(record.series, "-");
  open.received += end.bytes_from_client;
  open.sent += end.bytes_to_client;
}

void FlowMetrics::Refused(FlowRecord& record, const FlowEnd& end) {
  Opened(record);
  Closed(record, end);
}

void FlowMetrics::AppendTo(const std::vector<Live>& live, pb::StatsResponse* out) const {
  absl::flat_hash_map<std::string, Series> all = series_;
  for (const Live& l : live) {
    Series& s = all[l.record->series + kFlagsSeparator + "-"];
    s.received += l.from_client;
    s.sent += l.to_client;
  }
  const auto& names = LabelNames();
  for (const auto& [key, s] : all) {
    pb::TcpSeries* t = out->add_tcp();
    std::vector<std::string> values = absl::StrSplit(key, kFlagsSeparator);
    for (size_t i = 0; i < names.size() && i < values.size(); ++i) {
      pb::Label* l = t->add_labels();
      l->set_name(names[i]);
      l->set_value(values[i]);
    }
    t->set_opened(s.opened);
    t->set_closed(s.closed);
    t->set_sent_bytes(s.sent);
    t->set_received_bytes(s.received);
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
