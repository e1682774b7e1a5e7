#include "agent/node/handoff.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "agent/common/seqpacket.h"
#include "agent/common/socket_util.h"
#include "agent/node/instance_lock.h"
#include "ambit/dataplane/v1/handoff.pb.h"
#include "gtest/gtest.h"

namespace ambit::node {
namespace {

namespace pb = ::ambit::dataplane::v1;

std::string RequestBytes(int version, int64_t pid, const std::string& instance,
                         const std::string& build = "v1") {
  pb::HandOff m;
  m.mutable_request()->set_version(static_cast<pb::HandOffVersion>(version));
  m.mutable_request()->set_pid(pid);
  m.mutable_request()->set_instance(instance);
  m.mutable_request()->set_build(build);
  m.mutable_request()->set_bpf_abi(3);
  return m.SerializeAsString();
}

TEST(HandOffTest, ParsesAValidRequest) {
  auto r = ParseTakeOverRequest(RequestBytes(1, 4242, "default"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->pid, 4242);
  EXPECT_EQ(r->instance, "default");
  EXPECT_EQ(r->build, "v1");
  EXPECT_EQ(r->bpf_abi, 3u);
}

TEST(HandOffTest, RefusesWhatIsNoRequest) {
  pb::HandOff answer;
  answer.mutable_answer()->set_stepped_aside(true);
  struct Case {
    const char* name;
    std::string bytes;
    const char* why;
  };
  const Case cases[] = {
      {"garbage", "\xff\xff\xff not a request", "does not parse"},
      {"empty", "", "no TakeOverRequest"},
      {"an answer", answer.SerializeAsString(), "no TakeOverRequest"},
      {"version 0", RequestBytes(0, 1, "default"), "hand-off version 0"},
      {"version 2", RequestBytes(2, 1, "default"), "hand-off version 2"},
      {"pid 0", RequestBytes(1, 0, "default"), "names pid 0"},
      {"negative pid", RequestBytes(1, -5, "default"), "names pid -5"},
      {"huge pid", RequestBytes(1, int64_t{1} << 40, "default"), "names pid"},
      {"no instance", RequestBytes(1, 7, ""), "instance or build"},
      {"long build", RequestBytes(1, 7, "default", std::string(300, 'b')), "instance or build"},
      {"oversized", std::string(5000, 'x'), "bytes (at most 4096)"},
  };
  for (const Case& c : cases) {
    auto r = ParseTakeOverRequest(c.bytes);
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(r.status().message().find(c.why), std::string::npos) << c.name << ": " << r.status();
  }
}

class HandOffSocketTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("ambit-handoff-test-", getpid(), "-", counter_++);
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "agent-handoff.sock").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Serves one connection: reads the request and answers as `answer` decides.
  std::thread ServeOne(UniqueFd listener,
                       std::function<void(int conn, const TakeOverRequest&)> answer) {
    return std::thread([l = std::move(listener), answer = std::move(answer)]() mutable {
      UniqueFd conn(accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!conn) return;
      auto packet = ReceivePacket(conn.get());
      if (!packet.ok()) return;
      auto request = ParseTakeOverRequest(packet->data);
      if (!request.ok()) return;
      answer(conn.get(), *request);
    });
  }

  static inline int counter_ = 0;
  std::filesystem::path dir_;
  std::string path_;
};

TEST_F(HandOffSocketTest, SteppedAsideHandsTheLockOver) {
  const std::string instance = absl::StrCat("unit-handoff-", getpid());
  std::optional<InstanceLock> held;
  {
    auto lock = InstanceLock::Acquire(instance);
    ASSERT_TRUE(lock.ok()) << lock.status();
    held.emplace(std::move(*lock));
  }
  auto listener = ListenUnix(path_, SOCK_SEQPACKET);
  ASSERT_TRUE(listener.ok()) << listener.status();
  TakeOverRequest seen;
  std::thread server = ServeOne(std::move(*listener), [&](int conn, const TakeOverRequest& r) {
    seen = r;
    ASSERT_TRUE(SendTakeOverAnswer(conn, /*stepped_aside=*/true, "", held->fd()).ok());
    held.reset();  // the old agent's copy goes; the lock stays with the handed-over one
  });
  auto aside = RequestTakeOver(path_, ThisAgent(instance), absl::Seconds(5));
  server.join();
  ASSERT_TRUE(aside.ok()) << aside.status();
  EXPECT_EQ(seen.pid, getpid());
  EXPECT_EQ(seen.instance, instance);
  EXPECT_EQ(aside->pid, getpid());
  ASSERT_TRUE(aside->lock);
  auto adopted = InstanceLock::Adopt(instance, std::move(aside->lock));
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  // The adopted descriptor holds the lock: nobody else gets it.
  auto other = InstanceLock::Acquire(instance);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition) << other.status();
  adopted->Remove();
}

