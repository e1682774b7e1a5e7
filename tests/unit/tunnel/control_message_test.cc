// The data plane's decoding of control packets from the agent (agent/tunnel/control_message.h).

#include "agent/tunnel/control_message.h"

#include <gtest/gtest.h>

#include <string>

namespace ambit::tunnel {
namespace {

namespace pb = ::ambit::dataplane::v1;

std::string Bytes(const pb::Envelope& env) { return env.SerializeAsString(); }

pb::Envelope Current() {
  pb::Envelope env;
  env.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
  return env;
}

TEST(DecodeAgentMessageTest, AcceptsEachAgentMessageWithItsDescriptors) {
  pb::Envelope maps = Current();
  maps.mutable_maps()->add_fds(pb::FD_ROLE_ORIG_DST_MAP);
  maps.mutable_maps()->add_fds(pb::FD_ROLE_DELIVER_MAP);
  EXPECT_TRUE(DecodeAgentMessage(Bytes(maps), 2).ok());

  pb::Envelope pod = Current();
  pod.mutable_add_pod()->set_uid("default/web");
  pod.mutable_add_pod()->add_fds(pb::FD_ROLE_NETNS);
  pod.mutable_add_pod()->add_fds(pb::FD_ROLE_OUTBOUND_V4);
  auto decoded = DecodeAgentMessage(Bytes(pod), 2);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->add_pod().uid(), "default/web");

  pb::Envelope snapshot = Current();
  snapshot.mutable_snapshot()->set_version(7);
  EXPECT_TRUE(DecodeAgentMessage(Bytes(snapshot), 0).ok());

  // A sealed-file snapshot reaches the handler whatever it carried: a wrong count is nacked
  // there, failing closed, instead of ending the control session.
  pb::Envelope ref = Current();
  ref.mutable_snapshot_ref()->set_version(8);
  ref.mutable_snapshot_ref()->set_size(100);
  EXPECT_TRUE(DecodeAgentMessage(Bytes(ref), 1).ok());
  EXPECT_TRUE(DecodeAgentMessage(Bytes(ref), 0).ok());

  pb::Envelope failed = Current();
  failed.mutable_snapshot_failed()->set_version(9);
  EXPECT_TRUE(DecodeAgentMessage(Bytes(failed), 0).ok());
  EXPECT_FALSE(DecodeAgentMessage(Bytes(failed), 1).ok());
}

TEST(DecodeAgentMessageTest, RefusesGarbageOtherVersionsAndForeignBodies) {
  EXPECT_EQ(DecodeAgentMessage("\xff\xff\xff", 0).status().code(), absl::StatusCode::kDataLoss);

  pb::Envelope old;
  old.set_protocol_version(pb::PROTOCOL_VERSION_UNSPECIFIED);
  old.mutable_remove_pod()->set_uid("x");
  EXPECT_EQ(DecodeAgentMessage(Bytes(old), 0).status().code(),
            absl::StatusCode::kFailedPrecondition);

  pb::Envelope empty = Current();
  EXPECT_EQ(DecodeAgentMessage(Bytes(empty), 0).status().code(),
            absl::StatusCode::kInvalidArgument);

  pb::Envelope ack = Current();  // the data plane's own message, never the agent's
  ack.mutable_ack()->set_version(1);
  EXPECT_EQ(DecodeAgentMessage(Bytes(ack), 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DecodeAgentMessageTest, DescriptorsMustMatchTheBody) {
  pb::Envelope pod = Current();
  pod.mutable_add_pod()->set_uid("default/web");
  pod.mutable_add_pod()->add_fds(pb::FD_ROLE_NETNS);
  auto short_of_fds = DecodeAgentMessage(Bytes(pod), 0);
  EXPECT_EQ(short_of_fds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(short_of_fds.status().message().find("default/web"), std::string::npos);

  pb::Envelope maps = Current();
  maps.mutable_maps()->add_fds(pb::FD_ROLE_ORIG_DST_MAP);
  EXPECT_FALSE(DecodeAgentMessage(Bytes(maps), 2).ok());

  pb::Envelope remove = Current();
  remove.mutable_remove_pod()->set_uid("default/web");
  EXPECT_FALSE(DecodeAgentMessage(Bytes(remove), 1).ok());
}

TEST(DecodeAgentMessageTest, AcceptsAHeartbeatWithoutDescriptors) {
  pb::Envelope ping = Current();
  ping.mutable_ping()->set_seq(3);
  auto decoded = DecodeAgentMessage(Bytes(ping), 0);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->ping().seq(), 3u);
  EXPECT_FALSE(DecodeAgentMessage(Bytes(ping), 1).ok());

  pb::Envelope pong = Current();  // the data plane's half, never sent by the agent
  pong.mutable_pong()->set_seq(3);
  EXPECT_EQ(DecodeAgentMessage(Bytes(pong), 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DecodeStatsSocketRequestTest, TellsAStatsRequestFromALogLevelChange) {
  pb::StatsSocketRequest stats;
  stats.mutable_stats()->set_connections(true);
  auto decoded = DecodeStatsSocketRequest(stats.SerializeAsString());
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_TRUE(decoded->has_stats());
  EXPECT_TRUE(decoded->stats().connections());

  pb::StatsSocketRequest change;
  change.mutable_log_level()->set_component("hbone");
  change.mutable_log_level()->set_level("debug");
  decoded = DecodeStatsSocketRequest(change.SerializeAsString());
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_TRUE(decoded->has_log_level());
  EXPECT_EQ(decoded->log_level().component(), "hbone");
  EXPECT_EQ(decoded->log_level().level(), "debug");
}

TEST(DecodeStatsSocketRequestTest, RefusesGarbageEmptyRequestsAndUnknownLevels) {
  EXPECT_EQ(DecodeStatsSocketRequest("\xff\xff\xff").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeStatsSocketRequest("").status().code(), absl::StatusCode::kUnimplemented);

  pb::StatsSocketRequest change;
  change.mutable_log_level()->set_level("verbose");
  auto refused = DecodeStatsSocketRequest(change.SerializeAsString());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("verbose"), std::string::npos);
}

TEST(DecodeStatsSocketRequestTest, AStatsRequestOfProtocolTwoChangesNoLevel) {
  // What an agent of protocol version 2 sent: a bare StatsRequest, the level in field 4. The
  // fields are reserved now, so it asks for nothing this build knows.
  std::string old_bytes = std::string("\x08\x01", 2) + "\x22\x05" + "debug";
  auto decoded = DecodeStatsSocketRequest(old_bytes);
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace ambit::tunnel
