#include "agent/zds/session.h"

#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace ambit::zds {
namespace {

using Type = Request::Type;

struct Event {
  Type type;
  std::string uid;
  std::set<std::string> known;  // of the source, before the request
  std::string error;            // expected error substring ("" = none)
  std::vector<std::string> remove;
};

struct Case {
  const char* name;
  SessionKind kind;
  std::vector<Event> events;
};

TEST(ZdsSessionTest, Table) {
  const SessionKind snap = SessionKind::kSnapshot, inc = SessionKind::kIncremental;
  const std::vector<Case> cases = {
      {"snapshot: adds and keeps make the set, the rest is removed",
       snap,
       {{Type::kAdd, "a", {"a", "b", "c"}, "", {}},
        {Type::kKeep, "b", {"a", "b", "c"}, "", {}},
        {Type::kSnapshotSent, "", {"a", "b", "c"}, "", {"c"}}}},
      {"snapshot: an empty snapshot removes everything",
       snap,
       {{Type::kSnapshotSent, "", {"a", "b"}, "", {"a", "b"}}}},
      {"snapshot: adds after snapshot_sent are incremental",
       snap,
       {{Type::kSnapshotSent, "", {}, "", {}},
        {Type::kAdd, "n", {}, "", {}},
        {Type::kDel, "n", {"n"}, "", {}}}},
      {"snapshot: keep after snapshot_sent is an error",
       snap,
       {{Type::kSnapshotSent, "", {"a"}, "", {"a"}},
        {Type::kKeep, "a", {}, "after snapshot_sent", {}}}},
      {"snapshot: keep of an unknown uid is an error",
       snap,
       {{Type::kKeep, "x", {"a"}, "no such workload", {}}}},
      {"snapshot: second snapshot_sent is an error",
       snap,
       {{Type::kSnapshotSent, "", {}, "", {}},
        {Type::kSnapshotSent, "", {}, "second snapshot_sent", {}}}},
      {"snapshot: a del before snapshot_sent takes the uid out of the set",
       snap,
       {{Type::kAdd, "a", {}, "", {}},
        {Type::kDel, "a", {"a"}, "", {}},
        {Type::kSnapshotSent, "", {"b"}, "", {"b"}}}},
      {"snapshot: duplicate add of one uid is one member",
       snap,
       {{Type::kAdd, "a", {}, "", {}},
        {Type::kAdd, "a", {"a"}, "", {}},
        {Type::kSnapshotSent, "", {"a"}, "", {}}}},
      {"incremental: snapshot_sent removes nothing",
       inc,
       {{Type::kAdd, "a", {"z"}, "", {}}, {Type::kSnapshotSent, "", {"a", "z"}, "", {}}}},
      {"incremental: keep of a known uid is fine, even after snapshot_sent",
       inc,
       {{Type::kSnapshotSent, "", {"a"}, "", {}}, {Type::kKeep, "a", {"a"}, "", {}}}},
  };
  for (const Case& c : cases) {
    SessionState s(c.kind);
    s.HelloSent();
    for (size_t i = 0; i < c.events.size(); ++i) {
      const Event& e = c.events[i];
      SessionState::Step step = s.OnRequest(e.type, e.uid, e.known);
      if (e.error.empty()) {
        EXPECT_EQ(step.error, "") << c.name << " #" << i;
        EXPECT_TRUE(s.awaiting_answer()) << c.name << " #" << i;
        s.Answered();
      } else {
        EXPECT_NE(step.error.find(e.error), std::string::npos)
            << c.name << " #" << i << ": " << step.error;
        EXPECT_FALSE(s.awaiting_answer()) << c.name << " #" << i;
      }
      EXPECT_EQ(step.remove, e.remove) << c.name << " #" << i;
    }
  }
}

TEST(ZdsSessionTest, AnswersInOrderOneAtATime) {
  SessionState s(SessionKind::kIncremental);
  EXPECT_NE(s.OnRequest(Type::kAdd, "a", {}).error, "");  // before hello
  s.HelloSent();
  EXPECT_EQ(s.OnRequest(Type::kAdd, "a", {}).error, "");
  EXPECT_NE(s.OnRequest(Type::kAdd, "b", {}).error.find("unanswered"), std::string::npos);
  s.Answered();
  EXPECT_EQ(s.OnRequest(Type::kAdd, "b", {}).error, "");
}

}  // namespace
}  // namespace ambit::zds
