#include "agent/config/directory_watcher.h"

#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "agent/config/directory_loader.h"

namespace ambit::config {
namespace {

constexpr uint32_t kWatchMask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE |
                                IN_CREATE | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;

// Kubernetes mounts a ConfigMap as symlinks through `..data`, which it swaps atomically.
constexpr std::string_view kConfigMapDataLink = "..data";

}  // namespace

absl::StatusOr<std::unique_ptr<DirectoryWatcher>> DirectoryWatcher::Create(const std::string& dir) {
  UniqueFd fd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!fd) return absl::ErrnoToStatus(errno, "inotify_init1 for the config directory watcher");
  if (::inotify_add_watch(fd.get(), dir.c_str(), kWatchMask) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("inotify_add_watch on config directory ", dir));
  }
  return std::unique_ptr<DirectoryWatcher>(new DirectoryWatcher(std::move(fd)));
}

bool DirectoryWatcher::Drain() {
  bool relevant = false;
  alignas(inotify_event) char buf[8192];
  while (true) {
    ssize_t n = ::read(fd_.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      return true;  // cannot tell what happened: let the owner reload
    }
    if (n == 0) break;
    for (ssize_t off = 0; off + static_cast<ssize_t>(sizeof(inotify_event)) <= n;) {
      inotify_event ev;
      std::memcpy(&ev, buf + off, sizeof ev);
      const char* name = buf + off + sizeof(inotify_event);
      off += sizeof(inotify_event) + ev.len;
      if (ev.mask & (IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_UNMOUNT)) {
        relevant = true;
        continue;
      }
      if (ev.len == 0) continue;
      std::string_view file(name, strnlen(name, ev.len));
      if (IsConfigFileName(file) || file == kConfigMapDataLink) relevant = true;
    }
  }
  return relevant;
}

}  // namespace ambit::config
