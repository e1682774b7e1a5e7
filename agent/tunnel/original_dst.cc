#include "agent/tunnel/original_dst.h"

#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "abi/redirect.h"
#include "absl/strings/str_cat.h"

// <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h> define these, but pull in
// kernel headers that clash with glibc's; the values are kernel ABI.
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

namespace ambit::tunnel {

absl::StatusOr<std::optional<SocketAddress>> NatOriginalDestination(int fd) {
  sockaddr_storage local{};
  socklen_t len = sizeof local;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) < 0) {
    return absl::ErrnoToStatus(errno, "getsockname before SO_ORIGINAL_DST");
  }
  sockaddr_storage orig{};
  len = sizeof orig;
  int rc;
  if (local.ss_family == AF_INET6) {
    len = sizeof(sockaddr_in6);
    rc = getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &orig, &len);
  } else {
    len = sizeof(sockaddr_in);
    rc = getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &orig, &len);
  }
  if (rc < 0) {
    // ENOENT: no conntrack entry for this connection (no NAT happened to it).
    if (errno == ENOENT) return std::nullopt;
    return absl::ErrnoToStatus(errno, "SO_ORIGINAL_DST");
  }
  auto address = SocketAddress::FromSockaddr(reinterpret_cast<sockaddr*>(&orig), len);
  if (!address.ok()) return address.status();
  return std::optional<SocketAddress>(*address);
}

absl::StatusOr<InboundDestination> DecideInboundDestination(
    const SocketAddress& local, const std::optional<SocketAddress>& nat_original) {
  if (local.port != AMBIT_INBOUND_PLAIN_PORT) return InboundDestination{local, false};
  // Worded as CheckDeliveryTarget words any of ambit's ports, with why this one is final.
  if (!nat_original.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat("refused: port ", local.port,
                     " is one of ambit's own listeners, never a delivery target (dialled "
                     "itself: no NAT original destination)"));
  }
  if (nat_original->port == AMBIT_INBOUND_PLAIN_PORT) {
    return absl::FailedPreconditionError(
        absl::StrCat("refused: port ", local.port,
                     " is one of ambit's own listeners, never a delivery target (its NAT original "
                     "destination ",
                     nat_original->ToString(), " is that port too; delivering it would loop)"));
  }
  return InboundDestination{*nat_original, true};
}

absl::StatusOr<SocketAddress> DecideOutboundNatDestination(
    const SocketAddress& local, const std::optional<SocketAddress>& nat_original,
    std::span<const IpAddress> pod_ips, absl::FunctionRef<bool(uint16_t)> reserved_port) {
  if (!nat_original.has_value()) {
    return absl::NotFoundError(
        "no original destination (no ambit_orig_dst entry and no NAT original destination)");
  }
  const SocketAddress& orig = *nat_original;
  if (orig == local || orig.port == local.port) {
    return absl::FailedPreconditionError(
        absl::StrCat("refused: NAT original destination ", orig.ToString(),
                     " is the outbound listener itself; sending it there would loop"));
  }
  if (orig.ip.is_loopback()) {
    return absl::FailedPreconditionError(
        absl::StrCat("refused: NAT original destination ", orig.ToString(),
                     " is a loopback address, which only the pod itself serves (not redirected)"));
  }
  if (reserved_port(orig.port)) {
    for (const IpAddress& ip : pod_ips) {
      if (ip == orig.ip) {
        return absl::FailedPreconditionError(absl::StrCat(
            "refused: NAT original destination ", orig.ToString(),
            " is one of ambit's own ports on the pod's own address; sending it there would "
            "loop"));
      }
    }
  }
  return orig;
}

}  // namespace ambit::tunnel
