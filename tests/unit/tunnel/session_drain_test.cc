// The decision that stops an HBONE session from taking new streams because of its certificates,
// with real certificates and TLS contexts and a clock moved by hand.

#include "agent/tunnel/session_drain.h"

#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/hbone/hbone_test_util.h"

namespace ambit::tunnel {
namespace {

using hbone::testing::kClientId;
using hbone::testing::kServerId;
using hbone::testing::kTrustDomain;
using hbone::testing::TestPki;
using ::testing::HasSubstr;

class SessionDrainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pki = TestPki::Create("drain root");
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *std::move(pki);
    // The certificates are real and valid now; the lifetimes the decision reads are set below,
    // inside that validity, so that chain checks at the fake time still pass.
    clock_.Set(absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now())));
  }

  // Client and server contexts for `identity`, whose certificate expires `ttl` from the clock.
  TlsContexts::Pair Contexts(const std::string& identity, absl::Duration ttl,
                             TestPki* pki = nullptr) {
    if (pki == nullptr) pki = pki_.get();
    auto svid = pki->Mint(identity);
    EXPECT_TRUE(svid.ok()) << svid.status();
    if (!svid.ok()) return {};
    svid->not_after = clock_.Now() + ttl;
    auto client = hbone::MakeClientContext(*svid, pki->store(), kTrustDomain);
    auto server = hbone::MakeServerContext(*svid, pki->store(), kTrustDomain);
    EXPECT_TRUE(client.ok() && server.ok());
    if (!client.ok() || !server.ok()) return {};
    return {*client, *server};
  }

  std::unique_ptr<TestPki> pki_;
  FakeClock clock_;
};

TEST_F(SessionDrainTest, OwnCertificateExpiringDrainsAtNotAfter) {
  TlsContexts current;
  current.by_identity[kServerId] = Contexts(kServerId, absl::Minutes(1));
  const hbone::TlsContext& server = *current.by_identity[kServerId].server;
  const absl::Time peer = clock_.Now() + absl::Hours(1);

  EXPECT_FALSE(DecideDrain(server, peer, &current, clock_.Now()).drain());
  EXPECT_EQ(CredentialDeadline(server, peer), clock_.Now() + absl::Minutes(1));
  clock_.Advance(absl::Seconds(59));
  EXPECT_FALSE(DecideDrain(server, peer, &current, clock_.Now()).drain());
  clock_.Advance(absl::Seconds(1));
  // Expired by the clock alone: the contexts in force still list it (no new certificate came).
  DrainDecision d = DecideDrain(server, peer, &current, clock_.Now());
  EXPECT_EQ(d.reason, DrainReason::kExpired);
  EXPECT_THAT(d.detail, HasSubstr(kServerId));
  EXPECT_THAT(d.detail, HasSubstr("expired"));
  EXPECT_STREQ(DrainReasonName(d.reason), "expired");
}

TEST_F(SessionDrainTest, PeerCertificateExpiringDrains) {
  TlsContexts current;
  current.by_identity[kClientId] = Contexts(kClientId, absl::Hours(1));
  const hbone::TlsContext& client = *current.by_identity[kClientId].client;
  const absl::Time peer = clock_.Now() + absl::Seconds(30);

  EXPECT_EQ(CredentialDeadline(client, peer), peer);
  EXPECT_FALSE(DecideDrain(client, peer, &current, clock_.Now()).drain());
  clock_.Advance(absl::Seconds(30));
  EXPECT_EQ(DecideDrain(client, peer, &current, clock_.Now()).reason, DrainReason::kPeerExpired);
  // Unknown peer expiry (handshake not done) never drains by itself.
  EXPECT_FALSE(DecideDrain(client, absl::InfiniteFuture(), &current, clock_.Now()).drain());
}

