#include "agent/config/change_summary.h"

#include "gtest/gtest.h"

namespace ambit::config {
namespace {

state::Pod MakePod(std::string ns, std::string name) {
  state::Pod p;
  p.namespace_name = std::move(ns);
  p.name = std::move(name);
  return p;
}

TEST(ChangeSummaryTest, AddedChangedRemovedByKind) {
  state::ClusterState before, after;
  before.pods["a/one"] = MakePod("a", "one");
  before.pods["a/two"] = MakePod("a", "two");
  after.pods["a/two"] = MakePod("a", "two");
  after.pods["a/two"].service_account = "other";
  after.pods["a/three"] = MakePod("a", "three");
  after.namespaces["a"] = {"a", {}, {}, "ns.yaml"};
  SecurityConfig sec;
  authz::Policy p;
  p.namespace_name = "a";
  p.name = "allow";
  sec.authorization_policies[p.Key()] = p;
  ChangeSummary s = SummarizeChanges(before, {}, after, sec);
  EXPECT_EQ(s.added, 3u);
  EXPECT_EQ(s.changed, 1u);
  EXPECT_EQ(s.removed, 1u);
  EXPECT_EQ(s.text,
            "added 3: Namespace a, Pod a/three, AuthorizationPolicy a/allow; changed 1: Pod a/two; "
            "removed 1: Pod a/one");
}

TEST(ChangeSummaryTest, NothingChangedAndTheLoadersBookkeepingIsNoChange) {
  state::ClusterState before, after;
  before.pods["a/one"] = MakePod("a", "one");
  after.pods["a/one"] = MakePod("a", "one");
  after.pods["a/one"].first_seen_load = 7;
  EXPECT_EQ(SummarizeChanges(before, {}, after, {}).text, "no object changed");
}

TEST(ChangeSummaryTest, CapsTheNamesWithACount) {
  state::ClusterState before, after;
  for (int i = 0; i < 25; ++i) {
    auto p = MakePod("a", "p" + std::to_string(100 + i));
    after.pods[p.Key()] = p;
  }
  after.mesh.trust_domain = "example.org";
  ChangeSummary s = SummarizeChanges(before, {}, after, {}, 3);
  EXPECT_EQ(s.text, "added 25: Pod a/p100, Pod a/p101, Pod a/p102 and 22 more; changed 1");
}

}  // namespace
}  // namespace ambit::config
