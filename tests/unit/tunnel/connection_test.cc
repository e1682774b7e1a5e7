#include "agent/tunnel/connection.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::tunnel {
namespace {

namespace pb = ::ambit::dataplane::v1;

SocketAddress Addr(const std::string& ip, uint16_t port) {
  auto parsed = IpAddress::Parse(ip);
  EXPECT_TRUE(parsed.ok()) << ip;
  return SocketAddress{*parsed, port};
}

struct Row {
  std::string what;
  SocketAddress dst;
  bool delivered;
};

// Where inbound traffic may go: the pod's own addresses, never one of ambit's own ports (a
// delivery to <pod ip>:15006 would be accepted by the data plane again, without end).
TEST(CheckDeliveryTargetTest, OwnAddressesOnlyAndNeverAmbitPorts) {
  pb::Snapshot proto;
  proto.set_version(1);
  proto.add_reserved_ports(15020);  // the agent's metrics and readiness ports
  proto.add_reserved_ports(15021);
  auto mapped = MeshSnapshot::FromProto(proto);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  std::shared_ptr<const MeshSnapshot> snapshot = *mapped;
  Pod pod;
  pod.uid = "backend/api";
  pod.workload.ips = {Addr("198.18.0.5", 0).ip, Addr("2001:2::5", 0).ip};
  std::vector<Row> rows = {
      {"app port", Addr("198.18.0.5", 8080), true},
      {"app port v6", Addr("2001:2::5", 8080), true},
      {"port 15007", Addr("198.18.0.5", 15007), true},
      {"outbound listener", Addr("198.18.0.5", 15001), false},
      {"plaintext-inbound listener", Addr("198.18.0.5", 15006), false},
      {"plaintext-inbound listener v6", Addr("2001:2::5", 15006), false},
      {"HBONE listener", Addr("198.18.0.5", 15008), false},
      {"HBONE listener v6", Addr("2001:2::5", 15008), false},
      {"metrics", Addr("198.18.0.5", 15020), false},
      {"readiness v6", Addr("2001:2::5", 15021), false},
      {"loopback", Addr("127.0.0.1", 8080), false},
      {"loopback v6", Addr("::1", 8080), false},
      {"another pod", Addr("198.18.0.6", 8080), false},
      {"unspecified", Addr("0.0.0.0", 8080), false},
  };
  for (const auto& r : rows) {
    absl::Status status = CheckDeliveryTarget(*snapshot, pod, r.dst);
    EXPECT_EQ(status.ok(), r.delivered) << r.what << ": " << status;
    if (!r.delivered) {
      EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << r.what;
      EXPECT_EQ(status.message().rfind("refused: ", 0), 0u) << r.what << ": " << status;
    }
  }
}

}  // namespace
}  // namespace ambit::tunnel
