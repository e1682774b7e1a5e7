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

TEST(StatsClientUnreachableTest, NoDataPlaneIsUnavailable) {
  EXPECT_EQ(DataPlane::SetLogLevel("/nonexistent/ambit/dataplane.sock", "", "info").code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace ambit::supervisor
