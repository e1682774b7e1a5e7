// ambitd's side of the data plane's stats socket (DataPlane::FetchStats, DataPlane::SetLogLevel)
// against a stand-in data plane on a real unix socket.

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <thread>

#include "agent/common/framed.h"
#include "agent/common/socket_util.h"
#include "agent/supervisor/dataplane.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::supervisor {
namespace {

namespace pb = ::ambit::dataplane::v1;
constexpr absl::Duration kTimeout = absl::Seconds(5);

class StatsClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/ambit-stats-client-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    control_socket_ = dir_ + "/dataplane.sock";
    auto fd = ListenUnix(StatsSocketFor(control_socket_), SOCK_STREAM);
    ASSERT_TRUE(fd.ok()) << fd.status();
    listen_ = std::move(*fd);
  }
  void TearDown() override {
    if (server_.joinable()) server_.join();
    unlink(StatsSocketFor(control_socket_).c_str());
    rmdir(dir_.c_str());
  }

  // Answers one request with `answer`, keeping what was asked in `asked_`.
  void ServeOnce(std::string answer) {
    server_ = std::thread([this, answer = std::move(answer)] {
      UniqueFd client(accept(listen_.get(), nullptr, nullptr));
      if (!client) return;
      auto bytes = ReadFramed(client.get(), 1 << 16, kTimeout);
      if (!bytes.ok() || !asked_.ParseFromString(*bytes)) return;
      (void)WriteFramed(client.get(), answer, kTimeout);
    });
  }

  std::string dir_, control_socket_;
  UniqueFd listen_;
  std::thread server_;
  pb::StatsSocketRequest asked_;
};

TEST_F(StatsClientTest, LogLevelGoesAsItsOwnRequest) {
  ServeOnce(pb::SetLogLevelResponse().SerializeAsString());
  EXPECT_TRUE(DataPlane::SetLogLevel(control_socket_, "hbone", "debug").ok());
  server_.join();
  ASSERT_TRUE(asked_.has_log_level());
  EXPECT_EQ(asked_.log_level().component(), "hbone");
  EXPECT_EQ(asked_.log_level().level(), "debug");
}

TEST_F(StatsClientTest, RefusedLogLevelIsAnError) {
  pb::SetLogLevelResponse refused;
  refused.set_error("unknown log level \"loud\"");
  ServeOnce(refused.SerializeAsString());
  auto status = DataPlane::SetLogLevel(control_socket_, "", "loud");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("loud"), std::string::npos);
}

TEST_F(StatsClientTest, StatsRequestCarriesNoLogLevel) {
  pb::StatsResponse answer;
  answer.set_snapshot_version(7);
  ServeOnce(answer.SerializeAsString());
  pb::StatsRequest request;
  request.set_metrics(true);
  auto response = DataPlane::FetchStats(control_socket_, request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->snapshot_version(), 7u);
  server_.join();
  ASSERT_TRUE(asked_.has_stats());
  EXPECT_TRUE(asked_.stats().metrics());
  EXPECT_FALSE(asked_.has_log_level());
}

TEST_F(StatsClientTest, ExtAuthzProbeCarriesTheRequestAndReadsTheAnswer) {
  pb::ExtAuthzProbeResponse answer;
  answer.set_outcome(pb::EXT_AUTHZ_PROBE_OUTCOME_DENY);
  answer.set_status(418);
  auto* h = answer.add_deny_headers();
  h->set_name("x-teapot");
  h->set_value("yes");
  answer.set_deny_body("short and stout");
  answer.set_latency_us(2100);
  answer.set_waypoint_pod("backend/wp");
  answer.set_provider_kind("http");
  answer.set_status_on_error(503);
  answer.set_timeout_ms(200);
  ServeOnce(answer.SerializeAsString());
  ExtAuthzProbeQuery query;
  query.waypoint = "backend/waypoint";
  query.provider = "sample-ext-authz-http";
  query.method = "POST";
  query.path = "/ext?x=1";
  query.host = "api.backend.svc.cluster.local";
  query.headers = {{"x-ext-authz", "deny-418"}};
  query.source_address = "198.18.0.10";
  query.source_principal = "spiffe://cluster.local/ns/default/sa/web";
  query.destination_address = "198.19.0.1:80";
  auto got = DataPlane::ProbeExtAuthz(control_socket_, query);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->outcome, ExtAuthzProbeAnswer::Outcome::kDeny);
  EXPECT_EQ(got->status, 418);
  ASSERT_EQ(got->deny_headers.size(), 1u);
  EXPECT_EQ(got->deny_headers[0].first, "x-teapot");
  EXPECT_EQ(got->deny_body, "short and stout");
  EXPECT_EQ(got->latency, absl::Microseconds(2100));
  EXPECT_EQ(got->status_on_error, 503u);
  EXPECT_EQ(got->timeout, absl::Milliseconds(200));
  server_.join();
  ASSERT_TRUE(asked_.has_ext_authz_probe());
  const pb::ExtAuthzProbeRequest& r = asked_.ext_authz_probe();
  EXPECT_EQ(r.waypoint(), "backend/waypoint");
  EXPECT_EQ(r.provider(), "sample-ext-authz-http");
  EXPECT_EQ(r.method(), "POST");
  EXPECT_EQ(r.path(), "/ext?x=1");
  ASSERT_EQ(r.headers_size(), 1);
  EXPECT_EQ(r.headers(0).value(), "deny-418");
  EXPECT_EQ(r.source_principal(), "spiffe://cluster.local/ns/default/sa/web");
  EXPECT_EQ(r.destination_address(), "198.19.0.1:80");
  EXPECT_FALSE(r.has_body());
}

