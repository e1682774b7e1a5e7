// Tunnel (agent/tunnel/control.h), the shell around the Reconciler, driven over its real control
// socket by a test playing the agent, with FakePodSockets for the kernel's side of the pods'
// listeners: hello, hand-back to a second agent, heartbeat answers, removal. No root, no network
// namespaces (the pods' descriptors are /dev/null), no workers (the agent sends no maps).

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/synchronization/mutex.h"
#include "agent/common/framed.h"
#include "agent/common/seqpacket.h"
#include "agent/common/socket_util.h"
#include "agent/tunnel/control.h"
#include "agent/tunnel/l7_hook.h"
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
    options.l7 = L7();
    auto tunnel = Tunnel::Create(options);
    ASSERT_TRUE(tunnel.ok()) << tunnel.status();
    tunnel_ = *std::move(tunnel);
    thread_ = std::thread([this] { (void)tunnel_->Run(); });
  }
  void TearDown() override {
    if (tunnel_ != nullptr) tunnel_->Stop();
    if (thread_.joinable()) thread_.join();
    tunnel_.reset();
    // The data plane leaves its socket's lock file behind by design (the next one reuses it).
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
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

  // What runs on the pods' listeners: nothing (ambit-tunnel), or a stand-in for the waypoint.
  virtual std::shared_ptr<InboundHandler> L7() { return nullptr; }

  // Starts the workers: the map descriptors are /dev/null, which nothing here looks up.
  void SendMaps(int agent) {
    UniqueFd a(open("/dev/null", O_RDONLY | O_CLOEXEC)), b(open("/dev/null", O_RDONLY | O_CLOEXEC));
    pb::Envelope maps;
    maps.mutable_maps()->add_fds(pb::FD_ROLE_ORIG_DST_MAP);
    maps.mutable_maps()->add_fds(pb::FD_ROLE_DELIVER_MAP);
    Send(agent, maps, {a.get(), b.get()});
  }

  // One exchange on the stats socket; the answer's bytes, or an error.
  absl::StatusOr<std::string> AskStats(const pb::StatsSocketRequest& request,
                                       absl::Duration timeout = absl::Seconds(10)) {
    auto fd = ConnectUnix(StatsSocketFor(dir_ + "/dataplane.sock"), SOCK_STREAM);
    if (!fd.ok()) return fd.status();
    if (auto s = WriteFramed(fd->get(), request.SerializeAsString(), timeout); !s.ok()) return s;
    return ReadFramed(fd->get(), 1 << 20, timeout);
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

// A stand-in for the waypoint's handler: answers probes at once, or never.
class FakeWaypoint final : public InboundHandler {
 public:
  hbone::StreamObserver* OnConnect(Worker&, hbone::HboneSession&, hbone::StreamId,
                                   const hbone::ConnectRequest&, const std::shared_ptr<const Pod>&,
                                   const SocketAddress&, FlowRecord) override {
    return nullptr;
  }
  void OnAccepted(Worker&, const std::shared_ptr<const Pod>&, ListenerKind, UniqueFd) override {}
  void ProbeExtAuthz(Worker&, const std::vector<std::shared_ptr<const Pod>>&,
                     const ExtAuthzProbe& probe, absl::Duration bound,
                     std::function<void(ExtAuthzProbeResult)> done) override {
    absl::MutexLock lock(&mu_);
    probes_.push_back(probe);
    bound_ = bound;
    if (hang_) {
      held_.push_back(std::move(done));  // never answered: the shell's bound must
      return;
    }
    ExtAuthzProbeResult r;
    r.outcome = ExtAuthzProbeResult::Outcome::kDeny;
    r.status = 418;
    r.deny_headers = {{"x-teapot", "yes"}};
    r.deny_body = "short and stout";
    r.latency = absl::Microseconds(2100);
    r.waypoint_pod = "backend/wp";
    done(std::move(r));
  }

  absl::Mutex mu_;
  bool hang_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<ExtAuthzProbe> probes_ ABSL_GUARDED_BY(mu_);
  absl::Duration bound_ ABSL_GUARDED_BY(mu_);
  std::vector<std::function<void(ExtAuthzProbeResult)>> held_ ABSL_GUARDED_BY(mu_);
};

pb::StatsSocketRequest Probe() {
  pb::StatsSocketRequest request;
  auto* p = request.mutable_ext_authz_probe();
  p->set_waypoint("backend/waypoint");
  p->set_provider("sample-ext-authz-http");
  p->set_method("GET");
  p->set_path("/ext");
  return request;
}

TEST_F(TunnelShellTest, AnExtAuthzProbeToATunnelSaysItIsNoWaypoint) {
  auto bytes = AskStats(Probe());
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  pb::ExtAuthzProbeResponse answer;
  ASSERT_TRUE(answer.ParseFromString(*bytes));
  EXPECT_NE(answer.error().find("serves no waypoint"), std::string::npos) << answer.error();
}

TEST_F(TunnelShellTest, ABadExtAuthzProbeIsAnsweredWithTheError) {
  pb::StatsSocketRequest request = Probe();
  request.mutable_ext_authz_probe()->set_path("no-slash");
  auto bytes = AskStats(request);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  pb::ExtAuthzProbeResponse answer;
  ASSERT_TRUE(answer.ParseFromString(*bytes));
  EXPECT_NE(answer.error().find("path"), std::string::npos) << answer.error();
}

class TunnelProbeTest : public TunnelShellTest {
 protected:
  std::shared_ptr<InboundHandler> L7() override { return fake_; }
  std::shared_ptr<FakeWaypoint> fake_ = std::make_shared<FakeWaypoint>();
};

TEST_F(TunnelProbeTest, AProbeRunsOnAWorkerAndItsAnswerComesBack) {
  UniqueFd agent = Connect();
  ASSERT_TRUE(Next(agent.get(), pb::Envelope::kHello).has_value());
  SendMaps(agent.get());
  // The workers run once the maps are in: a heartbeat says so.
  pb::Envelope ping;
  ping.mutable_ping()->set_seq(1);
  Send(agent.get(), ping);
  auto pong = Next(agent.get(), pb::Envelope::kPong);
  ASSERT_TRUE(pong.has_value());
  ASSERT_EQ(pong->first.pong().workers(), 1u);

  auto bytes = AskStats(Probe());
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  pb::ExtAuthzProbeResponse answer;
  ASSERT_TRUE(answer.ParseFromString(*bytes));
  EXPECT_EQ(answer.error(), "");
  EXPECT_EQ(answer.outcome(), pb::EXT_AUTHZ_PROBE_OUTCOME_DENY);
  EXPECT_EQ(answer.status(), 418u);
  EXPECT_EQ(answer.deny_body(), "short and stout");
  EXPECT_EQ(answer.latency_us(), 2100);
  absl::MutexLock lock(&fake_->mu_);
  ASSERT_EQ(fake_->probes_.size(), 1u);
  EXPECT_EQ(fake_->probes_[0].waypoint, "backend/waypoint");
  EXPECT_EQ(fake_->bound_, absl::Seconds(5));
}

TEST_F(TunnelProbeTest, AProbeNobodyAnswersEndsAtTheBoundAndHeartbeatsGoOnMeanwhile) {
  {
    absl::MutexLock lock(&fake_->mu_);
    fake_->hang_ = true;
  }
  UniqueFd agent = Connect();
  ASSERT_TRUE(Next(agent.get(), pb::Envelope::kHello).has_value());
  SendMaps(agent.get());
  absl::StatusOr<std::string> bytes;
  const absl::Time start = absl::Now();
  std::thread asker([&] { bytes = AskStats(Probe()); });
  // While the probe waits, the control thread answers heartbeats at once (it never blocks on a
  // probe: a hung authorizer must not make the agent restart the waypoint).
  for (uint64_t seq = 1; seq <= 3; ++seq) {
    absl::SleepFor(absl::Milliseconds(500));
    pb::Envelope ping;
    ping.mutable_ping()->set_seq(seq);
    const absl::Time sent = absl::Now();
    Send(agent.get(), ping);
    auto pong = Next(agent.get(), pb::Envelope::kPong);
    ASSERT_TRUE(pong.has_value());
    EXPECT_EQ(pong->first.pong().seq(), seq);
    EXPECT_LT(absl::Now() - sent, absl::Seconds(1));
  }
  asker.join();
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  pb::ExtAuthzProbeResponse answer;
  ASSERT_TRUE(answer.ParseFromString(*bytes));
  EXPECT_NE(answer.error().find("did not answer within 6s"), std::string::npos) << answer.error();
  EXPECT_GE(took, absl::Seconds(6));
  EXPECT_LT(took, absl::Seconds(8));
}

// A roll on the data plane's side: a second data plane on the same control socket stands by on
// <socket>.next and serves an agent there; Drain makes the first give the socket up, and the
// standby takes it over with that agent's session intact. No workers: the drained one has no
// connection left and exits at once.
TEST_F(TunnelShellTest, StandbyTakesTheSocketOverFromADrainedPrimary) {
  const std::string socket = dir_ + "/dataplane.sock";
  TunnelOptions options;
  options.control_socket = socket;
  options.workers = 1;
  options.sockets = &sockets_;
  auto created = Tunnel::Create(options);
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<Tunnel> standby = *std::move(created);
  std::thread standby_thread([&] { (void)standby->Run(); });
  auto stop_standby = absl::MakeCleanup([&] {
    standby->Stop();
    standby_thread.join();
  });

  // The agent's second session, on .next; the standby announces drain like the primary does.
  auto next = ConnectUnix(socket + ".next", SOCK_SEQPACKET);
  ASSERT_TRUE(next.ok()) << next.status();
  timeval tv{5, 0};
  setsockopt(next->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  auto hello = Next(next->get(), pb::Envelope::kHello);
  ASSERT_TRUE(hello.has_value());
  EXPECT_TRUE(hello->first.hello().drain());
  EXPECT_EQ(hello->first.hello().pod_count(), 0u);
  // Its stats socket is apart from the primary's.
  EXPECT_EQ(access(StatsSocketFor(socket + ".next").c_str(), F_OK), 0);

  // The primary is told to drain: with nothing held it exits, after giving up the path.
  UniqueFd primary = Connect();
  ASSERT_TRUE(primary);
  ASSERT_TRUE(Next(primary.get(), pb::Envelope::kHello).has_value());
  pb::Envelope drain;
  drain.mutable_drain()->set_grace_seconds(5);
  Send(primary.get(), drain);
  thread_.join();  // Run returned: the drained data plane exits on its own

  // The standby is the primary now: .next is gone, the control path and stats socket are its.
  for (int i = 0; i < 100 && access((socket + ".next").c_str(), F_OK) == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_NE(access((socket + ".next").c_str(), F_OK), 0) << "the standby still serves .next";
  EXPECT_EQ(access((socket + ".next.lock").c_str(), F_OK), 0);  // the lock file stays, unlocked
  // The agent's session on .next carries on: a heartbeat is answered on it.
  pb::Envelope ping;
  ping.mutable_ping()->set_seq(4);
  Send(next->get(), ping);
  auto pong = Next(next->get(), pb::Envelope::kPong);
  ASSERT_TRUE(pong.has_value());
  EXPECT_EQ(pong->first.pong().seq(), 4u);
  pb::StatsSocketRequest request;
  request.mutable_stats();
  auto stats = AskStats(request);
  ASSERT_TRUE(stats.ok()) << stats.status();
  // A new session on the control path reaches the promoted standby.
  UniqueFd again = Connect();
  ASSERT_TRUE(again);
  EXPECT_TRUE(Next(again.get(), pb::Envelope::kHello).has_value());
  // The drained one left no socket behind when it went: its moved-aside stats socket included.
  tunnel_.reset();
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
    EXPECT_EQ(entry.path().filename().string().find("draining"), std::string::npos) << entry.path();
  }
}

}  // namespace
}  // namespace ambit::tunnel
