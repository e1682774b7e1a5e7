#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ambit::bpf {

// The cgroup-v2 mount point, read from /proc/self/mounts (/sys/fs/cgroup on pure-v2 hosts,
// /sys/fs/cgroup/unified on hybrid ones).
absl::StatusOr<std::string> FindCgroup2Mount(const std::string& mounts_file = "/proc/self/mounts");

// A namespace's identity: st_dev and st_ino of its nsfs file.
struct NsId {
  uint64_t dev = 0;
  uint64_t ino = 0;
  friend bool operator==(const NsId&, const NsId&) = default;
};

// What tells whether ambitd shares the host's mount namespace, read from procfs.
struct NamespaceFacts {
  NsId own_mnt;                       // /proc/self/ns/mnt
  std::optional<NsId> host_init_mnt;  // <host proc>/1/ns/mnt: the host's PID 1, if readable
  std::string host_init_mnt_error;    // why not, when it is not
  uint64_t own_pid_ino = 0;           // /proc/self/ns/pid
  uint64_t own_cgroup_ino = 0;        // /proc/self/ns/cgroup
};

// host_proc: the host's procfs (/proc, or the host's /proc mounted into a container).
NamespaceFacts ReadNamespaceFacts(const std::string& host_proc);

// Why ambitd's mounts would not be the host's (it runs in a container, or in a mount namespace
// of its own), or nullopt when its mount namespace is the host's. See kernel.cc for the rule.
std::optional<std::string> PrivateMountReason(const NamespaceFacts& facts);

// Mounts bpffs at dir unless one is mounted there already. Refuses to mount one when
// PrivateMountReason says the mount would not be the host's: pins in it would die with the
// container, and every enrolled pod would lose capture and enforcement on a restart.
absl::Status EnsureBpffs(const std::string& dir, const std::string& host_proc);

// Kernel features ambit needs, one message per missing feature ("kernel lacks X: needed for Y").
std::vector<std::string> MissingKernelFeatures();

// The cgroup-v2 id of a cgroup directory (what bpf_get_current_cgroup_id() returns).
absl::StatusOr<uint64_t> CgroupId(const std::string& path);

// The calling process's cgroup-v2 directory under mount.
absl::StatusOr<std::string> OwnCgroupPath(const std::string& mount);

}  // namespace ambit::bpf
