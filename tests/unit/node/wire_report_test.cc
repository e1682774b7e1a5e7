#include "agent/node/wire_report.h"

#include <netinet/in.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::node {
namespace {

using ::testing::HasSubstr;

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);  // a bucket boundary

IpAddress Ip(const char* text) { return *IpAddress::Parse(text); }

bpf::WireEntry Entry(uint64_t cookie, const char* peer, uint16_t port, bool egress, bool local,
                     bool mtls, uint64_t bytes, uint64_t payload = 0, uint64_t syns = 0,
                     uint64_t resets = 0) {
  bpf::WireEntry e;
  e.netns_cookie = cookie;
  e.peer = Ip(peer);
  e.port = port;
  e.proto = IPPROTO_TCP;
  e.egress = egress;
  e.local_port = local;
  e.mtls = mtls;
  e.bytes = bytes;
  e.packets = bytes / 100 + 1;
  e.payload = payload;
  e.syns = syns;
  e.resets = resets;
  return e;
}

uint64_t SumBytes(const WireTotals& t) {
  uint64_t n = 0;
  for (const auto& [k, c] : t) n += c.bytes;
  return n;
}

TEST(WireLedgerTest, FirstReadIsTheBaselineNotABucket) {
  WireLedger ledger;
  ledger.Fold(kT0, {Entry(1, "198.18.0.2", 15008, true, false, true, 1000)});
  EXPECT_TRUE(ledger.inherited());
  EXPECT_EQ(SumBytes(ledger.totals()), 1000u);
  auto since = ledger.Since(kT0);
  ASSERT_TRUE(since.ok());
  EXPECT_TRUE(since->first.empty());  // an earlier agent's bytes belong to no window
}

TEST(WireLedgerTest, GrowthGoesToTheBucketOfTheRead) {
  WireLedger ledger;
  ledger.Fold(kT0, {});
  EXPECT_FALSE(ledger.inherited());
  ledger.Fold(kT0 + absl::Seconds(5), {Entry(1, "198.18.0.2", 15008, true, false, true, 100)});
  ledger.Fold(kT0 + absl::Seconds(25), {Entry(1, "198.18.0.2", 15008, true, false, true, 350)});
  EXPECT_EQ(SumBytes(ledger.totals()), 350u);
  auto all = ledger.Since(kT0);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(SumBytes(all->first), 350u);
  // From 21 s on: the bucket starting at 20 s holds the 250 bytes read at 25 s.
  auto late = ledger.Since(kT0 + absl::Seconds(21));
  ASSERT_TRUE(late.ok());
  EXPECT_EQ(SumBytes(late->first), 250u);
  EXPECT_EQ(late->second, kT0 + absl::Seconds(20));  // the window starts at the bucket
}

TEST(WireLedgerTest, AnEvictedEntryCountsAnew) {
  WireLedger ledger;
  ledger.Fold(kT0, {});
  ledger.Fold(kT0 + absl::Seconds(1), {Entry(1, "198.18.0.2", 80, true, false, false, 500)});
  // LRU evicted it and the program created it again with 40 bytes.
  ledger.Fold(kT0 + absl::Seconds(2), {Entry(1, "198.18.0.2", 80, true, false, false, 40)});
  EXPECT_EQ(SumBytes(ledger.totals()), 540u);
}

