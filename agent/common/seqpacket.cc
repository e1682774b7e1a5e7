#include "agent/common/seqpacket.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ambit {

namespace {

// 0 when sent, else the errno of sendmsg (EAGAIN: `flags` has MSG_DONTWAIT and the send buffer
// is full; nothing was sent).
int SendPacketWithFlags(int sock, const std::string& data, const std::vector<int>& fds, int flags) {
  iovec iov{const_cast<char*>(data.data()), data.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (!fds.empty()) {
    control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  while (true) {
    ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL | flags);
    if (n >= 0) return 0;
    if (errno == EINTR) continue;
    return errno;
  }
}

absl::Status CheckPacketSize(const std::string& data, const std::vector<int>& fds) {
  if (data.size() > kMaxPacketBytes || fds.size() > kMaxPacketFds) {
    return absl::InvalidArgumentError(
        absl::StrCat("control message too large: ", data.size(), " bytes, ", fds.size(), " fds"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SendPacket(int sock, const std::string& data, const std::vector<int>& fds) {
  if (absl::Status s = CheckPacketSize(data, fds); !s.ok()) return s;
  if (int err = SendPacketWithFlags(sock, data, fds, 0); err != 0) {
    return absl::ErrnoToStatus(err, "sendmsg on control channel");
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> TrySendPacket(int sock, const std::string& data, const std::vector<int>& fds) {
  if (absl::Status s = CheckPacketSize(data, fds); !s.ok()) return s;
  int err = SendPacketWithFlags(sock, data, fds, MSG_DONTWAIT);
  if (err == 0) return true;
  if (err == EAGAIN || err == EWOULDBLOCK) return false;
  return absl::ErrnoToStatus(err, "sendmsg on control channel");
}

absl::StatusOr<Packet> ReceivePacket(int sock) {
  Packet packet;
  // The next packet's length first (MSG_PEEK | MSG_TRUNC reports a datagram's full length), so
  // a small message takes a small buffer: a fixed kMaxPacketBytes buffer was zero-filled for
  // every message and, once freed, kept 4 MiB of heap resident in each process.
  char probe;
  ssize_t length;
  do {
    length = recv(sock, &probe, 1, MSG_PEEK | MSG_TRUNC);
  } while (length < 0 && errno == EINTR);
  if (length < 0) return absl::ErrnoToStatus(errno, "recv on control channel");
  // One byte more than the limit lets recvmsg flag an oversized packet as truncated.
  packet.data.resize(std::clamp<size_t>(static_cast<size_t>(length), 1, kMaxPacketBytes + 1));
  std::vector<char> control(CMSG_SPACE(sizeof(int) * (kMaxPacketFds + 3)));
  iovec iov{packet.data.data(), packet.data.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  ssize_t n;
  do {
    n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return absl::ErrnoToStatus(errno, "recvmsg on control channel");
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      packet.fds.emplace_back(fd);
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    return absl::ResourceExhaustedError("control message carried more fds than allowed");
  }
  if (msg.msg_flags & MSG_TRUNC) return absl::DataLossError("control message truncated");
  if (n == 0 && packet.fds.empty()) return absl::UnavailableError("control channel closed by peer");
  packet.data.resize(n);
  return packet;
}

absl::StatusOr<std::pair<UniqueFd, UniqueFd>> SeqpacketPair() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
    return absl::ErrnoToStatus(errno, "socketpair(SOCK_SEQPACKET)");
  }
  return std::make_pair(UniqueFd(sv[0]), UniqueFd(sv[1]));
}

}  // namespace ambit
