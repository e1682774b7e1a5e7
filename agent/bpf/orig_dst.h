#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "agent/common/ip_address.h"

namespace ambit::bpf {

// Reads (and deletes) the original destination the sockops program recorded for a redirected
// connection, keyed by {netns cookie, client address}. Used by the data plane.
struct OriginalDestination {
  SocketAddress address;
  int family = 0;  // the application's socket family
};
absl::StatusOr<OriginalDestination> TakeOriginalDestination(int map_fd, uint64_t netns_cookie,
                                                            const SocketAddress& client);

}  // namespace ambit::bpf
