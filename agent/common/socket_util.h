#pragma once

#include "absl/status/statusor.h"
#include "agent/common/ip_address.h"
#include "agent/common/unique_fd.h"

namespace ambit {

// getpeername / getsockname of a connected socket, as a SocketAddress.
absl::StatusOr<SocketAddress> PeerAddress(int fd);
absl::StatusOr<SocketAddress> LocalAddress(int fd);

// Closes with RST instead of FIN: the peer learns the connection failed, not that it ended.
void CloseWithReset(UniqueFd& fd);

}  // namespace ambit
