#pragma once

// Where a connection accepted on one of the pod's listeners was going, when netfilter NAT (not
// ambit's BPF) brought it there: istio-cni's in-pod rules REDIRECT inbound TCP to 15006 and
// outbound TCP to 15001 (docs/ARCHITECTURE.md#istio-cni-rules). The decisions are pure; only
// NatOriginalDestination asks the kernel.
//
// Thread-safety: free functions without shared state.

#include <optional>
#include <span>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "agent/common/ip_address.h"

namespace ambit::tunnel {

// The destination conntrack recorded before NAT for the TCP socket `fd` (SO_ORIGINAL_DST, or
// IP6T_SO_ORIGINAL_DST on an IPv6 socket); nullopt when the connection has no conntrack entry
// (no netfilter NAT in the namespace, or one never tracked). Without NAT it is the socket's
// own local address.
absl::StatusOr<std::optional<SocketAddress>> NatOriginalDestination(int fd);

// Where a connection accepted by the plaintext-inbound listener goes. sk_lookup hands the
// listener connections with their destination untouched (`local` is any port but 15006); a
// connection with `local` on 15006 was REDIRECTed there by netfilter, and its destination is
// `nat_original`. One that really was dialled to 15006 (`nat_original` absent, or 15006
// itself) is refused: the plaintext listener is no delivery target, and following it would
// loop. The caller still checks the answer is one of the pod's addresses and no ambit port.
struct InboundDestination {
  SocketAddress address;
  bool from_nat = false;  // taken from SO_ORIGINAL_DST
};
absl::StatusOr<InboundDestination> DecideInboundDestination(
    const SocketAddress& local, const std::optional<SocketAddress>& nat_original);

// The destination of a connection accepted by the outbound listener that has no
// ambit_orig_dst entry (BPF did not redirect it, e.g. a socket outside the attach cgroup, or
// made before the pod was captured, that netfilter REDIRECTed to 15001). NotFound without a
// NAT original destination (nothing to go by: the connection is reset, as before); refused
// when the original destination is the listener itself, a loopback address, or one of ambit's
// own ports (`reserved_port`) on one of the pod's addresses: following any of those would
// bring the connection back to a listener of this pod.
absl::StatusOr<SocketAddress> DecideOutboundNatDestination(
    const SocketAddress& local, const std::optional<SocketAddress>& nat_original,
    std::span<const IpAddress> pod_ips, absl::FunctionRef<bool(uint16_t)> reserved_port);

}  // namespace ambit::tunnel
