#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "agent/common/ip_address.h"

namespace ambit::bpf {

// Maps the data plane uses (look-ups, and the short-lived delivery entries); it loads nothing.

// Reads (and deletes) the original destination the sockops program recorded for a redirected
// connection, keyed by {netns cookie, client address}. Used by the data plane.
struct OriginalDestination {
  SocketAddress address;
  int family = 0;  // the application's socket family
};
absl::StatusOr<OriginalDestination> TakeOriginalDestination(int map_fd, uint64_t netns_cookie,
                                                            const SocketAddress& client);

// True when the connection src -> dst (as the pod sees it) was opened by a socket of the node's
// network namespace to the pod, as sockops recorded it in ambit_probes: a kubelet probe. Takes
// the entry, so a tuple admits one connection. map_fd -1 (an agent without the map): false.
absl::StatusOr<bool> TakeKubeletProbe(int map_fd, const SocketAddress& src,
                                      const SocketAddress& dst);

// Lists a connection the data plane is about to open to an application inside a pod, so the
// pod's sk_lookup program lets its SYN through to the application instead of steering it back
// to ambit. Forget it as soon as the connect completes: a stale entry would let a later
// connection with the same addresses and ports skip ambit.
absl::Status AllowDelivery(int map_fd, const SocketAddress& src, const SocketAddress& dst);
void ForgetDelivery(int map_fd, const SocketAddress& src, const SocketAddress& dst);

}  // namespace ambit::bpf
