// Where the agent's side of a data-plane process connects (agent/supervisor/dataplane.h): a
// roll's standby on <control socket>.next until it is promoted, the control socket after.

#include "agent/supervisor/dataplane.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "agent/common/seqpacket.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

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

namespace pb = ::ambit::dataplane::v1;

// The data plane's end of the control channel, as ambit-tunnel speaks it: listens, says hello,
// then sends and receives with blocking calls on its own thread. Small socket buffers make a few
// hundred messages enough to fill them.
class ControlPeerTest : public DataPlaneTest {
 protected:
  static constexpr int kSmallBuffer = 4096;

  void SetUp() override {
    DataPlaneTest::SetUp();
    listener_ = UniqueFd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    ASSERT_TRUE(listener_);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket_.c_str());
    ASSERT_EQ(bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(listen(listener_.get(), 1), 0);
  }
  void TearDown() override {
    if (peer_thread_.joinable()) peer_thread_.join();
    listener_.Reset();
    unlink(socket_.c_str());
    DataPlaneTest::TearDown();
  }

  static void SmallBuffers(int fd) {
    int size = kSmallBuffer;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  }
  static pb::Envelope NewEnvelope() {
    pb::Envelope env;
    env.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
    return env;
  }
  // Accepts the agent and says hello (no pods handed back), then runs `then` on the connection.
  void StartPeer(std::function<void(int)> then) {
    peer_thread_ = std::thread([this, then = std::move(then)] {
      peer_ = UniqueFd(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!peer_) return;
      SmallBuffers(peer_.get());
      pb::Envelope hello = NewEnvelope();
      hello.mutable_hello()->set_pid(getpid());
      hello.mutable_hello()->set_heartbeat(true);
      if (!SendPacket(peer_.get(), hello.SerializeAsString(), {}).ok()) return;
      then(peer_.get());
    });
  }
  DataPlane::Options PeerOptions() {
    DataPlane::Options o;
    o.binary = "/nonexistent/ambit-tunnel";
    o.control_socket = socket_;
    o.watch_pid = false;
    return o;
  }
  // The agent's loop for `dp`: readable, and writable while sends wait, until `done` or 20 s.
  static bool RunUntil(DataPlane& dp, const std::function<bool()>& done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      pollfd p{dp.control_fd(), static_cast<short>(POLLIN | (dp.wants_write() ? POLLOUT : 0)), 0};
      if (poll(&p, 1, 100) <= 0) continue;
      if (!dp.OnControlReadable().ok()) return false;
    }
    return true;
  }

  UniqueFd listener_, peer_;
  std::thread peer_thread_;
};

// Many pods asking for certificates at once: the data plane sends every CSR (blocking, reading
// nothing meanwhile, as ambit-tunnel's control thread does) while the agent answers each one as
// it reads it. With blocking sends on both ends this deadlocked once both buffers were full.
TEST_F(ControlPeerTest, AnswersManyCsrsWhileThePeerIsStillSending) {
  constexpr uint64_t kCsrs = 600;
  std::vector<uint64_t> answered;
  StartPeer([&](int fd) {
    for (uint64_t id = 1; id <= kCsrs; ++id) {
      pb::Envelope env = NewEnvelope();
      env.mutable_csr_request()->set_request_id(id);
      env.mutable_csr_request()->set_identity("spiffe://cluster.local/ns/n/sa/sa" +
                                              std::to_string(id));
      env.mutable_csr_request()->set_csr_pem(std::string(600, 'c'));
      if (!SendPacket(fd, env.SerializeAsString(), {}).ok()) return;
    }
    while (answered.size() < kCsrs) {
      auto packet = ReceivePacket(fd);
      if (!packet.ok()) return;
      pb::Envelope env;
      if (!env.ParseFromString(packet->data) || !env.has_csr_response()) return;
      answered.push_back(env.csr_response().request_id());
    }
  });
  DataPlane dp(PeerOptions());
  int interest_changes = 0;
  bool interest = false;
  dp.on_write_interest = [&](bool want) {
    EXPECT_NE(want, interest);
    interest = want;
    ++interest_changes;
  };
  uint64_t requests = 0;
  dp.on_csr_request = [&](CsrRequest r) {
    ++requests;
    EXPECT_EQ(r.request_id, requests);
    // Answered at once, as a cached certificate is: a send while the peer still sends.
    ASSERT_TRUE(
        dp.SendCsrResponse(r.request_id, std::vector<std::string>{std::string(1500, 'x')}).ok());
  };
  auto handed_back = dp.Connect(/*spawn=*/false);
  ASSERT_TRUE(handed_back.ok()) << handed_back.status();
  ControlPeerTest::SmallBuffers(dp.control_fd());
  EXPECT_TRUE(RunUntil(dp, [&] { return requests == kCsrs && !dp.wants_write(); }))
      << requests << " requests read, " << dp.queued_messages() << " answers still queued";
  peer_thread_.join();
  ASSERT_EQ(answered.size(), kCsrs);
  for (uint64_t i = 0; i < kCsrs; ++i) ASSERT_EQ(answered[i], i + 1) << "answers out of order";
  EXPECT_GE(interest_changes, 2);  // the buffers did fill: something waited for EPOLLOUT
  EXPECT_FALSE(interest);
}

