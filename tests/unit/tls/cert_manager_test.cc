#include "agent/tls/cert_manager.h"

#include <openssl/evp.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/tls/keys.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_signer.h"

namespace ambit::tls {
namespace {

using ::ambit::tls::testing::FakeCsrSigner;
using ::ambit::tls::testing::TestCa;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kWeb[] = "spiffe://cluster.local/ns/default/sa/web";
constexpr char kDb[] = "spiffe://cluster.local/ns/default/sa/db";

CertManagerOptions Seeded(uint64_t seed = 42) {
  CertManagerOptions options;
  options.seed = seed;
  return options;
}

class CertManagerTest : public ::testing::Test {
 protected:
  void SetUp() override { Make(Seeded()); }

  void Make(CertManagerOptions options) {
    auto ca = TestCa::Create(&clock_);
    ASSERT_TRUE(ca.ok()) << ca.status();
    ca_ = *std::move(ca);
    signer_ = std::make_unique<FakeCsrSigner>(ca_.get(), &clock_);
    manager_ = std::make_unique<CertManager>(signer_.get(), &clock_, options);
    signer_->Attach(manager_.get());
  }

  CertStatus Status(const std::string& identity) const {
    for (const CertStatus& status : manager_->Statuses()) {
      if (status.identity == identity) return status;
    }
    ADD_FAILURE() << "no status for " << identity;
    return {};
  }
  CertState State(const std::string& identity) const { return Status(identity).state; }

  // Moves the clock to the next deadline and ticks; returns false if there was none.
  bool StepToDeadline() {
    const absl::Time next = manager_->NextDeadline();
    if (next == absl::InfiniteFuture()) return false;
    if (next > clock_.Now()) clock_.Set(next);
    manager_->Tick();
    return true;
  }

  // Adds `identity` and has its first CSR signed with a 24h leaf.
  std::shared_ptr<const CertifiedKey> Enroll(const std::string& identity) {
    manager_->AddRef(identity);
    EXPECT_TRUE(signer_->SignNext().ok());
    auto cert = manager_->Get(identity);
    EXPECT_NE(cert, nullptr);
    return cert;
  }

