#pragma once

// Linux capabilities of ambit's processes: checking that the ones a process needs were granted
// (a container that lacks one fails at start with the capability named, not later with EPERM
// from somewhere deep), and dropping the rest once set-up is done
// (docs/ARCHITECTURE.md#processes lists each process's set and why).
//
// Done with capget/capset and prctl directly, not libcap: the whole job is four system calls
// (bounding-set drops, ambient clear, one capset, no_new_privs), and libcap would be one more
// library in the data plane's process, which parses untrusted TLS and HTTP.
//
// Capabilities belong to each thread, not to the process: a thread started before the drop
// keeps its set. DropAllExcept therefore refuses to run while the process has more than one
// thread; call it before any thread starts (threads started later inherit the reduced sets).

#include <linux/capability.h>  // CAP_* for callers

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ambit::caps {

using CapMask = uint64_t;

constexpr CapMask Bit(int cap) { return CapMask{1} << cap; }

// "CAP_NET_ADMIN"; "CAP_<n>" for a number this build has no name for.
std::string Name(int cap);
// "CAP_BPF,CAP_NET_ADMIN", or "none".
std::string Names(CapMask mask);

struct CapState {
  CapMask permitted = 0;
  CapMask effective = 0;
  CapMask inheritable = 0;
  CapMask bounding = 0;
  CapMask ambient = 0;
  bool no_new_privs = false;
};

// The calling thread's sets.
absl::StatusOr<CapState> Current();

// A capability a process needs, and what for (said in the error when it is missing).
struct Need {
  int cap;
  absl::string_view why;
};

// OK when `effective` holds every need; otherwise PermissionDenied naming each missing
// capability and what it is for. Pure.
absl::Status CheckNeeds(absl::string_view process, CapMask effective,
                        const std::vector<Need>& needs);

// The mask of a list of needs.
CapMask MaskOf(const std::vector<Need>& needs);

// Keeps `keep` (intersected with what the thread has) and drops every other capability from
// the permitted, effective, inheritable, ambient and bounding sets, then sets no_new_privs, so no
// later execve regains any. Refused (FailedPrecondition) while the process has more than one
// thread. The bounding set can only shrink with CAP_SETPCAP: without it (a container granting
// only `keep`, whose bounding set is already that) the bounding set is left as it is, which
// no_new_privs and an empty inheritable set make powerless beyond the permitted set.
absl::Status DropAllExcept(CapMask keep);

// Threads of the calling process (/proc/self/status).
absl::StatusOr<int> ThreadCount();

}  // namespace ambit::caps
