#include "agent/bpf/kernel.h"

#include <gtest/gtest.h>

namespace ambit::bpf {
namespace {

constexpr uint64_t kInitPid = 0xEFFFFFFCU;
constexpr uint64_t kInitCgroup = 0xEFFFFFFBU;

NamespaceFacts Host() {
  NamespaceFacts f;
  f.own_mnt = {4, 4026531832};
  f.host_init_mnt = NsId{4, 4026531832};
  f.own_pid_ino = kInitPid;
  f.own_cgroup_ino = kInitCgroup;
  return f;
}

TEST(PrivateMountReasonTest, HostNamespacesMayMount) {
  EXPECT_EQ(PrivateMountReason(Host()), std::nullopt);
}

TEST(PrivateMountReasonTest, UnreadableInitMountNamespaceAloneIsNoEvidence) {
  // Root without CAP_SYS_PTRACE may not open /proc/1/ns/mnt; a bare-metal agent still mounts.
  NamespaceFacts f = Host();
  f.host_init_mnt.reset();
  f.host_init_mnt_error = "stat /proc/1/ns/mnt: Permission denied";
  EXPECT_EQ(PrivateMountReason(f), std::nullopt);
}

TEST(PrivateMountReasonTest, OwnMountNamespaceIsRefused) {
  // unshare -m, or a service manager's private mounts: the mount would die with the namespace.
  NamespaceFacts f = Host();
  f.own_mnt = {4, 4026532999};
  auto reason = PrivateMountReason(f);
  ASSERT_TRUE(reason.has_value());
  EXPECT_NE(reason->find("mount namespace is not that of the host's PID 1"), std::string::npos);
}

TEST(PrivateMountReasonTest, ContainerPidNamespaceIsRefused) {
  // A container without hostPID: its /proc/1 is its own init, in its own mount namespace.
  NamespaceFacts f = Host();
  f.own_pid_ino = 4026532100;
  auto reason = PrivateMountReason(f);
  ASSERT_TRUE(reason.has_value());
  EXPECT_NE(reason->find("PID namespace"), std::string::npos);
}

TEST(PrivateMountReasonTest, ContainerCgroupNamespaceIsRefused) {
  // hostPID but a private cgroup namespace (containerd's default on cgroup v2), and PID 1's
  // mount namespace not readable.
  NamespaceFacts f = Host();
  f.host_init_mnt.reset();
  f.own_cgroup_ino = 4026532200;
  auto reason = PrivateMountReason(f);
  ASSERT_TRUE(reason.has_value());
  EXPECT_NE(reason->find("cgroup namespace"), std::string::npos);
}

TEST(PrivateMountReasonTest, ThisProcessReadsItsOwnNamespaces) {
  NamespaceFacts f = ReadNamespaceFacts("/proc");
  EXPECT_NE(f.own_mnt.ino, 0u);
  EXPECT_NE(f.own_pid_ino, 0u);
  EXPECT_NE(f.own_cgroup_ino, 0u);
  EXPECT_TRUE(f.host_init_mnt.has_value() || !f.host_init_mnt_error.empty());
}

TEST(PrivateMountReasonTest, AMissingHostProcIsReported) {
  NamespaceFacts f = ReadNamespaceFacts("/nonexistent-host-proc");
  EXPECT_FALSE(f.host_init_mnt.has_value());
  EXPECT_NE(f.host_init_mnt_error.find("/nonexistent-host-proc/1/ns/mnt"), std::string::npos);
}

}  // namespace
}  // namespace ambit::bpf
