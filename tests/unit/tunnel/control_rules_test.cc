// The control thread's pure decisions (agent/tunnel/control_rules.h) and the pool's idle limit
// (agent/tunnel/hbone_pool.h), driven by a clock moved by hand.

#include "agent/tunnel/control_rules.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent/common/clock.h"
#include "agent/tunnel/hbone_pool.h"

namespace ambit::tunnel {
namespace {

// Two roots of the same size whose PEMs end alike: only the key material early on differs, as
// with two CAs whose encodings share their last bytes (e.g. the same tail of extensions).
std::string Pem(char body) {
  std::string pem = "-----BEGIN CERTIFICATE-----\n";
  pem += std::string(64, body) + "\n";
  pem += std::string(200, 'Q') + "\n";  // the shared tail, well over 80 characters
  pem += "-----END CERTIFICATE-----\n";
  return pem;
}

TEST(TrustBundleKeyTest, RootsThatShareTheirTailDiffer) {
  const std::string a = Pem('A'), b = Pem('B');
  ASSERT_EQ(a.size(), b.size());
  ASSERT_EQ(a.substr(a.size() - 80), b.substr(b.size() - 80));
  EXPECT_NE(TrustBundleKey({a}), TrustBundleKey({b}));
  EXPECT_NE(TrustBundleKey({a, a}), TrustBundleKey({a, b}));
}

TEST(TrustBundleKeyTest, SameRootsInAnotherOrderAreTheSameBundle) {
  const std::string a = Pem('A'), b = Pem('B');
  EXPECT_EQ(TrustBundleKey({a, b}), TrustBundleKey({b, a}));
  EXPECT_EQ(TrustBundleKey({a}), TrustBundleKey({a}));
}

TEST(TrustBundleKeyTest, BundlesThatConcatenateAlikeDiffer) {
  EXPECT_NE(TrustBundleKey({"ab", "c"}), TrustBundleKey({"a", "bc"}));
  EXPECT_NE(TrustBundleKey({}), TrustBundleKey({""}));
}

TEST(CertGraceTest, PodIsServedWithoutCertificateOnlyAfterTheGrace) {
  FakeClock clock;
  const absl::Time since = clock.Now();
  EXPECT_FALSE(CertGraceOver(since, clock.Now()));
  clock.Advance(kCertGrace);
  EXPECT_FALSE(CertGraceOver(since, clock.Now()));  // at the limit it still waits
  clock.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(CertGraceOver(since, clock.Now()));
}

TEST(PoolIdleTest, SessionPastTheIdleLimitIsNotReused) {
  FakeClock clock;
  const absl::Duration limit = absl::Seconds(30);
  const absl::Time idle_since = clock.Now();
  EXPECT_EQ(IdleRemaining(idle_since, clock.Now(), limit), limit);
  clock.Advance(absl::Seconds(29));
  EXPECT_EQ(IdleRemaining(idle_since, clock.Now(), limit), absl::Seconds(1));  // reusable
  clock.Advance(absl::Seconds(1));
  EXPECT_LE(IdleRemaining(idle_since, clock.Now(), limit), absl::ZeroDuration());
  clock.Advance(absl::Hours(1));  // a timer that ran late: still closed, never reused
  EXPECT_LE(IdleRemaining(idle_since, clock.Now(), limit), absl::ZeroDuration());
}

}  // namespace
}  // namespace ambit::tunnel