  FakeClock clock_;
  std::unique_ptr<TestCa> ca_;
  std::unique_ptr<FakeCsrSigner> signer_;
  std::unique_ptr<CertManager> manager_;
};

TEST(CertStateTest, Names) {
  EXPECT_STREQ(CertStateName(CertState::kPending), "pending");
  EXPECT_STREQ(CertStateName(CertState::kValid), "valid");
  EXPECT_STREQ(CertStateName(CertState::kRenewing), "renewing");
  EXPECT_STREQ(CertStateName(CertState::kExpired), "expired");
  EXPECT_STREQ(CertStateName(CertState::kFailed), "failed");
}

TEST_F(CertManagerTest, EmptyManagerHasNoDeadline) {
  EXPECT_EQ(manager_->NextDeadline(), absl::InfiniteFuture());
  EXPECT_THAT(manager_->Statuses(), IsEmpty());
  EXPECT_EQ(manager_->Get(kWeb), nullptr);
  manager_->Release(kWeb);  // unknown: ignored
  manager_->Tick();
}

TEST_F(CertManagerTest, PendingThenValid) {
  manager_->AddRef(kWeb);
  ASSERT_EQ(signer_->queued(), 1u);
  EXPECT_EQ(signer_->front().identity, kWeb);
  EXPECT_EQ(State(kWeb), CertState::kPending);
  EXPECT_EQ(manager_->Get(kWeb), nullptr);

  // The CSR is for this identity and nothing else.
  auto csr = ParseCsrPem(signer_->front().csr_pem);
  ASSERT_TRUE(csr.ok()) << csr.status();
  auto names = CsrSubjectAltNames(csr->get());
  ASSERT_TRUE(names.ok());
  EXPECT_THAT(names->uris, ::testing::ElementsAre(kWeb));

  ASSERT_TRUE(signer_->SignNext().ok());
  auto cert = manager_->Get(kWeb);
  ASSERT_NE(cert, nullptr);
  EXPECT_EQ(cert->identity, kWeb);
  ASSERT_EQ(cert->chain.size(), 2u);
  EXPECT_EQ(X509_check_private_key(cert->chain[0].get(), cert->key.get()), 1);
  EXPECT_EQ(cert->not_before, clock_.Now());
  EXPECT_EQ(cert->not_after, clock_.Now() + absl::Hours(24));

  const CertStatus status = Status(kWeb);
  EXPECT_EQ(status.state, CertState::kValid);
  EXPECT_EQ(status.serial_hex, cert->serial_hex);
  EXPECT_EQ(status.issuer, "O = cluster.local, CN = ambit test root");
  EXPECT_EQ(status.not_after, cert->not_after);
  EXPECT_EQ(status.refs, 1);
  EXPECT_EQ(status.last_error, "");
  // The chain as presented (leaf first), public: never the key.
  auto reported = ParsePemChain(status.chain_pem);
  ASSERT_TRUE(reported.ok()) << reported.status();
  ASSERT_EQ(reported->size(), cert->chain.size());
  for (size_t i = 0; i < cert->chain.size(); ++i) {
    EXPECT_EQ(X509_cmp((*reported)[i].get(), cert->chain[i].get()), 0) << i;
  }
  EXPECT_EQ(status.chain_pem.find("PRIVATE KEY"), std::string::npos);
}

TEST_F(CertManagerTest, SynchronousSignerIsValidAtOnce) {
  signer_->set_mode(FakeCsrSigner::Mode::kSign);
  manager_->AddRef(kWeb);
  EXPECT_EQ(State(kWeb), CertState::kValid);
  EXPECT_NE(manager_->Get(kWeb), nullptr);
  EXPECT_EQ(signer_->history().size(), 1u);
}

TEST_F(CertManagerTest, RenewsAtHalfLifeWithinJitterServingTheOldCertMeanwhile) {
  const absl::Time issued = clock_.Now();
  auto first = Enroll(kWeb);
  ASSERT_NE(first, nullptr);
  // 24h lifetime, renew at 50% +- 5%: between 10.8h and 13.2h.
  const absl::Time earliest = issued + absl::Minutes(648);
  const absl::Time latest = issued + absl::Minutes(792);
  const absl::Time renewal = manager_->NextDeadline();
  EXPECT_GE(renewal, earliest);
  EXPECT_LE(renewal, latest);

  clock_.Set(earliest - absl::Seconds(1));
  manager_->Tick();
  EXPECT_EQ(signer_->queued(), 0u);
  EXPECT_EQ(State(kWeb), CertState::kValid);

  ASSERT_TRUE(StepToDeadline());
  ASSERT_EQ(signer_->queued(), 1u);
  EXPECT_EQ(clock_.Now(), renewal);
  EXPECT_EQ(State(kWeb), CertState::kRenewing);
  EXPECT_EQ(manager_->Get(kWeb), first);  // the old one is still served

  ASSERT_TRUE(signer_->SignNext().ok());
  auto second = manager_->Get(kWeb);
  ASSERT_NE(second, nullptr);
  EXPECT_NE(second, first);
  EXPECT_EQ(State(kWeb), CertState::kValid);
  EXPECT_NE(second->serial_hex, first->serial_hex);
  EXPECT_NE(EVP_PKEY_cmp(second->key.get(), first->key.get()), 1) << "renewal reused the key";
  EXPECT_EQ(second->not_before, absl::FromUnixSeconds(absl::ToUnixSeconds(renewal)));
  // Holders of the old snapshot keep a usable object.
  EXPECT_EQ(X509_check_private_key(first->chain[0].get(), first->key.get()), 1);
}

TEST_F(CertManagerTest, JitterSpreadsRenewalsAcrossTheWindow) {
  std::set<absl::Time> renewals;
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    Make(Seeded(seed));
    const absl::Time issued = clock_.Now();
    Enroll(kWeb);
    const absl::Time renewal = manager_->NextDeadline();
    EXPECT_GE(renewal, issued + absl::Minutes(648)) << seed;
    EXPECT_LE(renewal, issued + absl::Minutes(792)) << seed;
    renewals.insert(renewal);
  }
  EXPECT_GT(renewals.size(), 15u);
}

TEST_F(CertManagerTest, SameSeedSameSchedule) {
  Enroll(kWeb);
  const absl::Time a = manager_->NextDeadline();
  Make(Seeded());
  Enroll(kWeb);
  EXPECT_EQ(manager_->NextDeadline(), a);
}

TEST_F(CertManagerTest, BackoffDoublesUpToTheCapAndResetsAfterSuccess) {
  CertManagerOptions options = Seeded(7);
  options.initial_backoff = absl::Seconds(1);
  options.max_backoff = absl::Seconds(16);
  Make(options);
  signer_->set_mode(FakeCsrSigner::Mode::kFail);

  manager_->AddRef(kWeb);
  EXPECT_EQ(State(kWeb), CertState::kFailed);
  EXPECT_THAT(Status(kWeb).last_error, HasSubstr("fake CA is down"));
  EXPECT_EQ(manager_->Get(kWeb), nullptr);
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(StepToDeadline());
  const auto& history = signer_->history();
  ASSERT_EQ(history.size(), 8u);
  const double expected[] = {1, 2, 4, 8, 16, 16, 16};
  for (size_t i = 0; i < 7; ++i) {
    const double gap = absl::ToDoubleSeconds(history[i + 1].at - history[i].at);
    EXPECT_GE(gap, expected[i] * 0.95) << "retry " << i;
    EXPECT_LE(gap, std::min(expected[i] * 1.05, 16.0)) << "retry " << i;
  }
  // Every attempt has its own key.
  EXPECT_NE(history[0].csr_pem, history[1].csr_pem);
  EXPECT_EQ(State(kWeb), CertState::kFailed);

  signer_->set_mode(FakeCsrSigner::Mode::kSign);
  ASSERT_TRUE(StepToDeadline());
  EXPECT_EQ(State(kWeb), CertState::kValid);
  EXPECT_EQ(Status(kWeb).last_error, "");
  ASSERT_NE(manager_->Get(kWeb), nullptr);

  // A failing renewal starts again from the initial back-off.
  signer_->set_mode(FakeCsrSigner::Mode::kFail);
  ASSERT_TRUE(StepToDeadline());  // renewal due
  EXPECT_EQ(State(kWeb), CertState::kRenewing);
  EXPECT_THAT(Status(kWeb).last_error, HasSubstr("fake CA is down"));
  EXPECT_NE(manager_->Get(kWeb), nullptr);
  const size_t before = history.size();
  ASSERT_TRUE(StepToDeadline());
  ASSERT_EQ(history.size(), before + 1);
  const double gap = absl::ToDoubleSeconds(history[before].at - history[before - 1].at);
  EXPECT_GE(gap, 0.95);
  EXPECT_LE(gap, 1.05);
}

TEST_F(CertManagerTest, NeverServesAnExpiredCertificate) {
  auto cert = Enroll(kWeb);
  ASSERT_NE(cert, nullptr);
  const absl::Time not_after = cert->not_after;
  signer_->set_mode(FakeCsrSigner::Mode::kFail);
  while (clock_.Now() < not_after) {
    EXPECT_EQ(manager_->Get(kWeb), cert);
    if (clock_.Now() >= not_after - absl::Hours(10)) {
      EXPECT_EQ(State(kWeb), CertState::kRenewing);
      EXPECT_THAT(Status(kWeb).last_error, HasSubstr("fake CA is down"));
    }
    ASSERT_TRUE(StepToDeadline());
  }
  EXPECT_EQ(clock_.Now(), not_after);  // expiry is itself a deadline
  EXPECT_EQ(manager_->Get(kWeb), nullptr);
  EXPECT_EQ(State(kWeb), CertState::kExpired);
  EXPECT_EQ(Status(kWeb).serial_hex, cert->serial_hex);  // still shown, as expired

  // Retries go on; the first success brings it back.
  signer_->set_mode(FakeCsrSigner::Mode::kSign);
  ASSERT_TRUE(StepToDeadline());
  EXPECT_EQ(State(kWeb), CertState::kValid);
  EXPECT_NE(manager_->Get(kWeb), nullptr);
}

TEST_F(CertManagerTest, GetChecksTheClockNotJustTheState) {
  auto cert = Enroll(kWeb);
  ASSERT_NE(cert, nullptr);
  clock_.Set(cert->not_after);  // no Tick: the state still says valid
  EXPECT_EQ(State(kWeb), CertState::kValid);
  EXPECT_EQ(manager_->Get(kWeb), nullptr);
  clock_.Set(cert->not_after - absl::Seconds(1));
  EXPECT_EQ(manager_->Get(kWeb), cert);
}

TEST_F(CertManagerTest, RejectsAChainForAnotherIdentity) {
  manager_->AddRef(kWeb);
  TestCa::LeafOptions other;
  other.uri_override = kDb;
  ASSERT_TRUE(signer_->SignNext(other).ok());
  EXPECT_EQ(manager_->Get(kWeb), nullptr);
  const CertStatus status = Status(kWeb);
  EXPECT_EQ(status.state, CertState::kFailed);
  EXPECT_THAT(status.last_error, HasSubstr(kDb));
  EXPECT_EQ(status.serial_hex, "");

  // The retry brings a fresh key and CSR, and a right answer is accepted.
  ASSERT_TRUE(StepToDeadline());
  ASSERT_EQ(signer_->queued(), 1u);
  EXPECT_NE(signer_->front().csr_pem, signer_->history()[0].csr_pem);
  ASSERT_TRUE(signer_->SignNext().ok());
  EXPECT_EQ(State(kWeb), CertState::kValid);
}

TEST_F(CertManagerTest, RejectsAChainNotMatchingTheKey) {
  manager_->AddRef(kWeb);
  TestCa::LeafOptions foreign;
  foreign.foreign_key = true;
  ASSERT_TRUE(signer_->SignNext(foreign).ok());
  EXPECT_EQ(manager_->Get(kWeb), nullptr);
  EXPECT_EQ(State(kWeb), CertState::kFailed);
  EXPECT_THAT(Status(kWeb).last_error, HasSubstr("does not match"));
}

TEST_F(CertManagerTest, RejectsExpiredAndGarbageChains) {
  manager_->AddRef(kWeb);
  TestCa::LeafOptions stale;
  stale.backdate = absl::Hours(2);
  stale.lifetime = absl::Hours(1);
  ASSERT_TRUE(signer_->SignNext(stale).ok());
  EXPECT_EQ(State(kWeb), CertState::kFailed);
  EXPECT_THAT(Status(kWeb).last_error, HasSubstr("expired"));

  ASSERT_TRUE(StepToDeadline());
  ASSERT_EQ(signer_->queued(), 1u);
  manager_->OnSigned(signer_->TakeNext().id, std::vector<std::string>{"garbage"});
  EXPECT_EQ(State(kWeb), CertState::kFailed);
  EXPECT_THAT(Status(kWeb).last_error, HasSubstr("bad chain"));

  ASSERT_TRUE(StepToDeadline());
  manager_->OnSigned(signer_->TakeNext().id, std::vector<std::string>{});
  EXPECT_EQ(State(kWeb), CertState::kFailed);
  EXPECT_EQ(manager_->Get(kWeb), nullptr);
}

TEST_F(CertManagerTest, UnansweredRequestTimesOutAndItsLateAnswerIsIgnored) {
  manager_->AddRef(kWeb);
  ASSERT_EQ(signer_->queued(), 1u);
  EXPECT_EQ(manager_->NextDeadline(), clock_.Now() + absl::Minutes(1));
  ASSERT_TRUE(StepToDeadline());
  EXPECT_EQ(State(kWeb), CertState::kFailed);
  EXPECT_THAT(Status(kWeb).last_error, HasSubstr("no answer"));

  ASSERT_TRUE(signer_->SignNext().ok());  // the superseded request
  EXPECT_EQ(State(kWeb), CertState::kFailed);
  EXPECT_EQ(manager_->Get(kWeb), nullptr);

  ASSERT_TRUE(StepToDeadline());  // retry
  ASSERT_TRUE(signer_->SignNext().ok());
  EXPECT_EQ(State(kWeb), CertState::kValid);
}

TEST_F(CertManagerTest, SharedByPodsAndDroppedWithTheLast) {
  manager_->AddRef(kWeb);
  manager_->AddRef(kWeb);
  EXPECT_EQ(signer_->history().size(), 1u);
  ASSERT_TRUE(signer_->SignNext().ok());
  EXPECT_EQ(Status(kWeb).refs, 2);

  manager_->Release(kWeb);
  EXPECT_EQ(Status(kWeb).refs, 1);
  EXPECT_NE(manager_->Get(kWeb), nullptr);

  manager_->Release(kWeb);
  EXPECT_THAT(manager_->Statuses(), IsEmpty());
  EXPECT_EQ(manager_->Get(kWeb), nullptr);
  EXPECT_EQ(manager_->NextDeadline(), absl::InfiniteFuture());
}

TEST_F(CertManagerTest, LateAnswerAfterDropIsIgnored) {
  manager_->AddRef(kWeb);
  manager_->Release(kWeb);
  ASSERT_EQ(signer_->queued(), 1u);
  ASSERT_TRUE(signer_->SignNext().ok());
  EXPECT_THAT(manager_->Statuses(), IsEmpty());
  EXPECT_EQ(manager_->Get(kWeb), nullptr);

  // Re-added: a new request; the old answer arriving now must not satisfy it.
  manager_->AddRef(kWeb);
  manager_->AddRef(kDb);
  ASSERT_EQ(signer_->queued(), 2u);
  const FakeCsrSigner::Request stale = signer_->history()[0];
  auto chain = ca_->Sign(stale.csr_pem);
  ASSERT_TRUE(chain.ok());
  manager_->OnSigned(stale.id, *chain);
  EXPECT_EQ(State(kWeb), CertState::kPending);
  EXPECT_EQ(manager_->Get(kWeb), nullptr);
  // Nor does an answer meant for another identity's request.
  manager_->OnSigned(signer_->history()[2].id, *chain);
  EXPECT_EQ(State(kDb), CertState::kFailed);

  ASSERT_TRUE(signer_->SignNext().ok());
  EXPECT_EQ(State(kWeb), CertState::kValid);
}

TEST_F(CertManagerTest, IdentitiesAreIndependentAndListedInOrder) {
  manager_->AddRef(kWeb);
  manager_->AddRef(kDb);
  ASSERT_TRUE(signer_->SignNext().ok());  // web
  signer_->FailNext(absl::PermissionDeniedError("not entitled"));
  const auto statuses = manager_->Statuses();
  ASSERT_EQ(statuses.size(), 2u);
  EXPECT_EQ(statuses[0].identity, kDb);
  EXPECT_EQ(statuses[0].state, CertState::kFailed);
  EXPECT_THAT(statuses[0].last_error, HasSubstr("not entitled"));
  EXPECT_EQ(statuses[1].identity, kWeb);
  EXPECT_EQ(statuses[1].state, CertState::kValid);
  EXPECT_EQ(manager_->Get(kDb), nullptr);
  EXPECT_NE(manager_->Get(kWeb), nullptr);
}

// The built-in CA backdates notBefore by a minute for peers with slow clocks.
constexpr absl::Duration kCaBackdate = absl::Minutes(1);

// A leaf as the built-in CA issues it for `ttl`: valid from a minute ago until ttl from now.
TestCa::LeafOptions LikeTheCa(absl::Duration ttl) {
  TestCa::LeafOptions leaf;
  leaf.backdate = kCaBackdate;
  leaf.lifetime = ttl + kCaBackdate;
  return leaf;
}

TEST_F(CertManagerTest, TwoMinuteLifetimeRenewsAtHalfOfWhatIsLeft) {
  signer_->set_leaf_options(LikeTheCa(absl::Minutes(2)));
  const absl::Time issued = clock_.Now();
  Enroll(kWeb);
  // Half of the two usable minutes, +- 5%: not half of notBefore..notAfter (a quarter of the
  // way from issue, as counting from the backdated notBefore gave).
  const absl::Time renewal = manager_->NextDeadline();
  EXPECT_GE(renewal, issued + absl::Seconds(54));
  EXPECT_LE(renewal, issued + absl::Seconds(66));
}

TEST_F(CertManagerTest, BackdatingDoesNotShortenTheSchedule) {
  for (absl::Duration backdate : {absl::Minutes(1), absl::Hours(1), absl::Hours(12)}) {
    Make(Seeded(3));
    TestCa::LeafOptions leaf;
    leaf.backdate = backdate;
    leaf.lifetime = absl::Hours(24) + backdate;
    signer_->set_leaf_options(leaf);
    const absl::Time issued = clock_.Now();
    Enroll(kWeb);
    const absl::Time renewal = manager_->NextDeadline();
    EXPECT_GE(renewal, issued + absl::Minutes(648)) << backdate;
    EXPECT_LE(renewal, issued + absl::Minutes(792)) << backdate;
  }
}

// Signs every request at once and steps the clock from deadline to deadline for `span`; returns
// how many certificates were signed. Bounded, so that a storm shows as a large count.
size_t SignedWithin(FakeClock& clock, CertManager& manager, FakeCsrSigner& signer,
                    absl::Duration span) {
  const absl::Time end = clock.Now() + span;
  for (int step = 0; step < 10000; ++step) {
    const absl::Time next = manager.NextDeadline();
    if (next == absl::InfiniteFuture() || next > end) break;
    if (next > clock.Now()) clock.Set(next);
    manager.Tick();
  }
  return signer.history().size();
}

TEST_F(CertManagerTest, MinimumLifetimeSignsAboutTwicePerLifetime) {
  signer_->set_mode(FakeCsrSigner::Mode::kSign);
  signer_->set_leaf_options(LikeTheCa(absl::Minutes(1)));
  manager_->AddRef(kWeb);
  ASSERT_EQ(State(kWeb), CertState::kValid);
  // Two lifetimes: the first certificate plus one renewal every ~30 s.
  const size_t signed_count =
      SignedWithin(clock_, *manager_, *signer_, absl::Minutes(2) - absl::Seconds(1));
  EXPECT_GE(signed_count, 4u);
  EXPECT_LE(signed_count, 5u);
  EXPECT_EQ(State(kWeb), CertState::kValid);
}

TEST_F(CertManagerTest, NearlyExpiredCertificatesCannotCauseAStorm) {
  // A CA that issues what is valid for half a second (or has already expired, by the time it
  // is checked) is asked once per min_renew_delay or back-off, never in a loop.
  signer_->set_mode(FakeCsrSigner::Mode::kSign);
  signer_->set_leaf_options(LikeTheCa(absl::Milliseconds(500)));
  manager_->AddRef(kWeb);
  manager_->AddRef(kDb);
  const size_t signed_count = SignedWithin(clock_, *manager_, *signer_, absl::Seconds(15));
  // Per identity: no request sooner than the initial back-off (1 s, jittered) after the last,
  // and after a certificate that was usable, not before min_renew_delay (5 s). Before the fix,
  // thousands in the same clock tick.
  EXPECT_GE(signed_count, 4u);
  EXPECT_LE(signed_count, 2u * 8u);
  std::map<std::string, absl::Time> last;
  for (const auto& request : signer_->history()) {
    auto it = last.find(request.identity);
    if (it != last.end()) {
      EXPECT_GE(request.at - it->second, absl::Milliseconds(900));
    }
    last[request.identity] = request.at;
  }
}

}  // namespace
}  // namespace ambit::tls
