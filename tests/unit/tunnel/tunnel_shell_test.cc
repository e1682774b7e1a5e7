// Tunnel (agent/tunnel/control.h), the shell around the Reconciler, driven over its real control
// socket by a test playing the agent, with FakePodSockets for the kernel's side of the pods'
// listeners: hello, hand-back to a second agent, heartbeat answers, removal. No root, no network
// namespaces (the pods' descriptors are /dev/null), no workers (the agent sends no maps).

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "agent/common/seqpacket.h"
#include "agent/common/socket_util.h"
#include "agent/tunnel/control.h"
#include "ambit/dataplane/v1/dataplane.pb.h"
#include "tests/fakes/fake_pod_sockets.h"

namespace ambit::tunnel {
namespace {

namespace pb = ::ambit::dataplane::v1;

class TunnelShellTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/ambit-tunnel-shell-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    TunnelOptions options;
    options.control_socket = dir_ + "/dataplane.sock";
    options.workers = 1;
    options.sockets = &sockets_;
    auto tunnel = Tunnel::Create(options);
    ASSERT_TRUE(tunnel.ok()) << tunnel.status();
    tunnel_ = *std::move(tunnel);
    thread_ = std::thread([this] { (void)tunnel_->Run(); });
  }
  void TearDown() override {
    if (tunnel_ != nullptr) tunnel_->Stop();
    if (thread_.joinable()) thread_.join();
    tunnel_.reset();
    rmdir(dir_.c_str());
  }

  // A new agent session; every receive on it gives up after 5 s.
  UniqueFd Connect() {
    auto fd = ConnectUnix(dir_ + "/dataplane.sock", SOCK_SEQPACKET);
    EXPECT_TRUE(fd.ok()) << fd.status();
    if (!fd.ok()) return UniqueFd();
    timeval tv{5, 0};
    setsockopt(fd->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return *std::move(fd);
  }

  void Send(int fd, pb::Envelope env, const std::vector<int>& fds = {}) {
    env.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
    ASSERT_TRUE(SendPacket(fd, env.SerializeAsString(), fds).ok());
  }

  // The next message with `body`, skipping others (certificate reports); nullopt on timeout.
  std::optional<std::pair<pb::Envelope, size_t>> Next(int fd, pb::Envelope::BodyCase body) {
    for (int i = 0; i < 50; ++i) {
      auto packet = ReceivePacket(fd);
      if (!packet.ok()) {
        ADD_FAILURE() << "waiting for body " << body << ": " << packet.status();
        return std::nullopt;
      }
      pb::Envelope env;
      EXPECT_TRUE(env.ParseFromString(packet->data));
      if (env.body_case() == body) return std::make_pair(env, packet->fds.size());
    }
    ADD_FAILURE() << "no message with body " << body;
    return std::nullopt;
  }

  std::string dir_;
  testing::FakePodSockets sockets_;
  std::unique_ptr<Tunnel> tunnel_;
  std::thread thread_;
};

pb::Envelope AddPod() {
  pb::Envelope env;
  auto* p = env.mutable_add_pod();
  p->set_uid("backend/api");
  p->set_namespace_("backend");
  p->set_name("api");
  p->set_service_account("api");
  p->set_spiffe_id("spiffe://cluster.local/ns/backend/sa/api");
  p->add_ips("198.18.0.5");
  p->add_fds(pb::FD_ROLE_NETNS);
  p->add_fds(pb::FD_ROLE_OUTBOUND_V4);
  p->add_fds(pb::FD_ROLE_HBONE_V4);
  return env;
}

TEST_F(TunnelShellTest, HandsPodsBackAnswersHeartbeatsAndRemovesPods) {
  UniqueFd first = Connect();
  ASSERT_TRUE(first);
  auto hello = Next(first.get(), pb::Envelope::kHello);
  ASSERT_TRUE(hello.has_value());
  EXPECT_EQ(hello->first.hello().pod_count(), 0u);
  EXPECT_TRUE(hello->first.hello().heartbeat());

  UniqueFd a(open("/dev/null", O_RDONLY | O_CLOEXEC)), b(open("/dev/null", O_RDONLY | O_CLOEXEC)),
      c(open("/dev/null", O_RDONLY | O_CLOEXEC));
  Send(first.get(), AddPod(), {a.get(), b.get(), c.get()});
  // The identity's first CSR goes up to the agent.
  auto csr = Next(first.get(), pb::Envelope::kCsrRequest);
  ASSERT_TRUE(csr.has_value());
  EXPECT_EQ(csr->first.csr_request().identity(), "spiffe://cluster.local/ns/backend/sa/api");

  // A second agent replaces the first and gets the pod back with its three descriptors.
  UniqueFd second = Connect();
  ASSERT_TRUE(second);
  hello = Next(second.get(), pb::Envelope::kHello);
  ASSERT_TRUE(hello.has_value());
  EXPECT_EQ(hello->first.hello().pod_count(), 1u);
  auto back = Next(second.get(), pb::Envelope::kAddPod);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->first.add_pod().uid(), "backend/api");
  EXPECT_EQ(back->first.add_pod().spiffe_id(), "spiffe://cluster.local/ns/backend/sa/api");
  EXPECT_EQ(back->first.add_pod().fds_size(), 3);
  EXPECT_EQ(back->second, 3u);

