#include "agent/state/pod_pack.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/time/time.h"

namespace ambit::state {
namespace {

IpAddress Ip(const std::string& text) { return *IpAddress::Parse(text); }

std::vector<Pod> ReadAll(const PodPack& pack) {
  std::vector<Pod> out;
  PodPack::Reader reader(pack);
  Pod pod;
  while (reader.Next(&pod)) out.push_back(pod);
  return out;
}

// Every field, with values at the edges of what each holds.
Pod Full() {
  Pod p;
  p.name = "productpage-v1-6b746f74dc-9stp2";
  p.namespace_name = "bookinfo";
  p.uid = "5b0f3e8a-8c1f-4b8e-9f4e-1f2a3b4c5d6e";
  p.labels = {{"app", "productpage"}, {"version", "v1"}, {"", ""}};
  p.annotations = {{std::string(kNetnsAnnotation), "/var/run/netns/pp"},
                   {"long", std::string(300, 'x')}};
  p.service_account = "bookinfo-productpage";
  p.node_name = "node-a";
  p.workload_name = "productpage-v1";
  p.canonical_service = "productpage";
  p.canonical_revision = "v1";
  p.ips = {Ip("198.18.0.5"), Ip("2001:2::5")};
  p.netns_path = "/var/run/netns/pp";
  p.source_file = "bookinfo.yaml";
  p.creation_time = absl::FromUnixNanos(1714521600123456789);
  p.first_seen = absl::FromUnixSeconds(-5) + absl::Nanoseconds(1);
  p.first_seen_load = uint64_t{1} << 40;
  return p;
}

TEST(PodPackTest, ReadsBackEveryFieldInOrder) {
  Pod empty;  // defaults: no creation time, first seen in the infinite past
  Pod future = Full();
  future.name = "later";
  future.creation_time.reset();
  future.first_seen = absl::InfiniteFuture();
  future.ips.clear();
  PodPack pack;
  EXPECT_TRUE(pack.empty());
  for (const Pod& p : {Full(), empty, future}) pack.Add(p);
  pack.ShrinkToFit();
  EXPECT_EQ(pack.size(), 3u);
  const std::vector<Pod> back = ReadAll(pack);
  ASSERT_EQ(back.size(), 3u);
  EXPECT_EQ(back[0], Full());
  EXPECT_EQ(back[1], empty);
  EXPECT_EQ(back[2], future);
  // A second reader starts over.
  EXPECT_EQ(ReadAll(pack).size(), 3u);
  EXPECT_TRUE(ReadAll(PodPack()).empty());
}

// The reason the type exists: a typical pod packs into a fraction of what it takes unpacked.
TEST(PodPackTest, APeerPodTakesUnder200Bytes) {
  PodPack pack;
  constexpr int kPods = 1000;
  for (int i = 0; i < kPods; ++i) {
    Pod p;
    p.name = "peer-" + std::to_string(i);
    p.namespace_name = "scale-" + std::to_string(i % 100);
    p.labels = {{"app", "peer-" + std::to_string(i % 1000)}};
    p.netns_path = "/var/run/netns/peer-" + std::to_string(i);
    p.annotations = {{std::string(kNetnsAnnotation), p.netns_path}};
    p.service_account = "sa-" + std::to_string(i % 500);
    p.node_name = "far-" + std::to_string(i % 50);
    p.ips = {Ip("2001:2:ff::1:2")};
    p.source_file = "scale-peers-000.yaml";
    p.first_seen = absl::FromUnixSeconds(1714521600);
    pack.Add(p);
  }
  pack.ShrinkToFit();
  EXPECT_LT(pack.bytes() / kPods, 200u);
  EXPECT_EQ(ReadAll(pack).size(), static_cast<size_t>(kPods));
}

}  // namespace
}  // namespace ambit::state
