#include "agent/zds/endpoint.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "agent/common/epoll_loop.h"
#include "agent/common/seqpacket.h"
#include "gtest/gtest.h"
#include "istio/zds/zds.pb.h"

namespace ambit::zds {
namespace {

namespace pb = ::istio::workload::zds;

class FakeSink : public WorkloadSink {
 public:
  void OnAdd(Source source, Request request, Answer answer) override {
    adds.push_back(request.uid);
    sources.push_back(source);
    known[static_cast<size_t>(source)].insert(request.uid);
    if (answer_at_once) {
      answer("");
    } else {
      pending.push_back(std::move(answer));
    }
  }
  std::string OnKeep(Source, const std::string&) override { return ""; }
  std::string OnDel(Source source, const std::string& uid) override {
    known[static_cast<size_t>(source)].erase(uid);
    return "";
  }
  void OnSnapshotSent(Source source, const std::vector<std::string>& r) override {
    for (const auto& uid : r) known[static_cast<size_t>(source)].erase(uid);
    removed.insert(removed.end(), r.begin(), r.end());
  }
  std::set<std::string> Known(Source source) const override {
    return known[static_cast<size_t>(source)];
  }

  bool answer_at_once = true;
  std::vector<std::string> adds, removed;
  std::vector<Source> sources;
  std::vector<Answer> pending;
  std::array<std::set<std::string>, kSourceCount> known;
};

std::string TempPath(const char* name) {
  return absl::StrCat("/tmp/zds_ep_", getpid(), "_", name, ".sock");
}

UniqueFd Connect(const std::string& path) {
  UniqueFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path.data(), path.size());
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) return UniqueFd();
  return fd;
}

std::string AddBytes(const std::string& uid) {
  pb::WorkloadRequest r;
  r.mutable_add()->set_uid(uid);
  r.mutable_add()->mutable_workload_info()->set_name("p");
  r.mutable_add()->mutable_workload_info()->set_namespace_("ns");
  return r.SerializeAsString();
}

// Runs the loop until `done` or about a second passed.
template <typename F>
bool RunUntil(EpollLoop& loop, F done) {
  for (int i = 0; i < 200 && !done(); ++i) loop.RunOnce(absl::Milliseconds(5));
  return done();
}

// Whether a packet is waiting on `fd` (non-blocking peek).
bool Readable(int fd) {
  char c;
  return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) >= 0;
}

std::string AckError(int fd) {
  auto p = ReceivePacket(fd);
  EXPECT_TRUE(p.ok()) << p.status();
  pb::WorkloadResponse resp;
  EXPECT_TRUE(p.ok() && resp.ParseFromString(p->data));
  EXPECT_TRUE(resp.has_ack());
  return resp.ack().error();
}

