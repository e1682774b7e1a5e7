#include "agent/tunnel/original_dst.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <vector>

#include "abi/redirect.h"
#include "agent/common/socket_util.h"
#include "agent/common/unique_fd.h"

namespace ambit::tunnel {
namespace {

SocketAddress A(const char* text) {
  auto a = SocketAddress::Parse(text);
  EXPECT_TRUE(a.ok()) << text;
  return *a;
}

bool Reserved(uint16_t port) {
  return port == AMBIT_OUTBOUND_PORT || port == AMBIT_INBOUND_PLAIN_PORT ||
         port == AMBIT_HBONE_PORT || port == 15020;
}

// (local, NAT original destination, expected destination or "" for refused, from NAT)
struct InboundRow {
  const char* local;
  const char* nat;  // nullptr: no conntrack entry
  const char* want;
  bool from_nat;
};

TEST(OriginalDstTest, InboundDestinationTable) {
  const InboundRow rows[] = {
      // sk_lookup steered it: the socket's own destination, whatever conntrack says.
      {"198.18.0.2:8080", nullptr, "198.18.0.2:8080", false},
      {"198.18.0.2:8080", "198.18.0.2:8080", "198.18.0.2:8080", false},
      {"[2001:2::2]:9000", nullptr, "[2001:2::2]:9000", false},
      // istio-cni REDIRECTed <pod>:8080 to 15006.
      {"198.18.0.2:15006", "198.18.0.2:8080", "198.18.0.2:8080", true},
      {"[2001:2::2]:15006", "[2001:2::2]:8080", "[2001:2::2]:8080", true},
      // The pod has two addresses; REDIRECT picks the interface's first.
      {"198.18.0.2:15006", "198.18.0.3:80", "198.18.0.3:80", true},
      // Dialled to 15006 itself: no NAT, or NAT that changed nothing.
      {"198.18.0.2:15006", nullptr, "", false},
      {"198.18.0.2:15006", "198.18.0.2:15006", "", false},
      {"198.18.0.2:15006", "198.18.0.3:15006", "", false},
  };
  for (const auto& row : rows) {
    SCOPED_TRACE(std::string(row.local) + " nat=" + (row.nat ? row.nat : "none"));
    std::optional<SocketAddress> nat;
    if (row.nat != nullptr) nat = A(row.nat);
    auto got = DecideInboundDestination(A(row.local), nat);
    if (*row.want == '\0') {
      ASSERT_FALSE(got.ok());
      EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition);
      continue;
    }
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->address, A(row.want));
    EXPECT_EQ(got->from_nat, row.from_nat);
  }
}

struct OutboundRow {
  const char* nat;   // nullptr: no conntrack entry
  const char* want;  // "": refused
  absl::StatusCode code = absl::StatusCode::kOk;
};

TEST(OriginalDstTest, OutboundNatDestinationTable) {
  const std::vector<IpAddress> pod_ips = {*IpAddress::Parse("198.18.0.2"),
                                          *IpAddress::Parse("2001:2::2")};
  const SocketAddress local = A("127.0.0.1:15001");
  const OutboundRow rows[] = {
      {"198.18.0.3:8080", "198.18.0.3:8080"},
      {"[2001:2::3]:443", "[2001:2::3]:443"},
      // A peer's HBONE port is a destination like any other.
      {"198.18.0.3:15008", "198.18.0.3:15008"},
      // The pod's own application port (a pod dialling itself by its address).
      {"198.18.0.2:8080", "198.18.0.2:8080"},
      {nullptr, "", absl::StatusCode::kNotFound},
      // Never back to one of this pod's listeners.
      {"127.0.0.1:15001", "", absl::StatusCode::kFailedPrecondition},
      {"198.18.0.3:15001", "", absl::StatusCode::kFailedPrecondition},
      {"127.0.0.1:8080", "", absl::StatusCode::kFailedPrecondition},
      {"[::1]:8080", "", absl::StatusCode::kFailedPrecondition},
      {"198.18.0.2:15006", "", absl::StatusCode::kFailedPrecondition},
      {"198.18.0.2:15008", "", absl::StatusCode::kFailedPrecondition},
      {"[2001:2::2]:15020", "", absl::StatusCode::kFailedPrecondition},
  };
  for (const auto& row : rows) {
    SCOPED_TRACE(row.nat ? row.nat : "none");
    std::optional<SocketAddress> nat;
    if (row.nat != nullptr) nat = A(row.nat);
    auto got = DecideOutboundNatDestination(local, nat, pod_ips, Reserved);
    if (*row.want == '\0') {
      ASSERT_FALSE(got.ok());
      EXPECT_EQ(got.status().code(), row.code) << got.status();
      continue;
    }
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, A(row.want));
  }
}

// The kernel call on a connection nothing NATed: either no conntrack entry (nullopt) or the
// connection's own destination; never an error.
TEST(OriginalDstTest, UnNattedConnectionHasNoOtherOriginalDestination) {
  UniqueFd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(listener.valid());
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
  ASSERT_EQ(listen(listener.get(), 1), 0);
  socklen_t len = sizeof sin;
  ASSERT_EQ(getsockname(listener.get(), reinterpret_cast<sockaddr*>(&sin), &len), 0);
  UniqueFd client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(connect(client.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
  UniqueFd accepted(accept(listener.get(), nullptr, nullptr));
  ASSERT_TRUE(accepted.valid());
  auto orig = NatOriginalDestination(accepted.get());
  ASSERT_TRUE(orig.ok()) << orig.status();
  if (orig->has_value()) {
    EXPECT_EQ(**orig, *LocalAddress(accepted.get()));
  }
}

}  // namespace
}  // namespace ambit::tunnel
