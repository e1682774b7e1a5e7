#include "agent/common/socket_util.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"

namespace ambit {

absl::StatusOr<SocketAddress> PeerAddress(int fd) {
  sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) {
    return absl::ErrnoToStatus(errno, "getpeername");
  }
  return SocketAddress::FromSockaddr(reinterpret_cast<sockaddr*>(&ss), len);
}

absl::StatusOr<SocketAddress> LocalAddress(int fd) {
  sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) {
    return absl::ErrnoToStatus(errno, "getsockname");
  }
  return SocketAddress::FromSockaddr(reinterpret_cast<sockaddr*>(&ss), len);
}

void CloseWithReset(UniqueFd& fd) {
  if (!fd) return;
  linger lg{1, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  fd.Reset();
}

namespace {

absl::StatusOr<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  if (path.size() >= sizeof sun.sun_path) {
    return absl::InvalidArgumentError(absl::StrCat("unix socket path too long: ", path));
  }
  strcpy(sun.sun_path, path.c_str());
  return sun;
}

}  // namespace

absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path, int type) {
  auto sun = UnixAddress(path);
  if (!sun.ok()) return sun.status();
  UniqueFd fd(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!fd) return absl::ErrnoToStatus(errno, "socket(AF_UNIX)");
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&*sun), sizeof *sun) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("connect ", path));
  }
  return fd;
}

absl::StatusOr<UniqueFd> ListenUnix(const std::string& path, int type) {
  auto sun = UnixAddress(path);
  if (!sun.ok()) return sun.status();
  UniqueFd fd(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!fd) return absl::ErrnoToStatus(errno, "socket(AF_UNIX)");
  unlink(path.c_str());
  mode_t old = umask(0077);
  int rc = bind(fd.get(), reinterpret_cast<const sockaddr*>(&*sun), sizeof *sun);
  umask(old);
  if (rc < 0) return absl::ErrnoToStatus(errno, absl::StrCat("bind ", path));
  if (listen(fd.get(), 4) < 0) return absl::ErrnoToStatus(errno, absl::StrCat("listen ", path));
  return fd;
}

}  // namespace ambit
