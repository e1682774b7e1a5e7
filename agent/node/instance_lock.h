#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "agent/common/unique_fd.h"

namespace ambit::node {

// The one-agent-per-instance guarantee. Everything an instance owns in the kernel (pins under
// <bpffs>/ambit/<instance>, the cgroup links, pod sk_lookup links) is shared by every ambitd
// started with that --instance, whatever its --run-dir: a second agent that went ahead would
// re-open the first one's links and remove its enrollments. So ambitd, and `ambitd --cleanup`,
// hold an exclusive flock on a file keyed by the instance name alone before touching any of it.
//
// The file holds the holder's PID so that a refusal can name it. The lock belongs to the open
// file description (close-on-exec, so the data plane never inherits it), and the kernel drops it
// when the holder exits however it exits: a stale PID in the file means nothing.
// Not thread-safe; owned by ambitd's control thread.
class InstanceLock {
 public:
  // /run/lock/ambit/<instance>.lock: outside every run directory (--cleanup removes those) and
  // outside bpffs (which holds no regular files).
  static std::string PathFor(const std::string& instance);

  // Takes the lock without waiting. FailedPrecondition naming the holder's PID when another
  // process has it; InvalidArgument for an instance name that cannot be a file name.
  static absl::StatusOr<InstanceLock> Acquire(const std::string& instance);
  // Holds the lock through a descriptor of it that its previous holder handed over (ambitd
  // --take-over): the flock belongs to the open file description, so whoever shares it holds
  // the lock. Checked to be the instance's lock file and locked; the file then names this PID.
  static absl::StatusOr<InstanceLock> Adopt(const std::string& instance, UniqueFd fd);

  InstanceLock(InstanceLock&&) = default;
  InstanceLock& operator=(InstanceLock&&) = default;

  const std::string& path() const { return path_; }
  // The descriptor holding the lock, for handing it to the next agent (ambitd --take-over).
  int fd() const { return fd_.get(); }
  // Releases the lock and removes its file (the instance is gone: --cleanup).
  void Remove();

 private:
  InstanceLock(std::string path, UniqueFd fd) : path_(std::move(path)), fd_(std::move(fd)) {}
  std::string path_;
  UniqueFd fd_;
};

}  // namespace ambit::node
