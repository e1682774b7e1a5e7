#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ambit {

// An IPv4 or IPv6 address. IPv4 is held as an IPv4-mapped IPv6 address (::ffff:a.b.c.d), the same
// form the BPF ABI uses, so one 16-byte compare serves both families. Value type.
class IpAddress {
 public:
  IpAddress() = default;
  static absl::StatusOr<IpAddress> Parse(absl::string_view text);
  static IpAddress FromV4(const in_addr& a);
  static IpAddress FromV6(const in6_addr& a);
  static IpAddress FromBytes(const uint8_t bytes[16]);

  bool is_v4() const;
  bool is_loopback() const;
  int family() const { return is_v4() ? AF_INET : AF_INET6; }
  const std::array<uint8_t, 16>& bytes() const { return bytes_; }
  in_addr v4() const;
  in6_addr v6() const;
  std::string ToString() const;

  friend bool operator==(const IpAddress&, const IpAddress&) = default;
  friend auto operator<=>(const IpAddress&, const IpAddress&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const IpAddress& a) {
    return H::combine(std::move(h), a.bytes_);
  }

 private:
  std::array<uint8_t, 16> bytes_{};
};

// An address and a TCP port.
struct SocketAddress {
  IpAddress ip;
  uint16_t port = 0;

  // Fills storage with a sockaddr_in (IPv4) or sockaddr_in6; returns its length.
  socklen_t ToSockaddr(sockaddr_storage* storage) const;
  static absl::StatusOr<SocketAddress> FromSockaddr(const sockaddr* sa, socklen_t len);
  // "198.18.0.1:80", "[2001:2::1]:80".
  std::string ToString() const;
  static absl::StatusOr<SocketAddress> Parse(absl::string_view text);

  friend bool operator==(const SocketAddress&, const SocketAddress&) = default;
  friend auto operator<=>(const SocketAddress&, const SocketAddress&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const SocketAddress& a) {
    return H::combine(std::move(h), a.ip, a.port);
  }
};

// An address range such as 198.18.0.0/15. IPv4 prefixes are stored in mapped form (+96).
struct Cidr {
  IpAddress base;
  int prefix_len = 0;  // in mapped form: 96..128 for IPv4
  static absl::StatusOr<Cidr> Parse(absl::string_view text);
  bool Contains(const IpAddress& a) const;
  std::string ToString() const;
};

}  // namespace ambit
