// The wire-accounting tc program (bpf/progs/wire.bpf.c) run by the kernel on packets built here
// (BPF_PROG_TEST_RUN): what it counts, under which key, and what it leaves alone. Needs root (it
// loads a BPF program); the map is the program's own, never pinned.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <gtest/gtest.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <tuple>
#include <vector>

#include "agent/bpf/skeleton.h"
#include "agent/bpf/wire.h"
#include "bpf/abi/wire.h"
#include "wire.skel.h"

AMBIT_BPF_SKELETON(ambit_wire)

namespace ambit::bpf {
namespace {

constexpr uint64_t kCookie = 0x1234;
constexpr uint8_t kTcpSyn = 0x02, kTcpAck = 0x10, kTcpPsh = 0x08, kTcpRst = 0x04;

struct Packet {
  std::vector<uint8_t> bytes;
  void Put(const void* p, size_t n) {
    auto* b = static_cast<const uint8_t*>(p);
    bytes.insert(bytes.end(), b, b + n);
  }
  void Put16(uint16_t v) {
    uint16_t n = htons(v);
    Put(&n, 2);
  }
};

void Ethernet(Packet* p, uint16_t type) {
  const uint8_t macs[12] = {2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2};
  p->Put(macs, sizeof macs);
  p->Put16(type);
}

// TCP header with 12 bytes of options (as Linux sends with timestamps), then the payload.
void Tcp(Packet* p, uint16_t sport, uint16_t dport, uint8_t flags, size_t payload) {
  p->Put16(sport);
  p->Put16(dport);
  const uint8_t seq_ack[8] = {};
  p->Put(seq_ack, sizeof seq_ack);
  const uint8_t off_flags[2] = {8 << 4, flags};
  p->Put(off_flags, 2);
  const uint8_t rest[6 + 12] = {0xff, 0xff};
  p->Put(rest, sizeof rest);
  p->bytes.insert(p->bytes.end(), payload, 'x');
}

Packet Ipv4(const char* src, const char* dst, uint8_t proto, size_t l4_len, uint16_t frag_off = 0) {
  Packet p;
  Ethernet(&p, ETH_P_IP);
  uint8_t ip[20] = {0x45, 0};
  const uint16_t total = htons(static_cast<uint16_t>(20 + l4_len));
  memcpy(ip + 2, &total, 2);
  const uint16_t frag = htons(frag_off);
  memcpy(ip + 6, &frag, 2);
  ip[8] = 64;
  ip[9] = proto;
  inet_pton(AF_INET, src, ip + 12);
  inet_pton(AF_INET, dst, ip + 16);
  p.Put(ip, sizeof ip);
  return p;
}

Packet Ipv6(const char* src, const char* dst, uint8_t next, size_t after_len) {
  Packet p;
  Ethernet(&p, ETH_P_IPV6);
  uint8_t ip[40] = {0x60};
  const uint16_t len = htons(static_cast<uint16_t>(after_len));
  memcpy(ip + 4, &len, 2);
  ip[6] = next;
  ip[7] = 64;
  inet_pton(AF_INET6, src, ip + 8);
  inet_pton(AF_INET6, dst, ip + 24);
  p.Put(ip, sizeof ip);
  return p;
}

using Key = std::tuple<std::string, uint16_t, uint8_t, uint8_t>;  // peer, port, proto, flags

class WireProgramTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_FAIL() << "needs root: the test loads the wire program";
    auto skel = Skeleton<ambit_wire>::Open();
    ASSERT_TRUE(skel.ok()) << skel.status();
    (*skel)->rodata->pod_cookie = kCookie;
    ASSERT_TRUE(skel->Load().ok());
    skel_.emplace(std::move(*skel));
  }

