#include "agent/waypoint/metrics.h"

#include "agent/waypoint/access_log.h"
#include "gtest/gtest.h"

namespace ambit::waypoint {
namespace {

TEST(HttpMetricsTest, RendersIstioFamiliesByResponseCode) {
  HttpMetrics m;
  m.Record(200, 3.0, 100, 2000);
  m.Record(200, 700.0, 10, 20);
  m.Record(403, 0.2, 50, 150);
  EXPECT_EQ(m.requests(200), 2u);
  const std::string text = m.RenderPrometheus();
  EXPECT_NE(text.find("# TYPE istio_requests_total counter"), std::string::npos);
  EXPECT_NE(text.find("istio_requests_total{reporter=\"waypoint\",response_code=\"200\"} 2"),
            std::string::npos);
  EXPECT_NE(text.find("# TYPE istio_request_duration_milliseconds histogram"), std::string::npos);
  // Cumulative buckets: 3 ms is under le=5, 700 ms is not under le=500.
  EXPECT_NE(text.find("istio_request_duration_milliseconds_bucket{reporter=\"waypoint\","
                      "response_code=\"200\",le=\"5\"} 1"),
            std::string::npos);
  EXPECT_NE(text.find("istio_request_duration_milliseconds_bucket{reporter=\"waypoint\","
                      "response_code=\"200\",le=\"1000\"} 2"),
            std::string::npos);
  EXPECT_NE(text.find("istio_response_bytes_sum{reporter=\"waypoint\",response_code=\"200\"} "
                      "2020"),
            std::string::npos);
  EXPECT_NE(text.find("istio_request_bytes_count{reporter=\"waypoint\",response_code=\"403\"} 1"),
            std::string::npos);
}

TEST(AccessLogTest, OneLineWithEveryField) {
  RequestLogEntry e;
  e.start = absl::FromUnixSeconds(1800000000);
  e.protocol = "HTTP/1.1";
  e.method = "GET";
  e.authority = "svc:80";
  e.path = "/a b\r\nforged=1";
  e.status = 403;
  e.details = "rbac_access_denied";
  e.policy = "ns/p";
  const std::string line = AccessLogLine(e);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_NE(line.find("path=\"/a b  forged=1\""), std::string::npos) << line;
  EXPECT_NE(line.find("status=403"), std::string::npos);
  EXPECT_NE(line.find("jwt_principal=-"), std::string::npos);
  EXPECT_NE(line.find("policy=ns/p"), std::string::npos);
  EXPECT_NE(line.find("policy=ns/p ext_authz=- upstream="), std::string::npos) << line;
}

TEST(AccessLogTest, ExactLineWithMillisecondsAcrossSeconds) {
  RequestLogEntry e;
  e.protocol = "HTTP/1.1";
  e.method = "GET";
  e.authority = "svc:80";
  e.path = "/x";
  e.status = 200;
  e.duration = absl::Milliseconds(12);
  e.bytes_received = 75;
  e.bytes_sent = 120;
  e.source = "198.18.0.1:40000";
  e.source_identity = "spiffe://cluster.local/ns/default/sa/client";
  e.upstream = "198.18.0.2:8080";
  const std::string rest =
      " protocol=HTTP/1.1 method=GET authority=svc:80 path=/x status=200 flags=- details=- "
      "duration=12ms bytes_received=75 bytes_sent=120 src=198.18.0.1:40000 "
      "src_identity=spiffe://cluster.local/ns/default/sa/client jwt_principal=- policy=- "
      "ext_authz=- upstream=198.18.0.2:8080";
  // The second's text is cached: lines within one second, then the next, then an older one.
  e.start = absl::FromUnixMillis(1800000000250);
  EXPECT_EQ(AccessLogLine(e), "start=2027-01-15T08:00:00.250Z" + rest);
  e.start = absl::FromUnixMillis(1800000000007);
  EXPECT_EQ(AccessLogLine(e), "start=2027-01-15T08:00:00.007Z" + rest);
  e.start = absl::FromUnixMillis(1800000001999) + absl::Microseconds(999);
  EXPECT_EQ(AccessLogLine(e), "start=2027-01-15T08:00:01.999Z" + rest);
  e.start = absl::FromUnixMillis(-1);
  EXPECT_EQ(AccessLogLine(e), "start=1969-12-31T23:59:59.999Z" + rest);
}

TEST(AccessLogTest, ExtAuthzFollowsThePolicy) {
  RequestLogEntry e;
  e.policy = "ns/ext";
  e.ext_authz = "sample-ext-authz:deny:12";
  const std::string line = AccessLogLine(e);
  EXPECT_NE(line.find("policy=ns/ext ext_authz=sample-ext-authz:deny:12 upstream=-"),
            std::string::npos)
      << line;
}

TEST(HttpMetricsTest, IstioLabelsPerConnectionAndForgottenWorkloads) {
  HttpMetrics m;
  HttpMetrics::RequestLabels web{
      HttpMetrics::RenderLabels({{"source_workload", "web"}, {"destination_service", "a\"b"}}),
      "default/web", "backend/api"};
  HttpMetrics::RequestLabels db{HttpMetrics::RenderLabels({{"source_workload", "db"}}),
                                "backend/db", ""};
  m.Record(web, 200, 1.0, 10, 20);
  m.Record(db, 200, 1.0, 10, 20);
  EXPECT_EQ(m.requests(200), 2u);
  std::string text = m.RenderPrometheus();
  EXPECT_NE(text.find("istio_requests_total{reporter=\"waypoint\",source_workload=\"web\","
                      "destination_service=\"a\\\"b\",response_code=\"200\"} 1"),
            std::string::npos)
      << text;
  EXPECT_EQ(m.Workloads(), (std::vector<std::string>{"backend/api", "backend/db", "default/web"}));
  m.Forget({"backend/db"});
  text = m.RenderPrometheus();
  EXPECT_EQ(text.find("source_workload=\"db\""), std::string::npos) << text;
  EXPECT_NE(text.find("source_workload=\"web\""), std::string::npos) << text;
  EXPECT_EQ(m.requests(200), 1u);
}

}  // namespace
}  // namespace ambit::waypoint
