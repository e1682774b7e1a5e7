#include "agent/common/capabilities.h"

#include <gtest/gtest.h>
#include <linux/capability.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/match.h"

namespace ambit::caps {
namespace {

TEST(CapabilitiesTest, NamesAreTheKernelsNames) {
  EXPECT_EQ(Name(CAP_NET_ADMIN), "CAP_NET_ADMIN");
  EXPECT_EQ(Name(CAP_SYS_ADMIN), "CAP_SYS_ADMIN");
  EXPECT_EQ(Name(CAP_BPF), "CAP_BPF");
  EXPECT_EQ(Name(CAP_PERFMON), "CAP_PERFMON");
  EXPECT_EQ(Name(63), "CAP_63");
  EXPECT_EQ(Names(Bit(CAP_BPF) | Bit(CAP_NET_ADMIN)), "CAP_NET_ADMIN,CAP_BPF");
  EXPECT_EQ(Names(0), "none");
}

TEST(CapabilitiesTest, CheckNeedsNamesEveryMissingCapabilityAndWhy) {
  const std::vector<Need> needs = {{CAP_SYS_ADMIN, "setns into pods"}, {CAP_NET_ADMIN, "SO_MARK"}};
  EXPECT_TRUE(CheckNeeds("ambit-tunnel", Bit(CAP_SYS_ADMIN) | Bit(CAP_NET_ADMIN), needs).ok());
  auto missing = CheckNeeds("ambit-tunnel", Bit(CAP_SYS_ADMIN) | Bit(CAP_CHOWN), needs);
  ASSERT_TRUE(absl::IsPermissionDenied(missing)) << missing;
  EXPECT_TRUE(absl::StrContains(missing.message(), "ambit-tunnel lacks CAP_NET_ADMIN (SO_MARK)"))
      << missing;
  EXPECT_FALSE(absl::StrContains(missing.message(), "lacks CAP_SYS_ADMIN")) << missing;
  EXPECT_TRUE(absl::StrContains(missing.message(), "runs with CAP_CHOWN,CAP_SYS_ADMIN")) << missing;
}

// The status line of /proc/self/status, e.g. "CapEff".
uint64_t StatusMask(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(std::string(field) + ":", 0) == 0) {
      return std::stoull(line.substr(line.find(':') + 1), nullptr, 16);
    }
  }
  return ~uint64_t{0};
}

// Runs in a forked child (a single thread, whatever gtest started), as root: the drop is real.
TEST(CapabilitiesTest, DropAllExceptLeavesExactlyTheKeptSetEverywhere) {
  if (geteuid() != 0) GTEST_FAIL() << "needs root: capabilities are dropped for real";
  const CapMask keep = Bit(CAP_NET_ADMIN) | Bit(CAP_SYS_ADMIN);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int code = 0;
    if (!DropAllExcept(keep).ok())
      code = 10;
    else if (StatusMask("CapEff") != keep)
      code = 11;
    else if (StatusMask("CapPrm") != keep)
      code = 12;
    else if (StatusMask("CapInh") != 0)
      code = 13;
    else if (StatusMask("CapBnd") != keep)
      code = 14;
    else if (StatusMask("CapAmb") != 0)
      code = 15;
    else if (StatusMask("NoNewPrivs") != 1)
      code = 16;
    // A dropped capability cannot come back.
    else if (DropAllExcept(keep | Bit(CAP_BPF)).ok() && (StatusMask("CapEff") & Bit(CAP_BPF)))
      code = 17;
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "10: drop failed, 11-16: CapEff, CapPrm, CapInh, CapBnd, "
                                       "CapAmb, NoNewPrivs not as expected, 17: regained";
}

// A thread just joined may still be counted by the kernel for a moment; the drop waits for it to
// go instead of refusing (ambitd joins a setns() helper thread right before it drops).
TEST(CapabilitiesTest, DropRightAfterAJoinIsNotRefused) {
  if (geteuid() != 0) GTEST_FAIL() << "needs root: capabilities are dropped for real";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const CapMask keep = StatusMask("CapEff");
    int code = 0;
    for (int i = 0; i < 300 && code == 0; ++i) {
      std::thread([] {}).join();
      if (!DropAllExcept(keep).ok()) code = 20;
    }
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "a drop right after a join was refused";
}

TEST(CapabilitiesTest, DropIsRefusedWhileOtherThreadsRun) {
  // gtest itself may run single-threaded; start one to be sure.
  std::atomic<bool> stop{false};
  std::thread t([&] {
    while (!stop) usleep(1000);
  });
  auto status = DropAllExcept(0);
  stop = true;
  t.join();
  ASSERT_TRUE(absl::IsFailedPrecondition(status)) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "other thread")) << status;
  // Nothing was dropped.
  EXPECT_NE(StatusMask("CapEff"), 0u);
}

}  // namespace
}  // namespace ambit::caps
