#include "agent/tunnel/plaintext_clients.h"

#include <gtest/gtest.h>

#include <string>

#include "agent/common/metrics.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::tunnel {
namespace {

namespace pb = ::ambit::dataplane::v1;

IpAddress Ip(const std::string& text) { return *IpAddress::Parse(text); }

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

uint64_t Counter(const pb::StatsResponse& stats, std::string_view name, const std::string& pod,
                 const std::string& port) {
  for (const auto& c : stats.counters()) {
    if (c.name() != name) continue;
    if (pod.empty() && c.labels().empty()) return c.value();
    if (c.labels_size() == 2 && c.labels(0).value() == pod && c.labels(1).value() == port) {
      return c.value();
    }
  }
  return ~uint64_t{0};
}

TEST(PlaintextClientsTest, CountsPerPodPortAndSource) {
  PlaintextClients t;
  t.Record("ns/a", 9000, Ip("198.18.0.9"), "default/outsider", false, kT0);
  t.Record("ns/a", 9000, Ip("198.18.0.9"), "default/outsider", true, kT0 + absl::Seconds(5));
  t.Record("ns/a", 9001, Ip("198.18.0.9"), "", false, kT0);
  ASSERT_EQ(t.size(), 2u);
  pb::StatsResponse out;
  t.AppendTo(true, &out);
  ASSERT_EQ(out.plaintext_clients_size(), 2);
  // Most recently seen first.
  const pb::PlaintextClient& c = out.plaintext_clients(1);
  EXPECT_EQ(c.pod(), "ns/a");
  EXPECT_EQ(c.port(), 9000u);
  EXPECT_EQ(c.source(), "198.18.0.9");
  EXPECT_EQ(c.source_workload(), "default/outsider");
  EXPECT_EQ(c.connections(), 2u);
  EXPECT_EQ(c.refused(), 1u);
  EXPECT_EQ(c.first_seen_unix_ms(), absl::ToUnixMillis(kT0));
  EXPECT_EQ(c.last_seen_unix_ms(), absl::ToUnixMillis(kT0 + absl::Seconds(5)));
  EXPECT_EQ(Counter(out, metrics::kPlaintextConnections.name, "ns/a", "9000"), 2u);
  EXPECT_EQ(Counter(out, metrics::kPlaintextConnections.name, "ns/a", "9001"), 1u);
  EXPECT_EQ(Counter(out, metrics::kPlaintextClientsEvicted.name, "", ""), 0u);
}

TEST(PlaintextClientsTest, EvictsTheLeastRecentlySeenAndCountsIt) {
  PlaintextClients t(/*max_entries=*/2, /*max_ports=*/2);
  t.Record("ns/a", 1, Ip("198.18.0.1"), "", false, kT0);
  t.Record("ns/a", 1, Ip("198.18.0.2"), "", false, kT0 + absl::Seconds(1));
  // .1 seen again: .2 is now the least recent, and goes for .3.
  t.Record("ns/a", 1, Ip("198.18.0.1"), "", false, kT0 + absl::Seconds(2));
  t.Record("ns/a", 1, Ip("198.18.0.3"), "", false, kT0 + absl::Seconds(3));
  EXPECT_EQ(t.size(), 2u);
  EXPECT_EQ(t.evicted(), 1u);
  pb::StatsResponse out;
  t.AppendTo(true, &out);
  ASSERT_EQ(out.plaintext_clients_size(), 2);
  EXPECT_EQ(out.plaintext_clients(0).source(), "198.18.0.3");
  EXPECT_EQ(out.plaintext_clients(1).source(), "198.18.0.1");
  EXPECT_EQ(out.plaintext_clients(1).connections(), 2u);
  EXPECT_EQ(Counter(out, metrics::kPlaintextClientsEvicted.name, "", ""), 1u);
}

TEST(PlaintextClientsTest, PortCountersAreBoundedUnderOther) {
  PlaintextClients t(/*max_entries=*/100, /*max_ports=*/2);
  for (uint16_t port = 1; port <= 50; ++port) {
    t.Record("ns/a", port, Ip("198.18.0.1"), "", false, kT0);
  }
  pb::StatsResponse out;
  t.AppendTo(true, &out);
  int series = 0;
  for (const auto& c : out.counters()) series += c.name() == metrics::kPlaintextConnections.name;
  EXPECT_EQ(series, 3);  // two ports and "other"
  EXPECT_EQ(Counter(out, metrics::kPlaintextConnections.name, "ns/a", "other"), 48u);
}

TEST(PlaintextClientsTest, ForgetsARemovedPod) {
  PlaintextClients t;
  t.Record("ns/a", 1, Ip("198.18.0.1"), "", false, kT0);
  t.Record("ns/b", 1, Ip("198.18.0.1"), "", false, kT0);
  t.ForgetPod("ns/a");
  pb::StatsResponse out;
  t.AppendTo(true, &out);
  ASSERT_EQ(out.plaintext_clients_size(), 1);
  EXPECT_EQ(out.plaintext_clients(0).pod(), "ns/b");
  EXPECT_EQ(Counter(out, metrics::kPlaintextConnections.name, "ns/a", "1"), ~uint64_t{0});
  t.Record("ns/a", 1, Ip("198.18.0.1"), "", false, kT0);  // index and list still agree
  EXPECT_EQ(t.size(), 2u);
}

TEST(PlaintextClientsTest, MergeSumsWorkersAndCountsDistinctSources) {
  PlaintextClients w0, w1;
  w0.Record("ns/a", 80, Ip("198.18.0.1"), "", false, kT0 + absl::Seconds(1));
  w1.Record("ns/a", 80, Ip("198.18.0.1"), "default/x", true, kT0 + absl::Seconds(9));
  w1.Record("ns/a", 80, Ip("2001:2::5"), "", false, kT0);
  pb::StatsResponse stats;
  w0.AppendTo(false, &stats);
  w1.AppendTo(false, &stats);
  MergePlaintextClients(true, &stats);
  ASSERT_EQ(stats.plaintext_clients_size(), 2);
  const pb::PlaintextClient& c = stats.plaintext_clients(0);
  EXPECT_EQ(c.source(), "198.18.0.1");
  EXPECT_EQ(c.connections(), 2u);
  EXPECT_EQ(c.refused(), 1u);
  EXPECT_EQ(c.first_seen_unix_ms(), absl::ToUnixMillis(kT0 + absl::Seconds(1)));
  EXPECT_EQ(c.last_seen_unix_ms(), absl::ToUnixMillis(kT0 + absl::Seconds(9)));
  EXPECT_EQ(c.source_workload(), "default/x");  // the latest sighting's
  EXPECT_EQ(Counter(stats, metrics::kPlaintextClients.name, "ns/a", "80"), 2u);
}

}  // namespace
}  // namespace ambit::tunnel
