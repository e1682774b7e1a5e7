// The wire-accounting tc programs (bpf/progs/wire.bpf.c) run in the kernel through
// BPF_PROG_TEST_RUN on hand-built Ethernet frames: what counts as mTLS, as plaintext, and what is
// not counted, each family. The map is the object's own (nothing pinned), read with the agent's
// own reader (bpf::ReadWire).
//
// Needs root. Without it every test fails with a message; none skips (STYLE.md, Tests).
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <netinet/in.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "agent/bpf/skeleton.h"
#include "agent/bpf/wire.h"
#include "gtest/gtest.h"
#include "wire.skel.h"

AMBIT_BPF_SKELETON(ambit_wire)

namespace ambit::bpf {
namespace {

constexpr uint64_t kCookie = 4242;

void Put16(std::vector<uint8_t>& f, size_t at, uint16_t v) {
  f[at] = v >> 8;
  f[at + 1] = v & 0xff;
}

// An Ethernet frame with an IPv4 header, then `l4` and `payload` bytes.
std::vector<uint8_t> V4(const char* src, const char* dst, uint8_t proto,
                        const std::vector<uint8_t>& l4, size_t payload) {
  std::vector<uint8_t> f(14 + 20 + l4.size() + payload, 0);
  Put16(f, 12, ETH_P_IP);
  f[14] = 0x45;
  Put16(f, 16, static_cast<uint16_t>(20 + l4.size() + payload));
  f[22] = 64;
  f[23] = proto;
  inet_pton(AF_INET, src, &f[26]);
  inet_pton(AF_INET, dst, &f[30]);
  std::memcpy(&f[34], l4.data(), l4.size());
  return f;
}

std::vector<uint8_t> V6(const char* src, const char* dst, uint8_t next,
                        const std::vector<uint8_t>& rest, size_t payload) {
  std::vector<uint8_t> f(14 + 40 + rest.size() + payload, 0);
  Put16(f, 12, ETH_P_IPV6);
  f[14] = 0x60;
  Put16(f, 18, static_cast<uint16_t>(rest.size() + payload));
  f[20] = next;
  f[21] = 64;
  inet_pton(AF_INET6, src, &f[22]);
  inet_pton(AF_INET6, dst, &f[38]);
  std::memcpy(&f[54], rest.data(), rest.size());
  return f;
}

std::vector<uint8_t> Tcp(uint16_t sport, uint16_t dport, uint8_t flags) {
  std::vector<uint8_t> h(20, 0);
  h[0] = sport >> 8, h[1] = sport & 0xff, h[2] = dport >> 8, h[3] = dport & 0xff;
  h[12] = 5 << 4;
  h[13] = flags;
  return h;
}

std::vector<uint8_t> Udp(uint16_t sport, uint16_t dport) {
  std::vector<uint8_t> h(8, 0);
  h[0] = sport >> 8, h[1] = sport & 0xff, h[2] = dport >> 8, h[3] = dport & 0xff;
  return h;
}

class WireProgramTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto skel = Skeleton<ambit_wire>::Open();
    ASSERT_TRUE(skel.ok()) << skel.status() << " (run as root)";
    skel_.emplace(std::move(*skel));
    (*skel_)->rodata->pod_cookie = kCookie;
    ASSERT_TRUE(skel_->Load().ok()) << "load wire.bpf.o (run as root)";
  }

  int Run(bool egress, std::vector<uint8_t> frame) {
    bpf_program* prog =
        egress ? (*skel_)->progs.ambit_wire_egress : (*skel_)->progs.ambit_wire_ingress;
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame.data(),
                .data_size_in = static_cast<uint32_t>(frame.size()), .repeat = 1);
    EXPECT_EQ(bpf_prog_test_run_opts(bpf_program__fd(prog), &opts), 0) << strerror(errno);
    return static_cast<int>(opts.retval);
  }

  std::vector<WireEntry> Entries() {
    auto read = ReadWire(bpf_map__fd((*skel_)->maps.ambit_wire));
    EXPECT_TRUE(read.ok()) << read.status();
    return read.ok() ? *read : std::vector<WireEntry>{};
  }

  std::optional<Skeleton<ambit_wire>> skel_;
};