TEST_F(SessionDrainTest, RenewedCertificateKeepsOldSessionsUntilTheirOwnExpiry) {
  TlsContexts before;
  before.by_identity[kServerId] = Contexts(kServerId, absl::Minutes(10));
  auto old_server = before.by_identity[kServerId].server;
  TlsContexts after;
  after.by_identity[kServerId] = Contexts(kServerId, absl::Minutes(20));
  ASSERT_NE(after.by_identity[kServerId].server.get(), old_server.get());

  EXPECT_FALSE(DecideDrain(*old_server, absl::InfiniteFuture(), &after, clock_.Now()).drain());
  clock_.Advance(absl::Minutes(10));
  EXPECT_EQ(DecideDrain(*old_server, absl::InfiniteFuture(), &after, clock_.Now()).reason,
            DrainReason::kExpired);
}

TEST_F(SessionDrainTest, ExpiredOnTheMainThreadDrainsWithItsReason) {
  TlsContexts before;
  before.by_identity[kServerId] = Contexts(kServerId, absl::Minutes(10));
  auto server = before.by_identity[kServerId].server;
  TlsContexts after;
  after.SetMissing(kServerId, DrainReason::kExpired, "certificate expired");
  DrainDecision d = DecideDrain(*server, absl::InfiniteFuture(), &after, clock_.Now());
  EXPECT_EQ(d.reason, DrainReason::kExpired);
  EXPECT_THAT(d.detail, HasSubstr("certificate expired"));
}

TEST_F(SessionDrainTest, TrustDomainChangeDrains) {
  TlsContexts before;
  before.by_identity[kServerId] = Contexts(kServerId, absl::Minutes(10));
  auto server = before.by_identity[kServerId].server;
  TlsContexts after;
  after.SetMissing(kServerId, DrainReason::kOutOfTrustDomain,
                   "TLS context: our identity is not in trust domain example.org");
  DrainDecision d = DecideDrain(*server, absl::InfiniteFuture(), &after, clock_.Now());
  EXPECT_EQ(d.reason, DrainReason::kOutOfTrustDomain);
  EXPECT_STREQ(DrainReasonName(d.reason), "out_of_trust_domain");
  EXPECT_THAT(d.detail, HasSubstr("example.org"));
}

TEST_F(SessionDrainTest, IdentityRemovedDrains) {
  TlsContexts before;
  before.by_identity[kClientId] = Contexts(kClientId, absl::Minutes(10));
  auto client = before.by_identity[kClientId].client;
  TlsContexts after;  // no entry at all: the last pod with the identity left
  EXPECT_EQ(DecideDrain(*client, absl::InfiniteFuture(), &after, clock_.Now()).reason,
            DrainReason::kRemoved);
}

TEST_F(SessionDrainTest, TrustBundleNoLongerCoveringTheCertificateDrains) {
  TlsContexts before;
  before.by_identity[kClientId] = Contexts(kClientId, absl::Minutes(10));
  auto client = before.by_identity[kClientId].client;
  // A new CA: the identity is re-issued under it and the bundle holds only the new root.
  auto other = TestPki::Create("new root");
  ASSERT_TRUE(other.ok()) << other.status();
  TlsContexts after;
  after.by_identity[kClientId] = Contexts(kClientId, absl::Minutes(10), other->get());
  DrainDecision d = DecideDrain(*client, absl::InfiniteFuture(), &after, clock_.Now());
  EXPECT_EQ(d.reason, DrainReason::kNotTrusted);
  EXPECT_THAT(d.detail, HasSubstr("trust bundle"));
  // The new context itself is fine.
  EXPECT_FALSE(DecideDrain(*after.by_identity[kClientId].client, absl::InfiniteFuture(), &after,
                           clock_.Now())
                   .drain());
}

TEST_F(SessionDrainTest, ContextsInForceKeepTheirSessions) {
  TlsContexts current;
  current.by_identity[kClientId] = Contexts(kClientId, absl::Minutes(10));
  const auto& pair = current.by_identity[kClientId];
  EXPECT_FALSE(DecideDrain(*pair.client, absl::InfiniteFuture(), &current, clock_.Now()).drain());
  EXPECT_FALSE(DecideDrain(*pair.server, absl::InfiniteFuture(), &current, clock_.Now()).drain());
  // Before the first contexts arrive nothing but time can drain.
  EXPECT_FALSE(DecideDrain(*pair.client, absl::InfiniteFuture(), nullptr, clock_.Now()).drain());
}

}  // namespace
}  // namespace ambit::tunnel
