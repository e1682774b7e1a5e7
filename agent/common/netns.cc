#include "agent/common/netns.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>

#include <thread>

#include "absl/strings/str_cat.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

namespace ambit {

absl::StatusOr<UniqueFd> OpenNetns(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return absl::ErrnoToStatus(errno, absl::StrCat("open network namespace ", path));
  return fd;
}

absl::Status RunInNetns(int netns_fd, absl::FunctionRef<absl::Status()> fn) {
  absl::Status status;
  std::thread worker([&] {
    if (setns(netns_fd, CLONE_NEWNET) < 0) {
      status = absl::ErrnoToStatus(errno, "setns into pod network namespace");
      return;
    }
    status = fn();
  });
  worker.join();
  return status;
}

absl::StatusOr<uint64_t> SocketNetnsCookie(int sock) {
  uint64_t cookie = 0;
  socklen_t len = sizeof cookie;
  if (getsockopt(sock, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) < 0) {
    return absl::ErrnoToStatus(errno, "getsockopt(SO_NETNS_COOKIE) (needs Linux 5.14+)");
  }
  return cookie;
}

absl::StatusOr<uint64_t> NetnsCookie(int netns_fd) {
  absl::StatusOr<uint64_t> cookie = absl::InternalError("unset");
  absl::Status status = RunInNetns(netns_fd, [&]() -> absl::Status {
    UniqueFd sock(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) return absl::ErrnoToStatus(errno, "socket in pod network namespace");
    cookie = SocketNetnsCookie(sock.get());
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return cookie;
}

absl::StatusOr<UniqueFd> SocketInNetns(int netns_fd, int host_netns_fd, int domain, int type) {
  if (setns(netns_fd, CLONE_NEWNET) < 0) {
    return absl::ErrnoToStatus(errno, "setns into pod network namespace");
  }
  UniqueFd sock(socket(domain, type | SOCK_CLOEXEC, 0));
  int saved = errno;
  if (setns(host_netns_fd, CLONE_NEWNET) < 0) {
    // A worker stranded in a pod's namespace would open every later socket there.
    return absl::ErrnoToStatus(errno, "setns back to the host network namespace");
  }
  if (!sock) return absl::ErrnoToStatus(saved, "socket in pod network namespace");
  return sock;
}

}  // namespace ambit