TEST_F(WireProgramTest, HboneOnEitherSideIsMtlsAndNeverChangesTheVerdict) {
  // The pod dials a peer's 15008 (egress SYN), and the peer answers (ingress SYN-ACK).
  EXPECT_EQ(Run(true, V4("198.18.0.2", "198.18.0.3", IPPROTO_TCP, Tcp(40000, 15008, 0x02), 0)),
            TC_ACT_UNSPEC);
  EXPECT_EQ(Run(false, V4("198.18.0.3", "198.18.0.2", IPPROTO_TCP, Tcp(15008, 40000, 0x12), 100)),
            TC_ACT_UNSPEC);
  auto e = Entries();
  ASSERT_EQ(e.size(), 2u);
  for (const WireEntry& w : e) {
    EXPECT_EQ(w.netns_cookie, kCookie);
    EXPECT_EQ(w.peer.ToString(), "198.18.0.3");
    EXPECT_TRUE(w.mtls);
    EXPECT_EQ(w.port, 15008);
    EXPECT_FALSE(w.local_port);
    EXPECT_EQ(w.proto, IPPROTO_TCP);
    EXPECT_EQ(w.packets, 1u);
    if (w.egress) {
      EXPECT_EQ(w.syns, 1u);  // a SYN without ACK is an attempt
      EXPECT_EQ(w.bytes, 40u);
      EXPECT_EQ(w.payload, 0u);
    } else {
      EXPECT_EQ(w.syns, 0u);  // SYN-ACK is not
      EXPECT_EQ(w.bytes, 140u);
      EXPECT_EQ(w.payload, 100u);
    }
  }
}

TEST_F(WireProgramTest, PlaintextKeysOnTheServicePortAndItsSide) {
  // A peer dials the pod's 8080 from an ephemeral port; the pod resets it.
  Run(false, V6("2001:2::9", "2001:2::2", IPPROTO_TCP, Tcp(51000, 8080, 0x02), 0));
  Run(true, V6("2001:2::2", "2001:2::9", IPPROTO_TCP, Tcp(8080, 51000, 0x14), 0));
  auto e = Entries();
  ASSERT_EQ(e.size(), 2u);
  for (const WireEntry& w : e) {
    EXPECT_FALSE(w.mtls);
    EXPECT_EQ(w.port, 8080);
    EXPECT_TRUE(w.local_port);
    EXPECT_EQ(w.peer.ToString(), "2001:2::9");
    EXPECT_EQ(w.resets, w.egress ? 1u : 0u);
    EXPECT_EQ(w.syns, w.egress ? 0u : 1u);
  }
}

TEST_F(WireProgramTest, UdpIsPlaintextIcmpIgmpAndMldAreNotCounted) {
  Run(true, V4("198.18.0.2", "198.18.0.53", IPPROTO_UDP, Udp(40000, 53), 30));
  Run(true, V4("198.18.0.2", "198.18.0.3", IPPROTO_ICMP, std::vector<uint8_t>(8, 0), 56));
  Run(true, V4("0.0.0.0", "224.0.0.22", IPPROTO_IGMP, std::vector<uint8_t>(8, 0), 0));
  Run(true, V6("2001:2::2", "ff02::1:ff00:3", IPPROTO_ICMPV6, std::vector<uint8_t>(24, 0), 0));
  // MLD: ICMPv6 behind a hop-by-hop header (next header 58, length 0: 8 bytes).
  std::vector<uint8_t> hop = {IPPROTO_ICMPV6, 0, 5, 2, 0, 0, 1, 0};
  hop.resize(8 + 20, 0);
  Run(true, V6("fe80::1", "ff02::16", 0, hop, 0));
  auto e = Entries();
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0].proto, IPPROTO_UDP);
  EXPECT_EQ(e[0].port, 53);
  EXPECT_FALSE(e[0].local_port);
  EXPECT_FALSE(e[0].mtls);
  EXPECT_EQ(e[0].payload, 30u);
}

TEST_F(WireProgramTest, TruncatedAndNonIpFramesAreLeftAlone) {
  std::vector<uint8_t> arp(42, 0);
  arp[12] = 0x08, arp[13] = 0x06;
  EXPECT_EQ(Run(true, arp), TC_ACT_UNSPEC);
  std::vector<uint8_t> cut = V4("198.18.0.2", "198.18.0.3", IPPROTO_TCP, {}, 0);
  EXPECT_EQ(Run(true, cut), TC_ACT_UNSPEC);  // no TCP header to read
  EXPECT_TRUE(Entries().empty());
}

}  // namespace
}  // namespace ambit::bpf
