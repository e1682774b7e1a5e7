#include "agent/common/ip_address.h"

#include <arpa/inet.h>

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ambit {
namespace {
constexpr uint8_t kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
}

absl::StatusOr<IpAddress> IpAddress::Parse(absl::string_view text) {
  std::string s(text);
  in_addr a4;
  if (inet_pton(AF_INET, s.c_str(), &a4) == 1) return FromV4(a4);
  in6_addr a6;
  if (inet_pton(AF_INET6, s.c_str(), &a6) == 1) return FromV6(a6);
  return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not an IPv4 or IPv6 address"));
}

IpAddress IpAddress::FromV4(const in_addr& a) {
  IpAddress ip;
  std::memcpy(ip.bytes_.data(), kMappedPrefix, 12);
  std::memcpy(ip.bytes_.data() + 12, &a, 4);
  return ip;
}

IpAddress IpAddress::FromV6(const in6_addr& a) {
  IpAddress ip;
  std::memcpy(ip.bytes_.data(), &a, 16);
  return ip;
}

IpAddress IpAddress::FromBytes(const uint8_t bytes[16]) {
  IpAddress ip;
  std::memcpy(ip.bytes_.data(), bytes, 16);
  return ip;
}

bool IpAddress::is_v4() const { return std::memcmp(bytes_.data(), kMappedPrefix, 12) == 0; }

bool IpAddress::is_loopback() const {
  if (is_v4()) return bytes_[12] == 127;
  static constexpr std::array<uint8_t, 16> kLoop = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  return bytes_ == kLoop;
}

in_addr IpAddress::v4() const {
  in_addr a;
  std::memcpy(&a, bytes_.data() + 12, 4);
  return a;
}

in6_addr IpAddress::v6() const {
  in6_addr a;
  std::memcpy(&a, bytes_.data(), 16);
  return a;
}

std::string IpAddress::ToString() const {
  char buf[INET6_ADDRSTRLEN];
  if (is_v4()) {
    in_addr a = v4();
    inet_ntop(AF_INET, &a, buf, sizeof buf);
  } else {
    in6_addr a = v6();
    inet_ntop(AF_INET6, &a, buf, sizeof buf);
  }
  return buf;
}

socklen_t SocketAddress::ToSockaddr(sockaddr_storage* storage) const {
  std::memset(storage, 0, sizeof *storage);
  if (ip.is_v4()) {
    auto* sin = reinterpret_cast<sockaddr_in*>(storage);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    sin->sin_addr = ip.v4();
    return sizeof *sin;
  }
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(storage);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(port);
  sin6->sin6_addr = ip.v6();
  return sizeof *sin6;
}

absl::StatusOr<SocketAddress> SocketAddress::FromSockaddr(const sockaddr* sa, socklen_t len) {
  if (sa->sa_family == AF_INET && len >= sizeof(sockaddr_in)) {
    auto* sin = reinterpret_cast<const sockaddr_in*>(sa);
    return SocketAddress{IpAddress::FromV4(sin->sin_addr), ntohs(sin->sin_port)};
  }
  if (sa->sa_family == AF_INET6 && len >= sizeof(sockaddr_in6)) {
    auto* sin6 = reinterpret_cast<const sockaddr_in6*>(sa);
    return SocketAddress{IpAddress::FromV6(sin6->sin6_addr), ntohs(sin6->sin6_port)};
  }
  return absl::InvalidArgumentError(absl::StrCat("unsupported address family ", sa->sa_family));
}

std::string SocketAddress::ToString() const {
  if (ip.is_v4()) return absl::StrCat(ip.ToString(), ":", port);
  return absl::StrCat("[", ip.ToString(), "]:", port);
}

absl::StatusOr<SocketAddress> SocketAddress::Parse(absl::string_view text) {
  absl::string_view host, port_text;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == absl::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not [ipv6]:port"));
    }
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("'", text, "' has no port"));
    }
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
  }
  int port;
  if (!absl::SimpleAtoi(port_text, &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' has an invalid port"));
  }
  auto ip = IpAddress::Parse(host);
  if (!ip.ok()) return ip.status();
  return SocketAddress{*ip, static_cast<uint16_t>(port)};
}

absl::StatusOr<Cidr> Cidr::Parse(absl::string_view text) {
  size_t slash = text.find('/');
  auto ip = IpAddress::Parse(text.substr(0, slash));
  if (!ip.ok()) return ip.status();
  int max = ip->is_v4() ? 32 : 128;
  int len = max;
  if (slash != absl::string_view::npos &&
      (!absl::SimpleAtoi(text.substr(slash + 1), &len) || len < 0 || len > max)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' has an invalid prefix length (0..", max, ")"));
  }
  Cidr c{*ip, ip->is_v4() ? len + 96 : len};
  return c;
}

bool Cidr::Contains(const IpAddress& a) const {
  if (a.is_v4() != base.is_v4()) return false;
  const auto& x = a.bytes();
  const auto& y = base.bytes();
  int bits = prefix_len;
  for (int i = 0; i < 16 && bits > 0; ++i, bits -= 8) {
    uint8_t mask = bits >= 8 ? 0xff : static_cast<uint8_t>(0xff << (8 - bits));
    if ((x[i] & mask) != (y[i] & mask)) return false;
  }
  return true;
}

std::string Cidr::ToString() const {
  return absl::StrCat(base.ToString(), "/", base.is_v4() ? prefix_len - 96 : prefix_len);
}

}  // namespace ambit
