// ambitd's decoding of control packets from the data plane (agent/supervisor/control_message.h).

#include "agent/supervisor/control_message.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace ambit::supervisor {
namespace {

namespace pb = ::ambit::dataplane::v1;

pb::Envelope Current() {
  pb::Envelope env;
  env.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
  return env;
}

TEST(DecodeDataPlaneMessageTest, AcceptsEachDataPlaneMessage) {
  pb::Envelope hello = Current();
  hello.mutable_hello()->set_pod_count(1);
  EXPECT_TRUE(DecodeDataPlaneMessage(hello.SerializeAsString(), 0).ok());

  pb::Envelope csr = Current();
  csr.mutable_csr_request()->set_identity("spiffe://cluster.local/ns/a/sa/b");
  auto decoded = DecodeDataPlaneMessage(csr.SerializeAsString(), 0);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->csr_request().identity(), "spiffe://cluster.local/ns/a/sa/b");

  pb::Envelope pod = Current();  // a handed-back pod carries its listeners
  pod.mutable_add_pod()->add_fds(pb::FD_ROLE_NETNS);
  EXPECT_TRUE(DecodeDataPlaneMessage(pod.SerializeAsString(), 1).ok());

  pb::Envelope removed = Current();  // a removed pod fully released
  removed.mutable_pod_removed()->set_uid("default/web");
  EXPECT_TRUE(DecodeDataPlaneMessage(removed.SerializeAsString(), 0).ok());
  EXPECT_FALSE(DecodeDataPlaneMessage(removed.SerializeAsString(), 1).ok());
}

TEST(DecodeDataPlaneMessageTest, AcceptsAHeartbeatAnswerWithoutDescriptors) {
  pb::Envelope pong = Current();
  pong.mutable_pong()->set_seq(7);
  pong.mutable_pong()->set_workers(2);
  auto* pod = pong.mutable_pong()->add_pods();
  pod->set_uid("default/web");
  pod->set_listening(6);
  auto decoded = DecodeDataPlaneMessage(pong.SerializeAsString(), 0);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->pong().seq(), 7u);
  EXPECT_EQ(decoded->pong().pods(0).listening(), 6u);
  EXPECT_FALSE(DecodeDataPlaneMessage(pong.SerializeAsString(), 1).ok());

  pb::Envelope ping = Current();  // the agent's half, never sent by the data plane
  ping.mutable_ping()->set_seq(1);
  EXPECT_EQ(DecodeDataPlaneMessage(ping.SerializeAsString(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(DecodeDataPlaneMessageTest, RefusesWhatTheDataPlaneNeverSends) {
  EXPECT_EQ(DecodeDataPlaneMessage("\x0a\xff", 0).status().code(), absl::StatusCode::kDataLoss);

  pb::Envelope newer;
  newer.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT + 1);
  newer.mutable_ack()->set_version(1);
  EXPECT_EQ(DecodeDataPlaneMessage(newer.SerializeAsString(), 0).status().code(),
            absl::StatusCode::kFailedPrecondition);

  pb::Envelope snapshot = Current();  // the agent's message
  snapshot.mutable_snapshot()->set_version(1);
  EXPECT_EQ(DecodeDataPlaneMessage(snapshot.SerializeAsString(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);

  pb::Envelope ack = Current();
  ack.mutable_ack()->set_version(1);
  EXPECT_FALSE(DecodeDataPlaneMessage(ack.SerializeAsString(), 2).ok());

  pb::Envelope pod = Current();
  pod.mutable_add_pod()->add_fds(pb::FD_ROLE_NETNS);
  pod.mutable_add_pod()->add_fds(pb::FD_ROLE_HBONE_V4);
  EXPECT_FALSE(DecodeDataPlaneMessage(pod.SerializeAsString(), 1).ok());
}

// A data plane of the previous protocol (2: workloads with uid and string-keyed mTLS maps,
// socket_mark in the snapshot) would misread every snapshot: the agent refuses its hello and
// says what to do.
TEST(DecodeDataPlaneMessageTest, RefusesAnOlderDataPlaneSayingWhy) {
  pb::Envelope old;
  const int older = pb::PROTOCOL_VERSION_CURRENT - 1;
  old.set_protocol_version(older);
  old.mutable_hello()->set_pid(42);
  auto decoded = DecodeDataPlaneMessage(old.SerializeAsString(), 0);
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(decoded.status().message(),
            absl::StrCat("data plane speaks control protocol ", older, ", this agent ", older + 1,
                         "; restart the data plane"));
}

}  // namespace
}  // namespace ambit::supervisor
