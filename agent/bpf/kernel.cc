#include "agent/bpf/kernel.h"

#include <errno.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bpf/libbpf.h"

namespace ambit::bpf {

absl::StatusOr<std::string> FindCgroup2Mount(const std::string& mounts_file) {
  std::ifstream in(mounts_file);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", mounts_file));
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    if (f.size() >= 3 && f[2] == "cgroup2") return f[1];
  }
  return absl::FailedPreconditionError(
      "no cgroup v2 hierarchy is mounted (ambit attaches its programs to one); mount it with "
      "'mount -t cgroup2 none /sys/fs/cgroup' or boot with systemd.unified_cgroup_hierarchy=1");
}

namespace {

// The inode numbers the kernel gives its initial namespaces (include/linux/proc_ns.h), fixed
// since Linux 3.8 (PID) and 4.6 (cgroup).
constexpr uint64_t kInitPidNsIno = 0xEFFFFFFCU;
constexpr uint64_t kInitCgroupNsIno = 0xEFFFFFFBU;

absl::StatusOr<NsId> StatNs(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("stat ", path));
  return NsId{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
}

}  // namespace

NamespaceFacts ReadNamespaceFacts(const std::string& host_proc) {
  NamespaceFacts f;
  if (auto own = StatNs("/proc/self/ns/mnt"); own.ok()) f.own_mnt = *own;
  auto init = StatNs(host_proc + "/1/ns/mnt");
  if (init.ok()) {
    f.host_init_mnt = *init;
  } else {
    f.host_init_mnt_error = std::string(init.status().message());
  }
  if (auto pid = StatNs("/proc/self/ns/pid"); pid.ok()) f.own_pid_ino = pid->ino;
  if (auto cg = StatNs("/proc/self/ns/cgroup"); cg.ok()) f.own_cgroup_ino = cg->ino;
  return f;
}

// The question is whether a mount made here is the host's: only then do pins outlive ambitd.
// The direct answer is whether ambitd's mount namespace is that of the host's PID 1 (through the
// host's procfs: in a DaemonSet /proc is the container's own, whose PID 1 is the container's
// init, so --host-proc names the host's). A container without hostPID cannot see the host's
// PID 1 through its own /proc, and opening another process's ns files may be refused (ptrace
// rules), so two signs that need no access to any other process back it up: a PID namespace or
// a cgroup namespace other than the initial one is what container runtimes create (the cgroup
// one on every cgroup-v2 host), and a process in one is in a container, whose mounts are its own.
// Any one of the three is enough to refuse; none of them can say "host" wrongly for a container
// that has its own mount namespace and its own PID or cgroup namespace.
std::optional<std::string> PrivateMountReason(const NamespaceFacts& f) {
  if (f.host_init_mnt.has_value() && !(*f.host_init_mnt == f.own_mnt)) {
    return "its mount namespace is not that of the host's PID 1";
  }
  if (f.own_pid_ino != 0 && f.own_pid_ino != kInitPidNsIno) {
    return "it runs in a PID namespace other than the host's (a container)";
  }
  if (f.own_cgroup_ino != 0 && f.own_cgroup_ino != kInitCgroupNsIno) {
    return "it runs in a cgroup namespace other than the host's (a container)";
  }
  return std::nullopt;
}

absl::Status EnsureBpffs(const std::string& dir, const std::string& host_proc) {
  struct statfs st;
  if (statfs(dir.c_str(), &st) == 0 && st.f_type == BPF_FS_MAGIC) return absl::OkStatus();
  if (auto reason = PrivateMountReason(ReadNamespaceFacts(host_proc))) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--bpffs ", dir, " is not a bpffs mount, and ambitd will not mount one there: ", *reason,
        ", so the mount would be private to it and every pin would die with it (enrolled pods "
        "would lose capture and enforcement when ambitd restarts); mount the host's /sys/fs/bpf "
        "at ",
        dir,
        " instead (in Kubernetes: a hostPath volume with mountPropagation: "
        "HostToContainer)"));
  }
  if (mount("bpf", dir.c_str(), "bpf", 0, "mode=0700") < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("mount bpffs at ", dir));
  }
  return absl::OkStatus();
}

std::vector<std::string> MissingKernelFeatures() {
  std::vector<std::string> missing;
  auto need_prog = [&](bpf_prog_type type, const char* what) {
    if (libbpf_probe_bpf_prog_type(type, nullptr) != 1) missing.push_back(what);
  };
  auto need_map = [&](bpf_map_type type, const char* what) {
    if (libbpf_probe_bpf_map_type(type, nullptr) != 1) missing.push_back(what);
  };
  auto need_helper = [&](bpf_prog_type type, bpf_func_id id, const char* what) {
    if (libbpf_probe_bpf_helper(type, id, nullptr) != 1) missing.push_back(what);
  };
  need_prog(BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            "kernel lacks BPF cgroup/connect programs: needed to redirect outbound TCP");
  need_prog(BPF_PROG_TYPE_SOCK_OPS,
            "kernel lacks BPF sockops programs: needed to record the "
            "original destination of redirected connections");
  need_prog(BPF_PROG_TYPE_SK_LOOKUP,
            "kernel lacks BPF sk_lookup (Linux 5.9+): needed to steer "
            "inbound TCP to ambit's listeners");
  need_map(BPF_MAP_TYPE_SK_STORAGE,
           "kernel lacks BPF socket-local storage (Linux 5.2+): needed to keep destinations");
  need_map(BPF_MAP_TYPE_SOCKMAP, "kernel lacks BPF sockmap: needed to hold inbound listeners");
  need_map(BPF_MAP_TYPE_LPM_TRIE, "kernel lacks BPF LPM tries: needed for bypass CIDRs");
  need_helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_get_netns_cookie,
              "kernel lacks bpf_get_netns_cookie in cgroup/connect (Linux 5.7+): needed to "
              "recognise enrolled pods");
  need_helper(BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_get_netns_cookie,
              "kernel lacks bpf_get_netns_cookie in sockops (Linux 5.15+): needed to key "
              "original destinations by pod");
  need_helper(BPF_PROG_TYPE_SK_LOOKUP, BPF_FUNC_sk_assign,
              "kernel lacks bpf_sk_assign in sk_lookup: needed to steer inbound TCP");
  return missing;
}

absl::StatusOr<uint64_t> CgroupId(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) < 0) return absl::ErrnoToStatus(errno, absl::StrCat("stat ", path));
  return static_cast<uint64_t>(st.st_ino);
}

absl::StatusOr<std::string> OwnCgroupPath(const std::string& mount) {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("0::", 0) == 0) return mount + line.substr(3);
  }
  return absl::NotFoundError("no cgroup v2 entry in /proc/self/cgroup");
}

}  // namespace ambit::bpf