// A message queued behind a full socket keeps its descriptors, even once the sender closed its
// own copies, and arrives after what was queued before it.
TEST_F(ControlPeerTest, QueuedDescriptorsTravelWithTheirMessage) {
  std::atomic<bool> read{false};
  std::vector<pb::Envelope> got;
  std::vector<UniqueFd> got_fds;
  StartPeer([&](int fd) {
    while (!read) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    while (true) {
      auto packet = ReceivePacket(fd);
      if (!packet.ok()) return;
      pb::Envelope env;
      if (!env.ParseFromString(packet->data)) return;
      got.push_back(env);
      if (env.has_maps()) {
        got_fds = std::move(packet->fds);
        return;
      }
    }
  });
  DataPlane dp(PeerOptions());
  ASSERT_TRUE(dp.Connect(/*spawn=*/false).ok());
  ControlPeerTest::SmallBuffers(dp.control_fd());
  uint64_t sent = 0;
  while (!dp.wants_write()) {
    ASSERT_TRUE(dp.SendCsrResponse(++sent, absl::UnavailableError("no CA")).ok());
    ASSERT_LT(sent, 100000u) << "the socket never filled";
  }
  int pipes[3][2];
  for (auto& p : pipes) ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  ASSERT_TRUE(dp.SendMaps(pipes[0][0], pipes[1][0], pipes[2][0]).ok());
  for (auto& p : pipes) {
    close(p[0]);
    close(p[1]);
  }
  read = true;
  EXPECT_TRUE(RunUntil(dp, [&] { return !dp.wants_write(); }));
  peer_thread_.join();
  ASSERT_EQ(got.size(), sent + 1);
  for (uint64_t i = 0; i < sent; ++i) EXPECT_EQ(got[i].csr_response().request_id(), i + 1);
  ASSERT_TRUE(got.back().has_maps());
  ASSERT_EQ(got_fds.size(), 3u);
  for (const auto& fd : got_fds) {
    struct stat st;
    ASSERT_EQ(fstat(fd.get(), &st), 0);
    EXPECT_TRUE(S_ISFIFO(st.st_mode));
  }
}

// A data plane that never reads cannot grow the agent without limit: past the bound every send
// fails and the owner hears of it once, to end the session.
TEST_F(ControlPeerTest, QueueIsBoundedForAPeerThatNeverReads) {
  std::atomic<bool> done{false};
  StartPeer([&](int) {
    while (!done) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  });
  DataPlane dp(PeerOptions());
  int overflows = 0;
  dp.on_overflow = [&] { ++overflows; };
  ASSERT_TRUE(dp.Connect(/*spawn=*/false).ok());
  const std::vector<std::string> chain = {std::string(64 << 10, 'x')};
  absl::Status status;
  size_t sent = 0;
  while (status.ok() && sent < 10000) {
    status = dp.SendCsrResponse(++sent, chain);
  }
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "stopped reading")) << status;
  EXPECT_EQ(overflows, 1);
  EXPECT_LE(dp.queued_bytes(), DataPlane::kMaxQueuedBytes);
  EXPECT_EQ(dp.SendPing(1).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(overflows, 1);
  dp.Disconnect();
  EXPECT_EQ(dp.queued_messages(), 0u);
  done = true;
  peer_thread_.join();  // here, while `done` is alive: TearDown's join would race its scope
}

}  // namespace
}  // namespace ambit::supervisor
