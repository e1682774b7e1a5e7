// What a peer pod costs ambitd's configuration loader, measured per phase: the objects the
// loader keeps between loads, the cluster state it hands over, and what parsing leaves behind in
// resident memory. Pods as bench/config and LargeConfigTest write them (tests/e2e/scale_config.py).

#include <malloc.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/common/allocator.h"
#include "agent/common/clock.h"
#include "agent/config/directory_loader.h"
#include "gtest/gtest.h"
#include "tests/unit/common/temp_dir.h"

namespace ambit::config {
namespace {

using ::ambit::testing::TempDir;

std::string PeerPod(int i) {
  return absl::StrFormat(
      "apiVersion: v1\nkind: Pod\nmetadata:\n  name: peer-%d\n  namespace: scale-%d\n"
      "  labels:\n    app: peer-%d\n  annotations:\n    ambit.dev/netns: /var/run/netns/peer-%d\n"
      "spec:\n  serviceAccountName: sa-%d\n  nodeName: far-%d\n"
      "status:\n  podIP: 2001:2:ff::%x:%x\n",
      i, i % 100, i % 1000, i, i % 500, i % 50, i >> 16, i & 0xffff);
}

struct Memory {
  size_t heap;  // bytes in use (small and mmapped blocks)
  size_t rss;
};

Memory Now() {
  malloc_trim(0);
  struct mallinfo2 m = mallinfo2();
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return {m.uordblks + m.hblkhd, static_cast<size_t>(resident) * sysconf(_SC_PAGESIZE)};
}

double PerPod(size_t after, size_t before, int pods) {
  return (static_cast<double>(after) - static_cast<double>(before)) / pods;
}

TEST(DirectoryLoaderMemoryTest, PeerPodCostPerPhase) {
  constexpr int kPods = 40000;
  constexpr int kPerFile = 20000;
  TempDir dir;
  for (int f = 0; f * kPerFile < kPods; ++f) {
    std::string text;
    for (int i = f * kPerFile; i < (f + 1) * kPerFile; ++i) {
      if (!text.empty()) text += "---\n";
      text += PeerPod(i);
    }
    dir.Write(absl::StrCat("scale-peers-", f, ".yaml"), text);
  }
  FixAllocatorThresholds();  // as ambitd does
  const Memory start = Now();
  auto loader = std::make_unique<DirectoryLoader>(dir.path());
  auto result = std::make_unique<LoadResult>(loader->Load());
  ASSERT_EQ(result->state.pods.size(), static_cast<size_t>(kPods));
  const Memory loaded = Now();
  // What the agent keeps: the state (moved out) and the loader.
  auto state = std::make_shared<const state::ClusterState>(std::move(result->state));
  result.reset();
  const Memory kept = Now();
  state.reset();
  const Memory loader_only = Now();
  loader.reset();
  const Memory end = Now();
  std::printf(
      "  per pod: loaded (state, loader, result) heap %.0f B, RSS %.0f B\n"
      "           kept (state + loader)          heap %.0f B, RSS %.0f B\n"
      "           loader alone                   heap %.0f B, RSS %.0f B\n"
      "           all freed                      heap %.0f B, RSS %.0f B\n",
      PerPod(loaded.heap, start.heap, kPods), PerPod(loaded.rss, start.rss, kPods),
      PerPod(kept.heap, start.heap, kPods), PerPod(kept.rss, start.rss, kPods),
      PerPod(loader_only.heap, start.heap, kPods), PerPod(loader_only.rss, start.rss, kPods),
      PerPod(end.heap, start.heap, kPods), PerPod(end.rss, start.rss, kPods));
}

}  // namespace
}  // namespace ambit::config