  // Runs one hook on the packet; gso_segs > 1 stands for a GSO super-packet of that many.
  void Run(bool egress, const Packet& p, uint32_t gso_segs = 0) {
    const int fd = bpf_program__fd(egress ? (*skel_)->progs.ambit_wire_egress
                                          : (*skel_)->progs.ambit_wire_ingress);
    __sk_buff ctx = {};
    ctx.gso_segs = gso_segs;
    if (gso_segs > 1) ctx.gso_size = 1000;
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = p.bytes.data(),
                .data_size_in = static_cast<uint32_t>(p.bytes.size()), .ctx_in = &ctx,
                .ctx_size_in = sizeof ctx);
    ASSERT_EQ(bpf_prog_test_run_opts(fd, &opts), 0) << strerror(errno);
    EXPECT_EQ(static_cast<int>(opts.retval), TC_ACT_UNSPEC) << "the program changed a fate";
  }

  // Every key, its per-CPU counters summed, as the agent reads them (bpf::ReadWire).
  std::map<Key, WireEntry> Counts() {
    auto entries = ReadWire(bpf_map__fd((*skel_)->maps.ambit_wire));
    EXPECT_TRUE(entries.ok()) << entries.status();
    std::map<Key, WireEntry> out;
    for (const WireEntry& e : entries.value_or(std::vector<WireEntry>{})) {
      EXPECT_EQ(e.netns_cookie, kCookie);
      const uint8_t flags = (e.egress ? AMBIT_WIRE_EGRESS : 0) |
                            (e.local_port ? AMBIT_WIRE_LOCAL_PORT : 0) |
                            (e.mtls ? AMBIT_WIRE_MTLS : 0);
      out[Key(e.peer.ToString(), e.port, e.proto, flags)] = e;
    }
    return out;
  }

  std::optional<Skeleton<ambit_wire>> skel_;
};

TEST_F(WireProgramTest, HboneEitherWayIsMtlsUnderPort15008) {
  // The pod dials a peer's 15008, and a peer dials the pod's 15008.
  Packet out = Ipv4("198.18.0.1", "198.18.0.2", IPPROTO_TCP, 32);
  Tcp(&out, 40000, 15008, kTcpSyn, 0);
  Run(true, out);
  Packet in = Ipv4("198.18.0.3", "198.18.0.1", IPPROTO_TCP, 32 + 100);
  Tcp(&in, 41000, 15008, kTcpAck | kTcpPsh, 100);
  Run(false, in);
  auto counts = Counts();
  ASSERT_EQ(counts.size(), 2u);
  const auto& dial =
      counts.at(Key("198.18.0.2", 15008, IPPROTO_TCP, AMBIT_WIRE_EGRESS | AMBIT_WIRE_MTLS));
  EXPECT_EQ(dial.bytes, 52u);
  EXPECT_EQ(dial.packets, 1u);
  EXPECT_EQ(dial.payload, 0u);
  EXPECT_EQ(dial.syns, 1u);
  const auto& served =
      counts.at(Key("198.18.0.3", 15008, IPPROTO_TCP, AMBIT_WIRE_MTLS | AMBIT_WIRE_LOCAL_PORT));
  EXPECT_EQ(served.bytes, 152u);
  EXPECT_EQ(served.payload, 100u);
  EXPECT_EQ(served.syns, 0u);
}

TEST_F(WireProgramTest, PlaintextIsKeyedByTheServicePort) {
  // An outsider reaches the pod's 8080 from an ephemeral port; the pod's reply and a reset.
  Packet in = Ipv4("198.18.0.9", "198.18.0.1", IPPROTO_TCP, 32 + 5);
  Tcp(&in, 50000, 8080, kTcpAck | kTcpPsh, 5);
  Run(false, in);
  Packet reply = Ipv4("198.18.0.1", "198.18.0.9", IPPROTO_TCP, 32);
  Tcp(&reply, 8080, 50000, kTcpRst, 0);
  Run(true, reply);
  auto counts = Counts();
  ASSERT_EQ(counts.size(), 2u);
  const auto& got = counts.at(Key("198.18.0.9", 8080, IPPROTO_TCP, AMBIT_WIRE_LOCAL_PORT));
  EXPECT_EQ(got.payload, 5u);
  const auto& sent =
      counts.at(Key("198.18.0.9", 8080, IPPROTO_TCP, AMBIT_WIRE_EGRESS | AMBIT_WIRE_LOCAL_PORT));
  EXPECT_EQ(sent.resets, 1u);
}

