#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "agent/common/ip_address.h"
#include "agent/common/unique_fd.h"

namespace ambit {

// getpeername / getsockname of a connected socket, as a SocketAddress.
absl::StatusOr<SocketAddress> PeerAddress(int fd);
absl::StatusOr<SocketAddress> LocalAddress(int fd);

// Closes with RST instead of FIN: the peer learns the connection failed, not that it ended.
void CloseWithReset(UniqueFd& fd);

// A unix socket of `type` (SOCK_STREAM, SOCK_SEQPACKET) connected to `path`.
absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path, int type);
// A unix socket of `type` listening at `path`, root-only (created under umask 0077); a stale
// file there is replaced.
absl::StatusOr<UniqueFd> ListenUnix(const std::string& path, int type);

}  // namespace ambit
