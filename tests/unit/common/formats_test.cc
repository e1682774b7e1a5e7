#include "agent/common/formats.h"

#include <regex>
#include <string>

#include "absl/time/civil_time.h"
#include "absl/time/clock.h"
#include "agent/common/instance_paths.h"
#include "agent/common/log_line.h"
#include "agent/common/version.h"
#include "gtest/gtest.h"

namespace ambit {
namespace {

absl::Time At(int y, int mo, int d, int h, int mi, int s, int ms) {
  return absl::FromCivil(absl::CivilSecond(y, mo, d, h, mi, s), absl::UTCTimeZone()) +
         absl::Milliseconds(ms);
}

TEST(FormatTimestampTest, Rfc3339UtcWithMilliseconds) {
  EXPECT_EQ(FormatTimestamp(At(2026, 12, 7, 10, 2, 3, 123)), "2026-12-07T10:02:03.123Z");
  EXPECT_EQ(FormatTimestamp(At(2026, 1, 2, 3, 4, 5, 0)), "2026-01-02T03:04:05.000Z");
  // Sub-millisecond digits are cut, not rounded up into the next second.
  EXPECT_EQ(FormatTimestamp(At(2026, 1, 2, 3, 4, 5, 999) + absl::Microseconds(900)),
            "2026-01-02T03:04:05.999Z");
  EXPECT_EQ(FormatTimestamp(absl::InfinitePast()), "");
  EXPECT_EQ(FormatTimestamp(absl::InfiniteFuture()), "");
}

// The log's own stamp (written apart, without absl, on every line) has the same shape.
TEST(FormatTimestampTest, LogLinesUseTheSameFormat) {
  const std::regex stamp(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$)");
  const std::string line = log::FormatLine("agent", log::Level::kInfo, "x");
  EXPECT_TRUE(std::regex_match(line.substr(0, line.find(' ')), stamp)) << line;
  EXPECT_TRUE(std::regex_match(FormatTimestamp(absl::Now()), stamp));
}

TEST(FormatSerialTest, AsOpensslPrintsIt) {
  EXPECT_EQ(FormatSerial("0a1b"), "0A1B");        // BoringSSL's BN_bn2hex is lowercase
  EXPECT_EQ(FormatSerial("A1B"), "0A1B");         // whole bytes
  EXPECT_EQ(FormatSerial("0a:1b:ff"), "0A1BFF");  // openssl x509 -text's colon form
  EXPECT_EQ(FormatSerial("0"), "00");
  EXPECT_EQ(FormatSerial(""), "");
  EXPECT_EQ(FormatSerial("-1F"), "-1F");  // not hex digits alone: left as it is
}

TEST(InstancePathsTest, DefaultInstanceLivesInRunAmbit) {
  EXPECT_EQ(AdminSocketIn(InstanceRunDir(kDefaultInstance)), "/run/ambit/admin.sock");
  EXPECT_EQ(AdminSocketIn(InstanceRunDir("blue")), "/run/ambit/blue/admin.sock");
}

TEST(InstancePathsTest, InstanceNamesAreFileNames) {
  EXPECT_TRUE(ValidInstanceName("default"));
  EXPECT_TRUE(ValidInstanceName("node-2_a.b"));
  EXPECT_TRUE(ValidInstanceName(std::string(64, 'a')));
  EXPECT_FALSE(ValidInstanceName(std::string(65, 'a')));
  EXPECT_FALSE(ValidInstanceName(""));
  EXPECT_FALSE(ValidInstanceName(".hidden"));
  EXPECT_FALSE(ValidInstanceName("../etc"));
  EXPECT_FALSE(ValidInstanceName("a/b"));
  EXPECT_FALSE(ValidInstanceName("a b"));
}

TEST(VersionTest, ProjectVersionFirst) {
  EXPECT_TRUE(std::regex_search(std::string(Version()), std::regex(R"(^\d+\.\d+\.\d+(\+\S+)?$)")))
      << Version();
}

}  // namespace
}  // namespace ambit
