// Where the agent's side of a data-plane process connects (agent/supervisor/dataplane.h): a
// roll's standby on <control socket>.next until it is promoted, the control socket after.

#include "agent/supervisor/dataplane.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <string>

#include "absl/strings/match.h"

namespace ambit::supervisor {
namespace {

DataPlane::Options StandbyOptions(const std::string& socket) {
  DataPlane::Options o;
  o.binary = "/nonexistent/ambit-tunnel";
  o.control_socket = socket;
  o.name = "data plane (standby)";
  o.connect_socket = socket + ".next";
  o.tag = 7;
  return o;
}

class DataPlaneTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ambit-dp-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    socket_ = dir_ + "/dataplane.sock";
  }
  void TearDown() override { rmdir(dir_.c_str()); }
  std::string dir_, socket_;
};

TEST_F(DataPlaneTest, StandbyConnectsToNext) {
  DataPlane dp(StandbyOptions(socket_));
  EXPECT_EQ(dp.connect_socket(), socket_ + ".next");
  auto r = dp.Connect(/*spawn=*/false);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(r.status().message(), "data plane (standby)"))
      << r.status().message();
  EXPECT_TRUE(absl::StrContains(r.status().message(), socket_ + ".next")) << r.status().message();
}

// After a promotion a reconnect or restart must go to the control socket: on .next it would
// wait for a primary that listens elsewhere (a restart that never served).
TEST_F(DataPlaneTest, PromotedConnectsToTheControlSocketUnderThePrimaryName) {
  DataPlane dp(StandbyOptions(socket_));
  dp.BecomePrimary("data plane");
  EXPECT_EQ(dp.connect_socket(), socket_);
  EXPECT_EQ(dp.control_socket(), socket_);
  EXPECT_EQ(dp.tag(), 7u);  // answers computed for the standby still find it
  auto r = dp.Connect(/*spawn=*/false);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  const std::string message(r.status().message());
  EXPECT_TRUE(absl::StrContains(message, "no data plane serves " + socket_ + " (")) << message;
  EXPECT_FALSE(absl::StrContains(message, ".next")) << message;
  EXPECT_FALSE(absl::StrContains(message, "standby")) << message;
}

}  // namespace
}  // namespace ambit::supervisor
