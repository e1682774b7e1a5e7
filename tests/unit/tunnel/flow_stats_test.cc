#include "agent/tunnel/flow_stats.h"

#include <gtest/gtest.h>

#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "ambit/dataplane/v1/dataplane.pb.h"
#include "nlohmann/json.hpp"

namespace ambit::tunnel {
namespace {

namespace pb = ::ambit::dataplane::v1;

FlowRecord Inbound() {
  FlowRecord r;
  r.direction = FlowDirection::kInbound;
  r.pod = "backend/api";
  r.mode = "hbone";
  r.mtls = true;
  r.source = {"web", "frontend", "spiffe://cluster.local/ns/frontend/sa/web", "",
              *SocketAddress::Parse("198.18.0.2:41000")};
  r.destination = {"api", "backend", "spiffe://cluster.local/ns/backend/sa/api", "",
                   *SocketAddress::Parse("198.18.0.5:8080")};
  r.policy = "backend/api-callers";
  r.start = absl::FromUnixMillis(1800000000000);
  return r;
}

std::map<std::string, std::string> Labels(const pb::TcpSeries& s) {
  std::map<std::string, std::string> out;
  for (const auto& l : s.labels()) out[l.name()] = l.value();
  return out;
}

TEST(AccessLog, TextLineNamesBothEndsBytesAndDecision) {
  FlowEnd end;
  end.bytes_from_client = 100;
  end.bytes_to_client = 2000;
  std::string line =
      AccessLogLine(Inbound(), end, absl::FromUnixMillis(1800000000250), AccessLogFormat::kText);
  EXPECT_EQ(line,
            "start=2027-01-15T08:00:00.000Z direction=inbound mode=hbone src=198.18.0.2:41000 "
            "src_workload=frontend/web src_identity=spiffe://cluster.local/ns/frontend/sa/web "
            "dst=198.18.0.5:8080 dst_workload=backend/api "
            "dst_identity=spiffe://cluster.local/ns/backend/sa/api dst_service=- "
            "security=mutual_tls decision=allow policy=backend/api-callers bytes_sent=2000 "
            "bytes_received=100 duration=250ms flags=- error=-");
}

TEST(AccessLog, ReasonsAreQuotedAndStayOnOneLine) {
  FlowEnd end{true, "DENY", "denied by \"x\"\nsecond line"};
  std::string line =
      AccessLogLine(Inbound(), end, absl::FromUnixMillis(1800000000000), AccessLogFormat::kText);
  EXPECT_TRUE(absl::StrContains(line, "decision=deny")) << line;
  EXPECT_TRUE(absl::StrContains(line, "error=\"denied by \\\"x\\\" second line\"")) << line;
  EXPECT_FALSE(absl::StrContains(line, "\n"));
}

TEST(AccessLog, JsonLineIsOneObjectWithNumbers) {
  FlowEnd end{true, "DENY", "denied by DENY policy backend/no-9001 rule 0"};
  end.bytes_from_client = 5;
  std::string line =
      AccessLogLine(Inbound(), end, absl::FromUnixMillis(1800000001000), AccessLogFormat::kJson);
  EXPECT_FALSE(absl::StrContains(line, "\n"));
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["decision"], "deny");
  EXPECT_EQ(j["flags"], "DENY");
  EXPECT_EQ(j["bytes_sent"], 0);  // nothing went back to the client
  EXPECT_EQ(j["bytes_received"], 5);
  EXPECT_EQ(j["duration_ms"], 1000);
  EXPECT_EQ(j["src_identity"], "spiffe://cluster.local/ns/frontend/sa/web");
  EXPECT_FALSE(j.contains("dst_service"));  // empty fields are left out
}

TEST(FlowMetrics, IstioLabelsAndBytesOfClosedAndLiveConnections) {
  FlowMetrics m;
  FlowRecord a = Inbound(), b = Inbound();
  m.Opened(a);
  m.Opened(b);
  FlowEnd end;
  end.bytes_from_client = 10;
  end.bytes_to_client = 20;
  m.Closed(a, end);
  pb::StatsResponse out;
  m.AppendTo({{&b, 1, 2}}, &out);
  ASSERT_EQ(out.tcp_size(), 1);
  const auto& s = out.tcp(0);
  EXPECT_EQ(s.opened(), 2u);
  EXPECT_EQ(s.closed(), 1u);
  EXPECT_EQ(s.received_bytes(), 11u);  // from the client: the closed 10 and the live 1
  EXPECT_EQ(s.sent_bytes(), 22u);
  auto labels = Labels(s);
  EXPECT_EQ(labels["reporter"], "destination");
  EXPECT_EQ(labels["source_workload"], "web");
  EXPECT_EQ(labels["source_workload_namespace"], "frontend");
  EXPECT_EQ(labels["source_principal"], "spiffe://cluster.local/ns/frontend/sa/web");
  EXPECT_EQ(labels["destination_workload"], "api");
  EXPECT_EQ(labels["destination_principal"], "spiffe://cluster.local/ns/backend/sa/api");
  EXPECT_EQ(labels["destination_service"], "unknown");
  EXPECT_EQ(labels["connection_security_policy"], "mutual_tls");
  EXPECT_EQ(labels["request_protocol"], "tcp");
  EXPECT_EQ(labels["response_flags"], "-");
  EXPECT_EQ(labels.size(), FlowMetrics::LabelNames().size());
}

TEST(FlowMetrics, RefusedConnectionsCloseUnderTheirFlagWithoutMovingBytes) {
  FlowMetrics m;
  FlowRecord r = Inbound();
  r.mtls = false;
  r.source.principal.clear();
  r.destination.service = "backend/api";
  m.Refused(r, FlowEnd{true, "DENY", "plaintext refused"});
  m.Decision(false);
  pb::StatsResponse out;
  m.AppendTo({}, &out);
  std::map<std::string, const pb::TcpSeries*> by_flag;
  for (const auto& s : out.tcp()) by_flag[Labels(s)["response_flags"]] = &s;
  ASSERT_EQ(by_flag.size(), 2u);
  EXPECT_EQ(by_flag["-"]->opened(), 1u);
  EXPECT_EQ(by_flag["-"]->closed(), 0u);
  EXPECT_EQ(by_flag["DENY"]->opened(), 0u);
  EXPECT_EQ(by_flag["DENY"]->closed(), 1u);
  auto labels = Labels(*by_flag["DENY"]);
  EXPECT_EQ(labels["source_principal"], "unknown");
  EXPECT_EQ(labels["connection_security_policy"], "none");
  EXPECT_EQ(labels["destination_service"], "api.backend.svc.cluster.local");
  bool saw_deny = false;
  for (const auto& c : out.counters()) {
    if (c.name() == "ambit_policy_decisions_total" && c.labels(0).value() == "deny") {
      EXPECT_EQ(c.value(), 1u);
      saw_deny = true;
    }
  }
  EXPECT_TRUE(saw_deny);
}

TEST(FlowMetrics, KubeletProbesAreNamedInTheLogAndTheSeries) {
  FlowRecord r = Inbound();
  r.mode = kKubeletProbe;
  r.policy = kKubeletProbe;
  r.mtls = false;
  r.source = {"", "", "", "", *SocketAddress::Parse("198.18.0.250:41000")};
  std::string line = AccessLogLine(r, FlowEnd{}, r.start, AccessLogFormat::kText);
  EXPECT_TRUE(absl::StrContains(line, "mode=\"kubelet probe\" src=198.18.0.250:41000")) << line;
  EXPECT_TRUE(absl::StrContains(line, "policy=\"kubelet probe\"")) << line;
  FlowMetrics m;
  m.Opened(r);
  pb::StatsResponse out;
  m.AppendTo({}, &out);
  ASSERT_EQ(out.tcp_size(), 1);
  auto labels = Labels(out.tcp(0));
  EXPECT_EQ(labels["source_workload"], "kubelet probe");
  EXPECT_EQ(labels["source_principal"], "unknown");
  EXPECT_EQ(labels["destination_workload"], "api");
  EXPECT_EQ(labels["connection_security_policy"], "none");
}

TEST(FlowMetrics, ConnectionsListIdentitiesAndBytes) {
  pb::FlowStat f;
  FlowRecord r = Inbound();
  r.id = 7;
  ToProto(r, 3, 4, 1, &f);
  EXPECT_EQ(f.id(), 7u);
  EXPECT_EQ(f.direction(), "inbound");
  EXPECT_EQ(f.source().principal(), "spiffe://cluster.local/ns/frontend/sa/web");
  EXPECT_EQ(f.source().address(), "198.18.0.2:41000");
  EXPECT_EQ(f.destination().workload(), "api");
  EXPECT_EQ(f.bytes_from_client(), 3u);
  EXPECT_EQ(f.bytes_to_client(), 4u);
  EXPECT_EQ(f.start_unix_ms(), 1800000000000);
  EXPECT_EQ(f.worker(), 1);
}

// A flow between two Deployment-owned pods, with Istio's workload metadata on both ends.
FlowRecord Outbound() {
  FlowRecord r;
  r.direction = FlowDirection::kOutbound;
  r.pod = "frontend/web-5d4f8b7c9-x2x7q";
  r.mode = "hbone";
  r.mtls = true;
  r.source = {"web-5d4f8b7c9-x2x7q",
              "frontend",
              "spiffe://cluster.local/ns/frontend/sa/web",
              "",
              *SocketAddress::Parse("198.18.0.2:41000"),
              "web",
              "web",
              "v1"};
  r.destination = {"api-6b9f7c4d8-kq2zp",
                   "backend",
                   "spiffe://cluster.local/ns/backend/sa/api",
                   "backend/api",
                   *SocketAddress::Parse("198.18.0.5:8080"),
                   "api",
                   "api-svc",
                   "latest"};
  r.start = absl::FromUnixMillis(1800000000000);
  r.cluster = "Kubernetes";
  return r;
}

TEST(FlowMetrics, EveryIstioLabelWithTheOwnerAndCanonicalNames) {
  FlowMetrics m;
  FlowRecord r = Outbound();
  m.Opened(r);
  pb::StatsResponse out;
  m.AppendTo({}, &out);
  ASSERT_EQ(out.tcp_size(), 1);
  const std::map<std::string, std::string> expected = {
      {"reporter", "source"},
      {"source_workload", "web"},
      {"source_canonical_service", "web"},
      {"source_canonical_revision", "v1"},
      {"source_workload_namespace", "frontend"},
      {"source_principal", "spiffe://cluster.local/ns/frontend/sa/web"},
      {"source_app", "web"},
      {"source_version", "v1"},
      {"source_cluster", "Kubernetes"},
      {"destination_service", "api.backend.svc.cluster.local"},
      {"destination_service_namespace", "backend"},
      {"destination_service_name", "api"},
      {"destination_workload", "api"},
      {"destination_canonical_service", "api-svc"},
      {"destination_canonical_revision", "latest"},
      {"destination_workload_namespace", "backend"},
      {"destination_principal", "spiffe://cluster.local/ns/backend/sa/api"},
      {"destination_app", "api-svc"},
      {"destination_version", "latest"},
      {"destination_cluster", "Kubernetes"},
      {"request_protocol", "tcp"},
      {"connection_security_policy", "mutual_tls"},
      {"response_flags", "-"},
  };
  EXPECT_EQ(Labels(out.tcp(0)), expected);
  // The label names are the declared ones, in their order.
  std::vector<std::string> names;
  for (const auto& l : out.tcp(0).labels()) names.push_back(l.name());
  EXPECT_EQ(names, FlowMetrics::LabelNames());
}

TEST(FlowMetrics, AnUnknownPeerIsUnknownInEveryLabelOfItsEnd) {
  FlowMetrics m;
  FlowRecord r = Outbound();
  r.destination = {"", "", "", "", *SocketAddress::Parse("203.0.113.9:443")};
  r.mtls = false;
  m.Opened(r);
  pb::StatsResponse out;
  m.AppendTo({}, &out);
  ASSERT_EQ(out.tcp_size(), 1);
  auto labels = Labels(out.tcp(0));
  for (const char* name :
       {"destination_workload", "destination_canonical_service", "destination_canonical_revision",
        "destination_workload_namespace", "destination_principal", "destination_app",
        "destination_version", "destination_cluster", "destination_service",
        "destination_service_name", "destination_service_namespace"}) {
    EXPECT_EQ(labels[name], "unknown") << name;
  }
  EXPECT_EQ(labels["source_cluster"], "Kubernetes");
}

mesh::Workload MeshWorkload(const std::string& ns, const std::string& pod,
                            const std::string& workload_name) {
  mesh::Workload w;
  w.namespace_name = ns;
  w.name = pod;
  w.workload_name = workload_name;
  return w;
}

TEST(FlowMetrics, SeriesOfARemovedWorkloadGoOnceItsConnectionsEnd) {
  FlowMetrics m;
  FlowRecord closed = Outbound();
  m.Opened(closed);
  m.Closed(closed, FlowEnd{});
  FlowRecord live = Outbound();
  live.destination.workload_name = "db";
  live.destination.canonical_service = "db";
  m.Opened(live);
  ASSERT_EQ(m.series_count(), 2u);

  // Another pod of the same Deployment keeps them.
  m.Prune({MeshWorkload("frontend", "web-other", "web"), MeshWorkload("backend", "api-2", "api"),
           MeshWorkload("backend", "db-0", "db")});
  EXPECT_EQ(m.series_count(), 2u);

  // api and db leave: api's closed series goes now, db's when its connection closes.
  m.Prune({MeshWorkload("frontend", "web-other", "web")});
  EXPECT_EQ(m.series_count(), 1u);
  pb::StatsResponse out;
  m.AppendTo({{&live, 1, 1}}, &out);
  ASSERT_EQ(out.tcp_size(), 1);
  EXPECT_EQ(Labels(out.tcp(0))["destination_workload"], "db");
  m.Closed(live, FlowEnd{});
  EXPECT_EQ(m.series_count(), 0u);
  pb::StatsResponse after;
  m.AppendTo({}, &after);
  EXPECT_EQ(after.tcp_size(), 0);
}

TEST(FlowMetrics, UnknownPeersNeverMakeASeriesStale) {
  FlowMetrics m;
  FlowRecord r = Outbound();
  r.destination = {"", "", "", "", *SocketAddress::Parse("203.0.113.9:443")};
  m.Opened(r);
  m.Closed(r, FlowEnd{});
  m.Prune({MeshWorkload("frontend", "web-5d4f8b7c9-x2x7q", "web")});
  EXPECT_EQ(m.series_count(), 1u);
}

TEST(FlowMetrics, LabelSetsAreBoundedAndTheRestCountedUnderTheOverflowSet) {
  FlowMetrics m;
  for (size_t i = 0; i < FlowMetrics::kMaxSeries + 5; ++i) {
    FlowRecord r = Outbound();
    r.destination.workload_name = absl::StrCat("api-", i);
    m.Opened(r);
    m.Closed(r, FlowEnd{});
  }
  EXPECT_EQ(m.series_count(), FlowMetrics::kMaxSeries + 1);
  pb::StatsResponse out;
  m.AppendTo({}, &out);
  uint64_t overflow = 0;
  for (const auto& s : out.tcp()) {
    auto labels = Labels(s);
    if (labels["source_workload"] == "unknown") {
      overflow += s.opened();
      EXPECT_EQ(labels["destination_workload"], "unknown");
      EXPECT_EQ(labels["reporter"], "source");
    }
  }
  EXPECT_EQ(overflow, 5u);
}

TEST(AccessLog, ZtunnelKeysFromTheReportersPointOfView) {
  FlowEnd end;
  end.bytes_from_client = 100;  // what the local (source) pod sent
  end.bytes_to_client = 2000;
  std::string line = AccessLogLine(Outbound(), end, absl::FromUnixMillis(1800000000250),
                                   AccessLogFormat::kZtunnel);
  EXPECT_EQ(line,
            "connection complete src.addr=198.18.0.2:41000 src.workload=\"web-5d4f8b7c9-x2x7q\" "
            "src.namespace=\"frontend\" src.identity=\"spiffe://cluster.local/ns/frontend/sa/web\" "
            "src.cluster=\"Kubernetes\" dst.addr=198.18.0.5:8080 "
            "dst.service=\"api.backend.svc.cluster.local\" dst.workload=\"api-6b9f7c4d8-kq2zp\" "
            "dst.namespace=\"backend\" dst.identity=\"spiffe://cluster.local/ns/backend/sa/api\" "
            "dst.cluster=\"Kubernetes\" direction=\"outbound\" bytes_sent=100 bytes_recv=2000 "
            "duration=\"250ms\"");

  // The destination's reporter sent what went to the client.
  FlowRecord in = Outbound();
  in.direction = FlowDirection::kInbound;
  in.mtls = false;
  auto j = nlohmann::json::parse(AccessLogLine(in, FlowEnd{true, "DENY", "denied"},
                                               absl::FromUnixMillis(1800000001000),
                                               AccessLogFormat::kZtunnelJson));
  EXPECT_EQ(j["scope"], "access");
  EXPECT_EQ(j["message"], "connection complete");
  EXPECT_EQ(j["direction"], "inbound");
  EXPECT_EQ(j["bytes_sent"], 0);
  EXPECT_EQ(j["duration"], "1000ms");
  EXPECT_EQ(j["error"], "denied");
  EXPECT_EQ(j["level"], "error");
  EXPECT_EQ(j["src.workload"], "web-5d4f8b7c9-x2x7q");
  // Identities only for mutual TLS, as ztunnel.
  EXPECT_FALSE(j.contains("src.identity"));
  EXPECT_FALSE(j.contains("dst.identity"));
}

TEST(AccessLog, FormatNames) {
  EXPECT_EQ(ParseAccessLogFormat("ztunnel"), AccessLogFormat::kZtunnel);
  EXPECT_EQ(ParseAccessLogFormat("ztunnel-json"), AccessLogFormat::kZtunnelJson);
  EXPECT_EQ(ParseAccessLogFormat("text"), AccessLogFormat::kText);
  EXPECT_EQ(ParseAccessLogFormat("json"), AccessLogFormat::kJson);
  EXPECT_EQ(ParseAccessLogFormat("Ztunnel"), std::nullopt);
  EXPECT_EQ(ParseAccessLogFormat(""), std::nullopt);
}

}  // namespace
}  // namespace ambit::tunnel
