// The access logs' value quoting (agent/common/log.h).

#include "agent/common/log.h"

#include <gtest/gtest.h>

#include <string>

namespace ambit::log {
namespace {

TEST(FieldValueTest, EmptyIsADash) { EXPECT_EQ(FieldValue(""), "-"); }

TEST(FieldValueTest, PlainTextStaysBare) {
  EXPECT_EQ(FieldValue("198.18.0.1:8080"), "198.18.0.1:8080");
  EXPECT_EQ(FieldValue("spiffe://cluster.local/ns/default/sa/web"),
            "spiffe://cluster.local/ns/default/sa/web");
  EXPECT_EQ(FieldValue("[2001:2::1]:80"), "[2001:2::1]:80");
}

TEST(FieldValueTest, AnythingElseIsQuotedWithQuotesAndBackslashesEscaped) {
  EXPECT_EQ(FieldValue("no route"), "\"no route\"");
  EXPECT_EQ(FieldValue("a\"b\\c"), "\"a\\\"b\\\\c\"");
}

// A peer's bytes must not forge a second log line or hide behind terminal escapes.
TEST(FieldValueTest, LineBreaksBecomeSpacesOtherControlCharactersQuestionMarks) {
  EXPECT_EQ(FieldValue("/x\r\nstart=forged"), "\"/x  start=forged\"");
  EXPECT_EQ(FieldValue(std::string("a\0b", 3)), "\"a?b\"");
  EXPECT_EQ(FieldValue("\x1b[31mred\x7f"), "\"?[31mred?\"");
}

}  // namespace
}  // namespace ambit::log
