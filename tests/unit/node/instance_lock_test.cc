#include "agent/node/instance_lock.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace ambit::node {
namespace {

std::string UniqueInstance(const char* what) { return absl::StrCat("unit-", what, "-", getpid()); }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(InstanceLockTest, SecondHolderRefusedWithPidUntilFirstReleases) {
  std::string instance = UniqueInstance("second");
  std::optional<InstanceLock> first;
  {
    auto lock = InstanceLock::Acquire(instance);
    ASSERT_TRUE(lock.ok()) << lock.status();
    first.emplace(std::move(*lock));
  }
  EXPECT_EQ(ReadFile(first->path()), absl::StrCat(getpid(), "\n"));

  // flock belongs to the open file description: a second open conflicts even in one process.
  auto second = InstanceLock::Acquire(instance);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find(absl::StrCat("in use by pid ", getpid())),
            std::string::npos)
      << second.status();

  std::string path = first->path();
  first.reset();
  auto third = InstanceLock::Acquire(instance);
  EXPECT_TRUE(third.ok()) << third.status();
  unlink(path.c_str());
}

TEST(InstanceLockTest, RemoveFreesTheInstanceWithANewFile) {
  std::string instance = UniqueInstance("removed");
  auto path = InstanceLock::PathFor(instance);
  auto first = InstanceLock::Acquire(instance);
  ASSERT_TRUE(first.ok()) << first.status();
  // Opened before the holder removes the file: what a racing agent could still hold.
  int stale = open(path.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(stale, 0);
  first->Remove();
  EXPECT_NE(access(path.c_str(), F_OK), 0);
  auto second = InstanceLock::Acquire(instance);
  ASSERT_TRUE(second.ok()) << second.status();
  // The new holder has a new file; the racing one re-checks against it (Acquire).
  struct stat a, b;
  ASSERT_EQ(fstat(stale, &a), 0);
  ASSERT_EQ(stat(path.c_str(), &b), 0);
  EXPECT_NE(a.st_ino, b.st_ino);
  close(stale);
  second->Remove();
}

TEST(InstanceLockTest, LockIsNotInheritedAcrossExec) {
  auto lock = InstanceLock::Acquire(UniqueInstance("cloexec"));
  ASSERT_TRUE(lock.ok()) << lock.status();
  bool found = false;
  for (int fd = 3; fd < 1024; ++fd) {
    char link[64], target[512] = {};
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    if (readlink(link, target, sizeof target - 1) <= 0) continue;
    if (lock->path() != target) continue;
    found = true;
    EXPECT_TRUE(fcntl(fd, F_GETFD) & FD_CLOEXEC);
  }
  EXPECT_TRUE(found);
  unlink(lock->path().c_str());
}

TEST(InstanceLockTest, RejectsNamesThatAreNotFileNames) {
  for (const char* bad : {"", "..", ".hidden", "a/b", "../../etc/x", "sp ace"}) {
    auto lock = InstanceLock::Acquire(bad);
    ASSERT_FALSE(lock.ok()) << bad;
    EXPECT_EQ(lock.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  std::string longest(65, 'a');
  EXPECT_FALSE(InstanceLock::Acquire(longest).ok());
}

}  // namespace
}  // namespace ambit::node