TEST(ZdsEndpointTest, ServerSaysHelloAndAnswersAddOnlyWhenTheSinkDoes) {
  auto loop = *EpollLoop::Create();
  FakeSink sink;
  sink.answer_at_once = false;
  Stats stats;
  const std::string path = TempPath("hello");
  auto server = ZdsServer::Create(*loop, {path, 4}, sink, stats);
  ASSERT_TRUE(server.ok()) << server.status();
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  UniqueFd c = Connect(path);
  ASSERT_TRUE(c.valid());
  ASSERT_TRUE(RunUntil(*loop, [&] { return Readable(c.get()); }));
  auto hello = ReceivePacket(c.get());
  ASSERT_TRUE(hello.ok());
  pb::ZdsHello h;
  ASSERT_TRUE(h.ParseFromString(hello->data));
  EXPECT_EQ(h.version(), pb::V1);
  EXPECT_EQ(stats.sessions[0], 1u);

  UniqueFd netns(open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(SendPacket(c.get(), AddBytes("a"), {netns.get()}).ok());
  ASSERT_TRUE(SendPacket(c.get(), AddBytes("b"), {netns.get()}).ok());
  ASSERT_TRUE(RunUntil(*loop, [&] { return !sink.adds.empty(); }));
  // The second add waits in the socket while the first is unanswered.
  for (int i = 0; i < 20; ++i) loop->RunOnce(absl::Milliseconds(5));
  EXPECT_EQ(sink.adds, std::vector<std::string>{"a"});
  EXPECT_FALSE(Readable(c.get()));
  sink.pending[0]("");
  ASSERT_TRUE(RunUntil(*loop, [&] { return sink.adds.size() == 2; }));
  EXPECT_EQ(AckError(c.get()), "");
  sink.pending[1]("pod ns/p is not in the configuration");
  EXPECT_EQ(AckError(c.get()), "pod ns/p is not in the configuration");
  EXPECT_EQ((stats.requests[{"add", "ok"}]), 1u);
  EXPECT_EQ((stats.requests[{"add", "error"}]), 1u);

  // A refused packet gets its error and the session goes on.
  ASSERT_TRUE(SendPacket(c.get(), AddBytes("c"), {}).ok());
  ASSERT_TRUE(RunUntil(*loop, [&] { return Readable(c.get()); }));
  EXPECT_NE(AckError(c.get()).find("add carries 0 descriptors"), std::string::npos);

  c.Reset();
  ASSERT_TRUE(RunUntil(*loop, [&] { return (*server)->sessions() == 0; }));
  EXPECT_EQ(stats.sessions[0], 0u);
  // An answer for a closed session sends nothing and does not crash.
  sink.answer_at_once = true;
  server->reset();
  struct stat gone;
  EXPECT_NE(stat(path.c_str(), &gone), 0);
}

TEST(ZdsEndpointTest, ServerBoundsSessionsAndDropsASlowReader) {
  auto loop = *EpollLoop::Create();
  FakeSink sink;
  Stats stats;
  const std::string path = TempPath("bound");
  auto server = ZdsServer::Create(*loop, {path, 2}, sink, stats);
  ASSERT_TRUE(server.ok()) << server.status();
  UniqueFd a = Connect(path), b = Connect(path), c = Connect(path);
  ASSERT_TRUE(RunUntil(*loop, [&] { return (*server)->sessions() == 2; }));
  for (int i = 0; i < 10; ++i) loop->RunOnce(absl::Milliseconds(5));
  EXPECT_EQ((*server)->sessions(), 2u);
  // The third was closed: it reads end of stream.
  char buf[64];
  EXPECT_EQ(recv(c.get(), buf, sizeof buf, 0), 0);

  // `a` sends dels and never reads an answer: once its buffer is full it is dropped.
  pb::WorkloadRequest del;
  del.mutable_del()->set_uid("x");
  const std::string bytes = del.SerializeAsString();
  int sent = 0;
  for (; sent < 100000; ++sent) {
    if (send(a.get(), bytes.data(), bytes.size(), MSG_DONTWAIT) < 0) {
      loop->RunOnce(absl::Milliseconds(1));
      if ((*server)->sessions() < 2) break;
    }
  }
  ASSERT_TRUE(RunUntil(*loop, [&] { return (*server)->sessions() == 1; }));
}

TEST(ZdsEndpointTest, ClientReconnectsAndFollowsTheSnapshotRule) {
  auto loop = *EpollLoop::Create();
  FakeSink sink;
  Stats stats;
  const std::string path = TempPath("client");
  unlink(path.c_str());
  auto client =
      ZdsClient::Start(*loop, {path, absl::Milliseconds(10), absl::Milliseconds(40)}, sink, stats);
  EXPECT_FALSE(client->connected());
  // istio-cni comes up later.
  UniqueFd listener(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path.data(), path.size());
  ASSERT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(listener.get(), 4), 0);
  ASSERT_TRUE(RunUntil(*loop, [&] { return client->connected(); }));
  UniqueFd conn(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(conn.valid());
  ASSERT_TRUE(RunUntil(*loop, [&] { return Readable(conn.get()); }));
  ASSERT_TRUE(ReceivePacket(conn.get()).ok());  // hello
  EXPECT_EQ(stats.sessions[1], 1u);
  UniqueFd netns(open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
  for (const char* uid : {"a", "b"}) {
    ASSERT_TRUE(SendPacket(conn.get(), AddBytes(uid), {netns.get()}).ok());
    ASSERT_TRUE(RunUntil(*loop, [&] { return Readable(conn.get()); }));
    EXPECT_EQ(AckError(conn.get()), "");
  }
  EXPECT_EQ(sink.sources[0], Source::kIstioCni);
  pb::WorkloadRequest snap;
  snap.mutable_snapshot_sent();
  ASSERT_TRUE(SendPacket(conn.get(), snap.SerializeAsString(), {}).ok());
  ASSERT_TRUE(RunUntil(*loop, [&] { return Readable(conn.get()); }));
  EXPECT_EQ(AckError(conn.get()), "");
  EXPECT_TRUE(sink.removed.empty());

  // istio-cni restarts; its new snapshot names only b.
  conn.Reset();
  ASSERT_TRUE(RunUntil(*loop, [&] { return !client->connected(); }));
  ASSERT_TRUE(RunUntil(*loop, [&] { return client->connected(); }));
  conn = UniqueFd(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(conn.valid());
  ASSERT_TRUE(RunUntil(*loop, [&] { return Readable(conn.get()); }));
  ASSERT_TRUE(ReceivePacket(conn.get()).ok());  // hello
  pb::WorkloadRequest keep;
  keep.mutable_keep()->set_uid("b");
  ASSERT_TRUE(SendPacket(conn.get(), keep.SerializeAsString(), {}).ok());
  ASSERT_TRUE(RunUntil(*loop, [&] { return Readable(conn.get()); }));
  EXPECT_EQ(AckError(conn.get()), "");
  ASSERT_TRUE(SendPacket(conn.get(), snap.SerializeAsString(), {}).ok());
  ASSERT_TRUE(RunUntil(*loop, [&] { return Readable(conn.get()); }));
  EXPECT_EQ(AckError(conn.get()), "");
  EXPECT_EQ(sink.removed, std::vector<std::string>{"a"});
  client.reset();
  unlink(path.c_str());
}

}  // namespace
}  // namespace ambit::zds
