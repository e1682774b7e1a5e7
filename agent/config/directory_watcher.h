#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "agent/common/unique_fd.h"

namespace ambit::config {

// Watches a config directory with inotify, so that in-place edits (close after write), atomic
// renames into place (`kubectl`, editors, Kubernetes' ConfigMap `..data` symlink swap), deletes
// and permission changes are all noticed. It does not say what changed: the owner reloads.
// Not thread-safe; one owner, typically an epoll loop.
class DirectoryWatcher {
 public:
  static absl::StatusOr<std::unique_ptr<DirectoryWatcher>> Create(const std::string& dir);

  // Readable when something may have changed. Non-blocking.
  int fd() const { return fd_.get(); }
  // Reads all pending events; true if any concerns a config file, or if events may have been
  // lost (queue overflow) or the directory itself was moved or deleted.
  bool Drain();

 private:
  explicit DirectoryWatcher(UniqueFd fd) : fd_(std::move(fd)) {}

  UniqueFd fd_;
};

}  // namespace ambit::config
