#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/common/unique_fd.h"

namespace ambit {

// One SOCK_SEQPACKET message: bytes plus the file descriptors that rode with it in SCM_RIGHTS.
struct Packet {
  std::string data;
  std::vector<UniqueFd> fds;
};

// Largest message and fd count one packet may carry. The kernel allows at most 253 fds per
// SCM_RIGHTS message (SCM_MAX_FD); senders split larger sets across messages.
inline constexpr size_t kMaxPacketBytes = 4 << 20;
inline constexpr size_t kMaxPacketFds = 250;

// Sends one packet; fds are duplicated by the kernel, the caller keeps its own. Blocking
// sockets only. Thread-compatible.
absl::Status SendPacket(int sock, const std::string& data, const std::vector<int>& fds);

// Sends one packet without waiting (MSG_DONTWAIT, on a blocking socket too): false when the
// socket's send buffer is full and nothing was sent, so the caller can keep the packet and try
// again once the socket is writable. The packet goes whole or not at all (SOCK_SEQPACKET).
absl::StatusOr<bool> TrySendPacket(int sock, const std::string& data, const std::vector<int>& fds);

// Receives one packet. kUnavailable on orderly close by the peer; kResourceExhausted and
// kDataLoss for truncated data or descriptors (received fds are closed, nothing leaks).
absl::StatusOr<Packet> ReceivePacket(int sock);

// A connected SOCK_SEQPACKET pair, CLOEXEC.
absl::StatusOr<std::pair<UniqueFd, UniqueFd>> SeqpacketPair();

}  // namespace ambit
