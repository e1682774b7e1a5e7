// The access logs' value quoting and timestamps (agent/common/log.h, log_line.h).

#include "agent/common/log.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "agent/common/log_line.h"

namespace ambit::log {
namespace {

TEST(TimestampTest, MillisecondsUtcAcrossSecondsAndAtTheExtremes) {
  auto stamp = [](int64_t ms) {
    std::string out;
    AppendTimestamp(&out, ms);
    return out;
  };
  EXPECT_EQ(stamp(1800000000250), "2027-01-15T08:00:00.250Z");
  EXPECT_EQ(stamp(1800000000007), "2027-01-15T08:00:00.007Z");  // the same second, cached
  EXPECT_EQ(stamp(1800000001999), "2027-01-15T08:00:01.999Z");
  EXPECT_EQ(stamp(-1), "1969-12-31T23:59:59.999Z");
  // What absl::InfiniteFuture() and InfinitePast() become: still a timestamp, no overflow.
  EXPECT_EQ(stamp(INT64_MAX), "292278994-08-17T07:12:55.807Z");
  EXPECT_EQ(stamp(INT64_MIN), "-292275055-05-16T16:47:04.192Z");
}

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
