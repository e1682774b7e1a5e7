#include "agent/tunnel/flow_stats.h"

#include <gtest/gtest.h>

#include <map>

#include "absl/strings/match.h"
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
  std::string line = AccessLogLine(Inbound(), end, absl::FromUnixMillis(1800000000250), false);
  EXPECT_EQ(line,
            "start=2027-01-15T08:00:00.000Z direction=inbound mode=hbone src=198.18.0.2:41000 "
            "src_workload=frontend/web src_identity=spiffe://cluster.local/ns/frontend/sa/web "
            "dst=198.18.0.5:8080 dst_workload=backend/api "
            "dst_identity=spiffe://cluster.local/ns/backend/sa/api dst_service=- "
            "security=mutual_tls decision=allow policy=backend/api-callers bytes_sent=100 "
            "bytes_received=2000 duration=250ms flags=- error=-");
}

TEST(AccessLog, ReasonsAreQuotedAndStayOnOneLine) {
  FlowEnd end{true, "DENY", "denied by \"x\"\nsecond line"};
  std::string line = AccessLogLine(Inbound(), end, absl::FromUnixMillis(1800000000000), false);
  EXPECT_TRUE(absl::StrContains(line, "decision=deny")) << line;
  EXPECT_TRUE(absl::StrContains(line, "error=\"denied by \\\"x\\\" second line\"")) << line;
  EXPECT_FALSE(absl::StrContains(line, "\n"));
}

TEST(AccessLog, JsonLineIsOneObjectWithNumbers) {
  FlowEnd end{true, "DENY", "denied by DENY policy backend/no-9001 rule 0"};
  end.bytes_from_client = 5;
  std::string line = AccessLogLine(Inbound(), end, absl::FromUnixMillis(1800000001000), true);
  EXPECT_FALSE(absl::StrContains(line, "\n"));
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["decision"], "deny");
  EXPECT_EQ(j["flags"], "DENY");
  EXPECT_EQ(j["bytes_sent"], 5);
  EXPECT_EQ(j["bytes_received"], 0);
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
  std::string line = AccessLogLine(r, FlowEnd{}, r.start, false);
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

}  // namespace
}  // namespace ambit::tunnel
