#include "agent/common/capabilities.h"

#include <errno.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

namespace ambit::caps {
namespace {

constexpr const char* kNames[] = {
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
};
constexpr int kKnown = sizeof(kNames) / sizeof(kNames[0]);

// The highest capability number the running kernel knows (it may be newer than this build).
int LastCap() {
  std::ifstream in("/proc/sys/kernel/cap_last_cap");
  int last = CAP_LAST_CAP;
  if (in >> last && last >= 0 && last < 64) return last;
  return CAP_LAST_CAP;
}

struct RawSets {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
};

CapMask Join(uint32_t low, uint32_t high) { return CapMask{low} | (CapMask{high} << 32); }

}  // namespace

std::string Name(int cap) {
  if (cap >= 0 && cap < kKnown) return kNames[cap];
  return absl::StrCat("CAP_", cap);
}

std::string Names(CapMask mask) {
  std::vector<std::string> out;
  for (int cap = 0; cap < 64; ++cap) {
    if (mask & Bit(cap)) out.push_back(Name(cap));
  }
  return out.empty() ? "none" : absl::StrJoin(out, ",");
}

CapMask MaskOf(const std::vector<Need>& needs) {
  CapMask mask = 0;
  for (const Need& n : needs) mask |= Bit(n.cap);
  return mask;
}

absl::Status CheckNeeds(absl::string_view process, CapMask effective,
                        const std::vector<Need>& needs) {
  std::vector<std::string> missing;
  for (const Need& n : needs) {
    if (!(effective & Bit(n.cap))) missing.push_back(absl::StrCat(Name(n.cap), " (", n.why, ")"));
  }
  if (missing.empty()) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      process, " lacks ", absl::StrJoin(missing, ", "), "; it runs with ", Names(effective),
      ": grant ", Names(MaskOf(needs)), " (docs/ARCHITECTURE.md#processes)"));
}

absl::StatusOr<CapState> Current() {
  RawSets raw;
  if (syscall(SYS_capget, &raw.header, raw.data) != 0) return absl::ErrnoToStatus(errno, "capget");
  CapState s;
  s.permitted = Join(raw.data[0].permitted, raw.data[1].permitted);
  s.effective = Join(raw.data[0].effective, raw.data[1].effective);
  s.inheritable = Join(raw.data[0].inheritable, raw.data[1].inheritable);
  const int last = LastCap();
  for (int cap = 0; cap <= last; ++cap) {
    if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1) s.bounding |= Bit(cap);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap, 0, 0) == 1) s.ambient |= Bit(cap);
  }
  s.no_new_privs = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1;
  return s;
}

absl::StatusOr<int> ThreadCount() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view v(line);
    if (absl::ConsumePrefix(&v, "Threads:")) {
      int n = 0;
      if (absl::SimpleAtoi(absl::StripAsciiWhitespace(v), &n)) return n;
    }
  }
  return absl::InternalError("no Threads: line in /proc/self/status");
}

absl::Status DropAllExcept(CapMask keep) {
  // A thread already joined can still be counted for a moment: the kernel wakes its joiner
  // (clearing the thread's TID word) before it takes the exiting task out of the thread group.
  // Set-up joins short-lived threads (a setns() helper, the configuration parser) just before
  // this check, so a count above one is read again for up to 200 ms before it is believed.
  auto threads = ThreadCount();
  for (int i = 0; i < 200 && threads.ok() && *threads != 1; ++i) {
    usleep(1000);
    threads = ThreadCount();
  }
  if (!threads.ok()) return threads.status();
  if (*threads != 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "capabilities are dropped per thread, and ", *threads - 1,
        " other thread(s) already run: they would keep theirs (drop before any thread starts)"));
  }
  auto before = Current();
  if (!before.ok()) return before.status();
  // The bounding set first: shrinking it needs CAP_SETPCAP, which the capset below removes.
  if (before->effective & Bit(CAP_SETPCAP)) {
    const int last = LastCap();
    for (int cap = 0; cap <= last; ++cap) {
      if ((before->bounding & Bit(cap)) && !(keep & Bit(cap))) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
          return absl::ErrnoToStatus(errno,
                                     absl::StrCat("drop ", Name(cap), " from the bounding set"));
        }
      }
    }
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) {
    return absl::ErrnoToStatus(errno, "clear the ambient capability set");
  }
  const CapMask kept = keep & before->permitted;
  RawSets raw;
  raw.data[0].permitted = raw.data[0].effective = static_cast<uint32_t>(kept);
  raw.data[1].permitted = raw.data[1].effective = static_cast<uint32_t>(kept >> 32);
  if (syscall(SYS_capset, &raw.header, raw.data) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("capset to ", Names(kept)));
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    return absl::ErrnoToStatus(errno, "set no_new_privs");
  }
  return absl::OkStatus();
}

}  // namespace ambit::caps
