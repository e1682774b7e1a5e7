#include "agent/issuance/signer.h"

#include "absl/time/time.h"
#include "agent/issuance/ca_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::issuance {
namespace {

using ::testing::HasSubstr;

TEST(CertTtlTest, ShortLifetimesAreRefusedWithTheReason) {
  for (absl::Duration ttl : {absl::Milliseconds(500), absl::Seconds(30), absl::Seconds(59)}) {
    absl::Status s = CheckCertTtl(ttl);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << ttl;
    EXPECT_THAT(s.message(), HasSubstr("below the minimum of 1m")) << ttl;
  }
  EXPECT_TRUE(CheckCertTtl(kMinCertTtl).ok());
  EXPECT_TRUE(CheckCertTtl(absl::Minutes(2)).ok());
  EXPECT_TRUE(CheckCertTtl(absl::Hours(24)).ok());
}

TEST(ListenHostTest, HostOfEachForm) {
  EXPECT_EQ(ListenHost("127.0.0.1:15012"), "127.0.0.1");
  EXPECT_EQ(ListenHost("127.0.0.1:0"), "127.0.0.1");
  EXPECT_EQ(ListenHost("[::1]:15012"), "::1");
  EXPECT_EQ(ListenHost("ca.example.com:15012"), "ca.example.com");
  // Wildcards name no address a client could dial.
  EXPECT_EQ(ListenHost("0.0.0.0:15012"), "");
  EXPECT_EQ(ListenHost("[::]:15012"), "");
  EXPECT_EQ(ListenHost(":15012"), "");
  // Not host:port.
  EXPECT_EQ(ListenHost("15012"), "");
  EXPECT_EQ(ListenHost("::1"), "");
  EXPECT_EQ(ListenHost("[::1"), "");
}

}  // namespace
}  // namespace ambit::issuance
