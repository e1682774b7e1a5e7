#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ambit::bpf {

// The cgroup-v2 mount point, read from /proc/self/mounts (/sys/fs/cgroup on pure-v2 hosts,
// /sys/fs/cgroup/unified on hybrid ones).
absl::StatusOr<std::string> FindCgroup2Mount(const std::string& mounts_file = "/proc/self/mounts");

// Mounts bpffs at dir unless one is mounted there already.
absl::Status EnsureBpffs(const std::string& dir = "/sys/fs/bpf");

// Kernel features ambit needs, one message per missing feature ("kernel lacks X: needed for Y").
std::vector<std::string> MissingKernelFeatures();

// The cgroup-v2 id of a cgroup directory (what bpf_get_current_cgroup_id() returns).
absl::StatusOr<uint64_t> CgroupId(const std::string& path);

// The calling process's cgroup-v2 directory under mount.
absl::StatusOr<std::string> OwnCgroupPath(const std::string& mount);

}  // namespace ambit::bpf
