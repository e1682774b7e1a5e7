#pragma once

// The network namespaces ambit must never enroll as a pod: its own and the host's (PID 1's).
// Enrolling one would point the BPF programs and listeners at the node itself: every connection
// of the node, the agent's own included, would be steered into the tunnel or dropped. A pod's
// ambit.dev/netns annotation is untrusted input and may name such a namespace under any path
// (/proc/1/ns/net, /proc/<agent pid>/ns/net, a /var/run/netns bind mount of either), so the check
// compares namespace identities (st_dev and st_ino of the nsfs file), never paths.
// Thread-safety: immutable after construction; Check is thread-safe.

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ambit::enroll {

struct NetnsIdentity {
  dev_t dev = 0;
  ino_t ino = 0;
  std::string what;  // "the host's network namespace (that of PID 1)"

  friend bool operator==(const NetnsIdentity& a, const NetnsIdentity& b) {
    return a.dev == b.dev && a.ino == b.ino;
  }
};

// The identity of the namespace file behind fd (fstat).
absl::StatusOr<NetnsIdentity> IdentifyNetns(int fd);

class NodeNetnsGuard {
 public:
  // The namespaces of this process (/proc/self/ns/net) and of PID 1 (/proc/1/ns/net). Fails when
  // its own cannot be identified. PID 1's may be closed even to root (a non-dumpable init, a
  // sandbox without ptrace rights over it): then the guard holds only its own and says why in
  // unchecked(). No pod can name PID 1's namespace by /proc/1/ns/net then either (opening it fails
  // the same way), and in a DaemonSet ambitd's own namespace is the host's.
  static absl::StatusOr<NodeNetnsGuard> ForThisProcess();

  explicit NodeNetnsGuard(std::vector<NetnsIdentity> forbidden, std::string unchecked = "")
      : forbidden_(std::move(forbidden)), unchecked_(std::move(unchecked)) {}

  // Empty, or what could not be identified and why.
  const std::string& unchecked() const { return unchecked_; }

  // OK when netns_fd is none of the forbidden namespaces; otherwise PermissionDenied saying which
  // one it is (both, when the agent runs in the host's namespace).
  absl::Status Check(int netns_fd) const;
  // The same for a namespace already identified.
  absl::Status Check(const NetnsIdentity& id) const;

 private:
  std::vector<NetnsIdentity> forbidden_;
  std::string unchecked_;
};

}  // namespace ambit::enroll