TEST_F(WireProgramTest, GsoSuperPacketCountsEverySegmentsHeaders) {
  Packet out = Ipv4("198.18.0.1", "198.18.0.2", IPPROTO_TCP, 32 + 3000);
  Tcp(&out, 40000, 15008, kTcpAck, 3000);
  Run(true, out, /*gso_segs=*/3);
  auto counts = Counts();
  ASSERT_EQ(counts.size(), 1u);
  const auto& v = counts.begin()->second;
  EXPECT_EQ(v.packets, 3u);
  EXPECT_EQ(v.bytes, 20u + 32 + 3000 + 2 * (20 + 32));
  EXPECT_EQ(v.payload, 3000u);
}

TEST_F(WireProgramTest, Ipv6UdpBehindHopByHopIsPlaintext) {
  Packet p = Ipv6("2001:2::1", "2001:2::2", 0 /* hop-by-hop */, 8 + 8 + 4);
  const uint8_t hop[8] = {IPPROTO_UDP, 0};
  p.Put(hop, sizeof hop);
  p.Put16(5353);
  p.Put16(53);
  p.Put16(12);
  p.Put16(0);
  p.Put("abcd", 4);
  Run(true, p);
  auto counts = Counts();
  ASSERT_EQ(counts.size(), 1u);
  const auto& [key, v] = *counts.begin();
  EXPECT_EQ(key, Key("2001:2::2", 53, IPPROTO_UDP, AMBIT_WIRE_EGRESS));
  EXPECT_EQ(v.bytes, 40u + 8 + 8 + 4);
  EXPECT_EQ(v.payload, 4u);
}

TEST_F(WireProgramTest, ControlTrafficAndTruncatedPacketsAreNotCounted) {
  // ICMP, ICMPv6 (neighbour discovery), MLD behind hop-by-hop, ARP, and headers cut short.
  Packet icmp = Ipv4("198.18.0.1", "198.18.0.2", IPPROTO_ICMP, 8);
  icmp.bytes.insert(icmp.bytes.end(), 8, 0);
  Run(true, icmp);
  Packet nd = Ipv6("fe80::1", "ff02::1", 58, 8);
  nd.bytes.insert(nd.bytes.end(), 8, 0);
  Run(true, nd);
  Packet mld = Ipv6("fe80::1", "ff02::16", 0, 8 + 8);
  const uint8_t hop[8] = {58, 0};
  mld.Put(hop, sizeof hop);
  mld.bytes.insert(mld.bytes.end(), 8, 0);
  Run(true, mld);
  Packet arp;
  Ethernet(&arp, ETH_P_ARP);
  arp.bytes.insert(arp.bytes.end(), 28, 0);
  Run(false, arp);
  Packet cut = Ipv4("198.18.0.9", "198.18.0.1", IPPROTO_TCP, 10);
  cut.bytes.insert(cut.bytes.end(), 10, 0);  // 10 of TCP's first 14 bytes
  Run(false, cut);
  EXPECT_TRUE(Counts().empty());
}

TEST_F(WireProgramTest, LaterFragmentsCountUnderPortZero) {
  Packet frag = Ipv4("198.18.0.9", "198.18.0.1", IPPROTO_UDP, 100, /*frag_off=*/185);
  frag.bytes.insert(frag.bytes.end(), 100, 0);
  Run(false, frag);
  auto counts = Counts();
  ASSERT_EQ(counts.size(), 1u);
  const auto& [key, v] = *counts.begin();
  EXPECT_EQ(key, Key("198.18.0.9", 0, IPPROTO_UDP, 0));
  EXPECT_EQ(v.bytes, 120u);
  EXPECT_EQ(v.payload, 0u);
}

}  // namespace
}  // namespace ambit::bpf