TEST(WireLedgerTest, HistoryIsBoundedAndOlderWindowsAreRefused) {
  WireLedger ledger;
  ledger.Fold(kT0, {});
  auto before = ledger.Since(kT0 - absl::Seconds(1));
  EXPECT_EQ(before.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(before.status().message(), HasSubstr("no wire history before"));
  for (uint64_t i = 1; i <= kWireBuckets + 10; ++i) {
    ledger.Fold(kT0 + kWireBucket * i, {Entry(1, "198.18.0.2", 15008, true, false, true, 10 * i)});
  }
  EXPECT_EQ(ledger.history_start(), kT0 + kWireBucket * 11);
  EXPECT_FALSE(ledger.Since(kT0 + kWireBucket * 5).ok());
  EXPECT_TRUE(ledger.Since(kT0 + kWireBucket * 11).ok());
}

TEST(WireLedgerTest, ForgetPodDropsItsHistory) {
  WireLedger ledger;
  ledger.Fold(kT0, {});
  ledger.Fold(kT0 + absl::Seconds(1), {Entry(1, "198.18.0.2", 15008, true, false, true, 100),
                                       Entry(2, "198.18.0.3", 15008, true, false, true, 7)});
  ledger.ForgetPod(1);
  EXPECT_EQ(SumBytes(ledger.totals()), 7u);
  EXPECT_EQ(SumBytes(ledger.Since(kT0)->first), 7u);
}

class WireReportTest : public ::testing::Test {
 protected:
  WireReportTest() {
    web_.name = "web";
    web_.namespace_name = "default";
    web_.ips = {Ip("198.18.0.2")};
    api_.name = "api";
    api_.namespace_name = "backend";
    api_.ips = {Ip("198.18.0.3")};
  }

  std::vector<PodWireReport> Build(const std::vector<bpf::WireEntry>& entries, authz::MtlsMode mode,
                                   std::string filter = "") {
    ledger_.Fold(kT0, {});
    ledger_.Fold(kT0 + absl::Seconds(1), entries);
    WireReportInput in;
    in.totals = &ledger_.totals();
    in.window_start = kT0;
    in.pods = {{1, &web_}, {2, &api_}};
    in.peer_pod = [this](const IpAddress& ip) -> const state::Pod* {
      if (ip == web_.ips[0]) return &web_;
      if (ip == api_.ips[0]) return &api_;
      return nullptr;
    };
    in.mtls_at = [mode](const state::Pod&, uint16_t) {
      return authz::PeerAuthnDecision{mode,
                                      mode == authz::MtlsMode::kStrict ? "backend/strict" : "", ""};
    };
    in.pod_filter = std::move(filter);
    return BuildWireReport(in);
  }

  static const PodWireReport& Pod(const std::vector<PodWireReport>& r, const std::string& key) {
    for (const auto& p : r) {
      if (p.pod == key) return p;
    }
    ADD_FAILURE() << "no " << key;
    return r.front();
  }

  WireLedger ledger_;
  state::Pod web_, api_;
};

TEST_F(WireReportTest, MeshTrafficIsMtlsBothWays) {
  auto r = Build({Entry(1, "198.18.0.3", 15008, true, false, true, 900, 800, 1),
                  Entry(1, "198.18.0.3", 15008, false, false, true, 300, 200)},
                 authz::MtlsMode::kPermissive);
  const PodWireReport& web = Pod(r, "default/web");
  ASSERT_EQ(web.flows.size(), 1u);
  EXPECT_EQ(web.flows[0].verdict, "mtls");
  EXPECT_EQ(web.flows[0].peer_workload, "backend/api");
  EXPECT_EQ(web.flows[0].out.bytes, 900u);
  EXPECT_EQ(web.flows[0].in.bytes, 300u);
  EXPECT_EQ(web.encrypted_bytes, 1200u);
  EXPECT_EQ(web.plaintext_bytes, 0u);
  ASSERT_EQ(web.verdicts.size(), 1u);
  EXPECT_EQ(web.verdicts[0],
            "every byte between default/web and backend/api since 08:00:00 UTC was mTLS "
            "(1200 bytes)");
  // api had no traffic: listed, and said so.
  EXPECT_THAT(Pod(r, "backend/api").verdicts[0], HasSubstr("no traffic crossed backend/api"));
}

TEST_F(WireReportTest, PlaintextToAPermissivePortNamesPortAndPeer) {
  auto r = Build({Entry(2, "198.18.0.9", 9001, false, true, false, 700, 500, 1),
                  Entry(2, "198.18.0.9", 9001, true, true, false, 600, 500)},
                 authz::MtlsMode::kPermissive);
  const PodWireReport& api = Pod(r, "backend/api");
  ASSERT_EQ(api.flows.size(), 1u);
  EXPECT_EQ(api.flows[0].verdict, "plaintext");
  EXPECT_EQ(api.flows[0].mtls_mode, "PERMISSIVE");
  EXPECT_FALSE(api.plaintext_under_strict);
  EXPECT_EQ(api.plaintext_bytes, 1300u);
  ASSERT_EQ(api.verdicts.size(), 1u);
  EXPECT_EQ(api.verdicts[0],
            "plaintext between backend/api and 198.18.0.9 on backend/api port 9001/tcp: 600 bytes "
            "out, 700 bytes in (PERMISSIVE)");
}

TEST_F(WireReportTest, StrictRefusedAttemptsAreNotPlaintextThatReachedTheApp) {
  auto r = Build({Entry(2, "198.18.0.9", 9002, false, true, false, 400, 30, 3),
                  Entry(2, "198.18.0.9", 9002, true, true, false, 360, 0, 0, 3)},
                 authz::MtlsMode::kStrict);
  const PodWireReport& api = Pod(r, "backend/api");
  EXPECT_EQ(api.flows[0].verdict, "plaintext-refused");
  EXPECT_FALSE(api.plaintext_under_strict);
  EXPECT_EQ(api.verdicts[0],
            "3 plaintext connection attempt(s) from 198.18.0.9 to backend/api port 9002/tcp "
            "refused under STRICT (backend/strict): reset, no byte reached the app");
}

TEST_F(WireReportTest, AnsweredPlaintextUnderStrictFails) {
  auto r = Build({Entry(2, "198.18.0.9", 9002, false, true, false, 400, 30, 1),
                  Entry(2, "198.18.0.9", 9002, true, true, false, 360, 30)},
                 authz::MtlsMode::kStrict);
  const PodWireReport& api = Pod(r, "backend/api");
  EXPECT_EQ(api.flows[0].verdict, "plaintext-under-strict");
  EXPECT_TRUE(api.plaintext_under_strict);
  EXPECT_THAT(api.verdicts[0], HasSubstr("was answered, and STRICT (backend/strict) applies"));
}

TEST_F(WireReportTest, OutboundPlaintextIsNeverJudgedByTheLocalMode) {
  // web dialled an outside server's port 80 in plaintext: STRICT is about what the pod accepts.
  auto r = Build({Entry(1, "203.0.113.7", 80, true, false, false, 100, 10, 1)},
                 authz::MtlsMode::kStrict);
  const PodWireReport& web = Pod(r, "default/web");
  EXPECT_EQ(web.flows[0].verdict, "plaintext");
  EXPECT_FALSE(web.plaintext_under_strict);
  EXPECT_EQ(web.flows[0].mtls_mode, "");
}

TEST_F(WireReportTest, PodFilterKeepsOnePod) {
  auto r = Build({Entry(1, "198.18.0.3", 15008, true, false, true, 10)},
                 authz::MtlsMode::kPermissive, "backend/api");
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].pod, "backend/api");
}

}  // namespace
}  // namespace ambit::node