TEST_F(HandOffSocketTest, RefusalCarriesTheReason) {
  auto listener = ListenUnix(path_, SOCK_SEQPACKET);
  ASSERT_TRUE(listener.ok()) << listener.status();
  std::thread server = ServeOne(std::move(*listener), [](int conn, const TakeOverRequest&) {
    (void)SendTakeOverAnswer(conn, /*stepped_aside=*/false, "already stepping aside for pid 9", -1);
  });
  auto aside = RequestTakeOver(path_, ThisAgent("default"), absl::Seconds(5));
  server.join();
  ASSERT_FALSE(aside.ok());
  EXPECT_EQ(aside.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(
      aside.status().message().find("refused the take-over: already stepping aside for pid 9"),
      std::string::npos)
      << aside.status();
}

TEST_F(HandOffSocketTest, NobodyServingIsUnavailable) {
  auto missing = RequestTakeOver(path_, ThisAgent("default"), absl::Seconds(1));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kUnavailable) << missing.status();
  // A stale socket file: bound once, nobody listens now.
  {
    auto listener = ListenUnix(path_, SOCK_SEQPACKET);
    ASSERT_TRUE(listener.ok());
  }
  ASSERT_TRUE(std::filesystem::exists(path_));
  auto stale = RequestTakeOver(path_, ThisAgent("default"), absl::Seconds(1));
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kUnavailable) << stale.status();
  EXPECT_NE(stale.status().message().find("no agent serves the hand-off socket"), std::string::npos)
      << stale.status();
}

TEST_F(HandOffSocketTest, SilentPeerTimesOut) {
  auto listener = ListenUnix(path_, SOCK_SEQPACKET);
  ASSERT_TRUE(listener.ok()) << listener.status();
  // Connected (the backlog accepts it) but never answered.
  auto aside = RequestTakeOver(path_, ThisAgent("default"), absl::Milliseconds(300));
  EXPECT_EQ(aside.status().code(), absl::StatusCode::kDeadlineExceeded) << aside.status();
}

TEST_F(HandOffSocketTest, ClosedWithoutAnswerIsUnavailable) {
  auto listener = ListenUnix(path_, SOCK_SEQPACKET);
  ASSERT_TRUE(listener.ok()) << listener.status();
  std::thread server = ServeOne(std::move(*listener), [](int, const TakeOverRequest&) {});
  auto aside = RequestTakeOver(path_, ThisAgent("default"), absl::Seconds(5));
  server.join();
  EXPECT_EQ(aside.status().code(), absl::StatusCode::kUnavailable) << aside.status();
}

TEST(InstanceLockAdoptTest, OnlyTheHoldersDescriptorAdopts) {
  const std::string instance = absl::StrCat("unit-adopt-", getpid());
  auto held = InstanceLock::Acquire(instance);
  ASSERT_TRUE(held.ok()) << held.status();
  // Another open of the same file is not the holder's open file description.
  UniqueFd other(open(held->path().c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(other);
  auto stolen = InstanceLock::Adopt(instance, std::move(other));
  EXPECT_FALSE(stolen.ok());
  // Some other file is no lock at all.
  UniqueFd elsewhere(open("/proc/self/status", O_RDONLY | O_CLOEXEC));
  auto wrong = InstanceLock::Adopt(instance, std::move(elsewhere));
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kFailedPrecondition) << wrong.status();
  // The holder's own descriptor, duplicated, does.
  UniqueFd dup_fd(fcntl(held->fd(), F_DUPFD_CLOEXEC, 0));
  auto adopted = InstanceLock::Adopt(instance, std::move(dup_fd));
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  held->Remove();
}

}  // namespace
}  // namespace ambit::node
