#include "agent/enroll/node_netns.h"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <thread>

#include "agent/common/unique_fd.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/common/temp_dir.h"

namespace ambit::enroll {
namespace {

using ::testing::HasSubstr;

UniqueFd Open(const std::string& path) {
  return UniqueFd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
}

TEST(NodeNetnsGuardTest, ComparesIdentitiesNotPaths) {
  ambit::testing::TempDir dir;
  dir.Write("host", "");
  dir.Write("pod", "");
  ASSERT_EQ(link(dir.PathOf("host").c_str(), dir.PathOf("alias").c_str()), 0);
  UniqueFd host = Open(dir.PathOf("host"));
  ASSERT_TRUE(host);
  auto id = IdentifyNetns(host.get());
  ASSERT_TRUE(id.ok()) << id.status();
  id->what = "the host's network namespace (that of PID 1)";
  NodeNetnsGuard guard({*id});

  UniqueFd alias = Open(dir.PathOf("alias"));  // another name, the same file
  absl::Status refused = guard.Check(alias.get());
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(refused.message(), HasSubstr("the host's network namespace (that of PID 1)"));
  EXPECT_TRUE(guard.Check(Open(dir.PathOf("pod")).get()).ok());
  EXPECT_FALSE(guard.Check(-1).ok());  // unidentifiable: never waved through
}

TEST(NodeNetnsGuardTest, RefusesThisProcessAndPid1ByAnyPath) {
  auto guard = NodeNetnsGuard::ForThisProcess();
  ASSERT_TRUE(guard.ok()) << guard.status();
  // /proc/self and /proc/thread-self are two paths to the namespace this test runs in.
  for (const char* path : {"/proc/self/ns/net", "/proc/thread-self/ns/net"}) {
    UniqueFd own = Open(path);
    ASSERT_TRUE(own) << path;
    absl::Status s = guard->Check(own.get());
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << path;
    EXPECT_THAT(s.message(), HasSubstr("ambitd's own network namespace")) << path;
  }
  // PID 1's namespace is closed to some roots (a sandbox's non-dumpable init). Then the guard
  // says so, and no pod can name it by that path either.
  UniqueFd pid1 = Open("/proc/1/ns/net");
  if (pid1) {
    EXPECT_EQ(guard->unchecked(), "");
    absl::Status s = guard->Check(pid1.get());
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
    EXPECT_THAT(s.message(), HasSubstr("that of PID 1"));
  } else {
    EXPECT_EQ(errno, EACCES);
    EXPECT_THAT(guard->unchecked(), HasSubstr("PID 1 cannot be identified"));
  }
}

TEST(NodeNetnsGuardTest, AcceptsANamespaceOfItsOwn) {
  auto guard = NodeNetnsGuard::ForThisProcess();
  ASSERT_TRUE(guard.ok()) << guard.status();
  // A thread that leaves for a fresh namespace (needs root, as ambitd does) and hands back a
  // descriptor of it; the namespace lives on in the descriptor.
  UniqueFd fresh;
  std::string error;
  std::thread([&] {
    if (unshare(CLONE_NEWNET) != 0) {
      error = std::string("unshare: ") + strerror(errno);
      return;
    }
    fresh = UniqueFd(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  }).join();
  ASSERT_TRUE(error.empty()) << error;
  ASSERT_TRUE(fresh);
  EXPECT_TRUE(guard->Check(fresh.get()).ok());
}

}  // namespace
}  // namespace ambit::enroll
