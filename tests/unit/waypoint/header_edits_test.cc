#include <string>
#include <vector>

#include "agent/waypoint/filter.h"
#include "gtest/gtest.h"

namespace ambit::waypoint {
namespace {

using Op = HeaderEdit::Op;

TEST(ApplyHeaderEditsTest, SetReplacesEveryValueAndRemoveDropsThem) {
  HeaderList h = {
      {"authorization", "Bearer x"}, {"x-jwt", "forged"}, {"x-jwt", "again"}, {"accept", "*/*"}};
  ApplyHeaderEdits({{Op::kRemove, "authorization", ""},
                    {Op::kRemove, "x-jwt", ""},
                    {Op::kSet, "x-jwt", "payload"},
                    {Op::kSet, "x-sub", "alice"}},
                   h);
  EXPECT_EQ(h, (HeaderList{{"accept", "*/*"}, {"x-jwt", "payload"}, {"x-sub", "alice"}}));
}

TEST(ApplyHeaderEditsTest, ValuesThatWouldEndTheLineAreNeverWritten) {
  // A claim is client-chosen text; CR or LF in it would add headers (or a request) upstream.
  HeaderList h = {{"x-sub", "old"}};
  ApplyHeaderEdits({{Op::kSet, "x-sub", "alice\r\nx-admin: true"},
                    {Op::kSet, "x-nul", std::string("a\0b", 3)},
                    {Op::kSet, "x-lf", "a\nb"}},
                   h);
  EXPECT_TRUE(h.empty());  // the old value is not left to pass as if it were the claim
}

TEST(ApplyHeaderEditsTest, FramingAndHostAreNotEditable) {
  HeaderList h = {{"host", "svc"}, {"content-length", "3"}};
  ApplyHeaderEdits({{Op::kSet, "content-length", "0"},
                    {Op::kSet, "transfer-encoding", "chunked"},
                    {Op::kRemove, "host", ""},
                    {Op::kSet, ":path", "/admin"},
                    {Op::kSet, "connection", "close"}},
                   h);
  EXPECT_EQ(h, (HeaderList{{"host", "svc"}, {"content-length", "3"}}));
}

TEST(ApplyHeaderEditsTest, AppendKeepsEveryValueAndAddsOneInOrder) {
  // ext_authz's append: the client's values stay, the authorizer's goes after them.
  HeaderList h = {{"x-tag", "a"}, {"accept", "*/*"}, {"x-tag", "b"}};
  ApplyHeaderEdits({{Op::kAppend, "x-tag", "c"},
                    {Op::kAppend, "x-new", "1"},
                    {Op::kSet, "x-new", "2"},
                    {Op::kAppend, "x-new", "3"},
                    {Op::kAppend, "x-bad", "v\r\nx-admin: true"},
                    {Op::kAppend, "transfer-encoding", "chunked"}},
                   h);
  EXPECT_EQ(h, (HeaderList{{"x-tag", "a"},
                           {"accept", "*/*"},
                           {"x-tag", "b"},
                           {"x-tag", "c"},
                           {"x-new", "2"},
                           {"x-new", "3"}}));
}

}  // namespace
}  // namespace ambit::waypoint