  // The heartbeat: no workers yet, both listeners listening as far as the kernel says.
  pb::Envelope ping;
  ping.mutable_ping()->set_seq(9);
  Send(second.get(), ping);
  auto pong = Next(second.get(), pb::Envelope::kPong);
  ASSERT_TRUE(pong.has_value());
  EXPECT_EQ(pong->first.pong().seq(), 9u);
  EXPECT_EQ(pong->first.pong().workers(), 0u);
  ASSERT_EQ(pong->first.pong().pods_size(), 1);
  EXPECT_EQ(pong->first.pong().pods(0).listening(), 2u);
  EXPECT_TRUE(pong->first.pong().pods(0).waiting_for_certificate());

  // Removal: both listeners leave the listening state, then the answer.
  pb::Envelope remove;
  remove.mutable_remove_pod()->set_uid("backend/api");
  Send(second.get(), remove);
  auto removed = Next(second.get(), pb::Envelope::kPodRemoved);
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->first.pod_removed().uid(), "backend/api");
  EXPECT_EQ(sockets_.stopped().size(), 2u);

  // An unknown pod's removal is answered too, and shuts nothing down.
  remove.mutable_remove_pod()->set_uid("nobody/here");
  Send(second.get(), remove);
  removed = Next(second.get(), pb::Envelope::kPodRemoved);
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->first.pod_removed().uid(), "nobody/here");
  EXPECT_EQ(sockets_.stopped().size(), 2u);
}

TEST_F(TunnelShellTest, StaleGenerationIsNackedAndTheNewestStays) {
  UniqueFd agent = Connect();
  ASSERT_TRUE(Next(agent.get(), pb::Envelope::kHello).has_value());
  pb::Envelope snapshot;
  snapshot.mutable_snapshot()->set_version(4);
  Send(agent.get(), snapshot);
  auto ack = Next(agent.get(), pb::Envelope::kAck);
  ASSERT_TRUE(ack.has_value());
  EXPECT_EQ(ack->first.ack().version(), 4u);

  snapshot.mutable_snapshot()->set_version(2);
  Send(agent.get(), snapshot);
  auto nack = Next(agent.get(), pb::Envelope::kNack);
  ASSERT_TRUE(nack.has_value());
  EXPECT_EQ(nack->first.nack().version(), 2u);

  // A new session says which generation is in force.
  UniqueFd next = Connect();
  auto hello = Next(next.get(), pb::Envelope::kHello);
  ASSERT_TRUE(hello.has_value());
  EXPECT_EQ(hello->first.hello().snapshot_version(), 4u);
}

TEST_F(TunnelShellTest, AnAddPodThatDoesNotMapEndsTheSessionNotTheDataPlane) {
  UniqueFd agent = Connect();
  ASSERT_TRUE(Next(agent.get(), pb::Envelope::kHello).has_value());
  pb::Envelope bad = AddPod();
  bad.mutable_add_pod()->set_uid("backend/other");
  UniqueFd a(open("/dev/null", O_RDONLY | O_CLOEXEC));
  Send(agent.get(), bad, {a.get(), a.get(), a.get()});
  // The session ends: the tunnel closes its side (end of file, not a receive timeout) ...
  for (int i = 0; i < 50 && ReceivePacket(agent.get()).ok(); ++i) {
  }
  char byte;
  EXPECT_EQ(recv(agent.get(), &byte, 1, MSG_DONTWAIT), 0) << "the session is still open";
  // ... and the next agent finds the data plane serving, with no pod.
  UniqueFd next = Connect();
  auto hello = Next(next.get(), pb::Envelope::kHello);
  ASSERT_TRUE(hello.has_value());
  EXPECT_EQ(hello->first.hello().pod_count(), 0u);
}

}  // namespace
}  // namespace ambit::tunnel