TEST_F(StatsClientTest, ExtAuthzProbeTheWaypointRefusedSaysWhy) {
  pb::ExtAuthzProbeResponse answer;
  answer.set_error("no pod of waypoint backend/waypoint is served here");
  ServeOnce(answer.SerializeAsString());
  auto got = DataPlane::ProbeExtAuthz(control_socket_, {.waypoint = "backend/waypoint"});
  EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(got.status().message().find("no pod of waypoint"), std::string::npos);
}

TEST_F(StatsClientTest, ExtAuthzProbeWithoutAnAnswerIsUnavailable) {
  // An older data plane that does not know the request closes without answering.
  server_ = std::thread([this] {
    UniqueFd client(accept(listen_.get(), nullptr, nullptr));
    if (client) (void)ReadFramed(client.get(), 1 << 16, kTimeout);
  });
  auto got = DataPlane::ProbeExtAuthz(control_socket_, {.waypoint = "backend/waypoint"});
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable);
}

TEST(ExtAuthzProbeAnswerTest, RefusesUnspecifiedOrUnknownEnumsAndImpossibleStatuses) {
  pb::ExtAuthzProbeResponse r;
  EXPECT_EQ(ExtAuthzProbeAnswerFromProto(r).status().code(), absl::StatusCode::kDataLoss);
  r.set_outcome(static_cast<pb::ExtAuthzProbeOutcome>(9));
  EXPECT_EQ(ExtAuthzProbeAnswerFromProto(r).status().code(), absl::StatusCode::kDataLoss);
  r.set_outcome(pb::EXT_AUTHZ_PROBE_OUTCOME_DENY);
  r.set_status(0);
  EXPECT_EQ(ExtAuthzProbeAnswerFromProto(r).status().code(), absl::StatusCode::kDataLoss);
  r.set_status(403);
  EXPECT_TRUE(ExtAuthzProbeAnswerFromProto(r).ok());
  r.set_outcome(pb::EXT_AUTHZ_PROBE_OUTCOME_ALLOW);
  auto* edit = r.add_upstream_edits();
  edit->set_name("x-a");
  EXPECT_EQ(ExtAuthzProbeAnswerFromProto(r).status().code(), absl::StatusCode::kDataLoss);
  edit->set_op(static_cast<pb::ProbeHeaderEditOp>(42));
  EXPECT_EQ(ExtAuthzProbeAnswerFromProto(r).status().code(), absl::StatusCode::kDataLoss);
  edit->set_op(pb::PROBE_HEADER_EDIT_OP_REMOVE);
  auto ok = ExtAuthzProbeAnswerFromProto(r);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->upstream_edits[0].op, ExtAuthzProbeAnswer::HeaderEdit::Op::kRemove);
  r.set_latency_us(-1);
  EXPECT_EQ(ExtAuthzProbeAnswerFromProto(r).status().code(), absl::StatusCode::kDataLoss);
}

TEST(ExtAuthzProbeAnswerTest, AnErrorAnswerKeepsTheProvidersSettings) {
  pb::ExtAuthzProbeResponse r;
  r.set_outcome(pb::EXT_AUTHZ_PROBE_OUTCOME_ERROR);
  r.set_detail("timeout after 200ms");
  r.set_fail_open(true);
  auto a = ExtAuthzProbeAnswerFromProto(r);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->outcome, ExtAuthzProbeAnswer::Outcome::kError);
  EXPECT_TRUE(a->fail_open);
  EXPECT_EQ(a->status_on_error, 403u);  // unset: Istio's default
  EXPECT_EQ(a->detail, "timeout after 200ms");
}

TEST(StatsClientUnreachableTest, NoDataPlaneIsUnavailable) {
  EXPECT_EQ(DataPlane::SetLogLevel("/nonexistent/ambit/dataplane.sock", "", "info").code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace ambit::supervisor
