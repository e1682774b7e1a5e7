#include "agent/tunnel/pod_sockets.h"

#include <sys/socket.h>

#include "agent/common/netns.h"

namespace ambit::tunnel {

const KernelPodSockets& KernelPodSockets::Get() {
  static const KernelPodSockets sockets;
  return sockets;
}

absl::StatusOr<UniqueFd> KernelPodSockets::SocketInNetns(int netns_fd, int host_netns_fd,
                                                         int domain, int type) const {
  return ::ambit::SocketInNetns(netns_fd, host_netns_fd, domain, type);
}

bool KernelPodSockets::Listening(int fd) const {
  int accepting = 0;
  socklen_t len = sizeof accepting;
  return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) == 0 && accepting != 0;
}

void KernelPodSockets::StopListening(int fd) const { shutdown(fd, SHUT_RDWR); }

}  // namespace ambit::tunnel
