// The data plane's control decisions (agent/tunnel/reconciler.h): events in, actions out, with a
// clock moved by hand, a test CA answering CSRs and PodSockets without a kernel. No root, no
// sockets beyond /dev/null descriptors standing in for listeners.

#include "agent/tunnel/reconciler.h"

#include <fcntl.h>
#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/common/clock.h"
#include "agent/identity/spiffe_id.h"
#include "ambit/dataplane/v1/dataplane.pb.h"
#include "tests/fakes/fake_pod_sockets.h"
#include "tests/fakes/fake_signer.h"

namespace ambit::tunnel {
namespace {

namespace pb = ::ambit::dataplane::v1;
using tls::testing::TestCa;

constexpr char kApiId[] = "spiffe://cluster.local/ns/backend/sa/api";
constexpr char kWebId[] = "spiffe://cluster.local/ns/frontend/sa/web";

template <typename T>
std::vector<T> All(const Actions& actions) {
  std::vector<T> out;
  for (const auto& a : actions) {
    if (const T* t = std::get_if<T>(&a)) out.push_back(*t);
  }
  return out;
}

template <typename T>
bool Has(const Actions& actions) {
  return !All<T>(actions).empty();
}

UniqueFd DevNull() { return UniqueFd(open("/dev/null", O_RDONLY | O_CLOEXEC)); }

// A pod with a netns and two listeners (IPv4 outbound and HBONE).
std::shared_ptr<Pod> MakePod(const std::string& ns, const std::string& name, const std::string& ip,
                             const std::string& spiffe_id) {
  auto pod = std::make_shared<Pod>();
  pod->workload.namespace_name = ns;
  pod->workload.name = name;
  pod->workload.service_account = name;
  pod->workload.enrolled_here = true;
  if (!spiffe_id.empty()) {
    auto id = identity::ParseSpiffeId(spiffe_id);
    EXPECT_TRUE(id.ok()) << id.status();
    if (id.ok()) pod->workload.identity = *id;
  }
  if (!ip.empty()) {
    auto parsed = IpAddress::Parse(ip);
    EXPECT_TRUE(parsed.ok()) << parsed.status();
    if (parsed.ok()) pod->workload.ips.push_back(*parsed);
  }
  pod->uid = pod->workload.Key();
  pod->spiffe_id = spiffe_id;
  pod->netns_cookie = 42;
  pod->netns = DevNull();
  pod->outbound_v4 = DevNull();
  pod->hbone_v4 = DevNull();
  return pod;
}

// A snapshot of `version` in which the pods at `local_ips` are enrolled here (PERMISSIVE).
std::shared_ptr<const MeshSnapshot> Snapshot(uint64_t version, std::vector<std::string> local_ips,
                                             const std::string& trust_domain = "cluster.local") {
  pb::Snapshot s;
  s.set_version(version);
  s.set_trust_domain(trust_domain);
  int n = 0;
  for (const auto& ip : local_ips) {
    auto* w = s.add_workloads();
    w->set_namespace_("ns");
    w->set_name(absl::StrCat("w", n++));
    w->set_spiffe_id(absl::StrCat("spiffe://", trust_domain, "/ns/ns/sa/w"));
    w->add_ips(ip);
    w->set_in_mesh(true);
    w->set_enrolled_here(true);
    w->mutable_mtls()->set_mode(pb::MTLS_MODE_PERMISSIVE);
  }
  auto mapped = MeshSnapshot::FromProto(s);
  EXPECT_TRUE(mapped.ok()) << mapped.status();
  return mapped.ok() ? *mapped : nullptr;
}

class ReconcilerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Real time, so that the TLS contexts built from the test CA's leaves also verify for
    // BoringSSL; the test moves it from there by hand.
    clock_.Set(absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now())));
    auto ca = TestCa::Create(&clock_);
    ASSERT_TRUE(ca.ok()) << ca.status();
    ca_ = *std::move(ca);
    tls::CertManagerOptions options;
    options.jitter = 0;  // renewals exactly at the configured fraction
    options.seed = 1;
    r_ = std::make_unique<Reconciler>(&clock_, &sockets_, options);
  }

  // Connected, with workers, and generation 1 knowing the pods at `ips`.
  void Ready(std::vector<std::string> ips = {"198.18.0.5"}) {
    r_->Connected();
    r_->WorkersStarted();
    r_->TrustBundle({ca_->root_pem()});
    Actions applied = r_->ApplySnapshot(1, Snapshot(1, std::move(ips)));
    ASSERT_EQ(All<action::SendAck>(applied).size(), 1u);
  }

  // Signs every SendCsr in `actions` with a leaf of `lifetime`; returns what the answers caused.
  Actions SignAll(const Actions& actions, absl::Duration lifetime = absl::Hours(24)) {
    Actions out;
    for (const auto& csr : All<action::SendCsr>(actions)) {
      TestCa::LeafOptions leaf;
      leaf.lifetime = lifetime;
      auto chain = ca_->Sign(csr.csr_pem, leaf);
      EXPECT_TRUE(chain.ok()) << chain.status();
      for (auto& a : r_->CsrAnswered(csr.request_id, std::move(chain))) out.push_back(std::move(a));
    }
    for (auto& a : r_->Tick()) out.push_back(std::move(a));
    return out;
  }

  tls::CertState State(const std::string& identity) {
    for (const auto& c : r_->certs().Statuses()) {
      if (c.identity == identity) return c.state;
    }
    ADD_FAILURE() << "no certificate entry for " << identity;
    return tls::CertState::kFailed;
  }

  FakeClock clock_;
  testing::FakePodSockets sockets_;
  std::unique_ptr<TestCa> ca_;
  std::unique_ptr<Reconciler> r_;
};

// --- control messages -------------------------------------------------------------------------

TEST_F(ReconcilerTest, NewAgentGetsHelloThenEveryPodHandedBack) {
  r_->AddPod(MakePod("backend", "api", "198.18.0.5", kApiId));
  r_->AddPod(MakePod("frontend", "web", "198.18.0.6", kWebId));
  ASSERT_EQ(r_->ApplySnapshot(7, Snapshot(7, {})).size(), 2u);  // installed, acked

  Actions actions = r_->Connected();
  ASSERT_EQ(actions.size(), 3u);
  const auto* hello = std::get_if<action::SendHello>(&actions[0]);
  ASSERT_NE(hello, nullptr) << "hello goes first";
  EXPECT_EQ(hello->pod_count, 2u);
  EXPECT_EQ(hello->snapshot_version, 7u);
  auto handed = All<action::SendHandBack>(actions);
  ASSERT_EQ(handed.size(), 2u);
  EXPECT_EQ(handed[0].pod->uid, "backend/api");
  EXPECT_EQ(handed[1].pod->uid, "frontend/web");
  EXPECT_EQ(handed[1].pod->workload.ips[0].ToString(), "198.18.0.6");
  EXPECT_EQ(r_->session(), 1u);
  r_->Connected();
  EXPECT_EQ(r_->session(), 2u);
}

TEST_F(ReconcilerTest, StaleGenerationInTheSameSessionIsRefusedAndChangesNothing) {
  r_->Connected();
  Actions five = r_->ApplySnapshot(5, Snapshot(5, {"198.18.0.5"}));
  ASSERT_EQ(All<action::SendAck>(five).size(), 1u);
  EXPECT_EQ(All<action::SendAck>(five)[0].version, 5u);

  Actions three = r_->ApplySnapshot(3, Snapshot(3, {}));
  EXPECT_FALSE(Has<action::InstallSnapshot>(three)) << "an older generation must not apply";
  EXPECT_FALSE(Has<action::SetFailClosed>(three)) << "generation 5 is still in force";
  auto nacks = All<action::SendNack>(three);
  ASSERT_EQ(nacks.size(), 1u);
  EXPECT_EQ(nacks[0].version, 3u);
  EXPECT_TRUE(absl::StrContains(nacks[0].error, "stale")) << nacks[0].error;
  EXPECT_EQ(r_->snapshot_version(), 5u);
  EXPECT_EQ(r_->snapshots_rejected(), 1u);

  // A restarted agent numbers afresh: its first generation applies, whatever its number.
  r_->Disconnected();
  r_->Connected();
  Actions fresh = r_->ApplySnapshot(1, Snapshot(1, {}));
  EXPECT_TRUE(Has<action::InstallSnapshot>(fresh));
  EXPECT_EQ(r_->snapshot_version(), 1u);
}

TEST_F(ReconcilerTest, UnreadableSnapshotFailsClosedUntilANewerOneApplies) {
  r_->Connected();
  r_->ApplySnapshot(1, Snapshot(1, {}));
  Actions refused = r_->ApplySnapshot(2, absl::InvalidArgumentError("workload a/b: mtls.mode"));
  auto closed = All<action::SetFailClosed>(refused);
  ASSERT_EQ(closed.size(), 1u);
  EXPECT_TRUE(absl::StrContains(closed[0].reason, "generation 2")) << closed[0].reason;
  EXPECT_TRUE(absl::StrContains(closed[0].reason, "mtls.mode")) << closed[0].reason;
  ASSERT_EQ(All<action::SendNack>(refused).size(), 1u);
  EXPECT_FALSE(Has<action::InstallSnapshot>(refused));
  EXPECT_EQ(r_->failed_version(), 2u);
  EXPECT_EQ(r_->snapshot_version(), 1u);

  // Workers started now learn the fail-closed state with everything else.
  EXPECT_EQ(All<action::SetFailClosed>(r_->WorkersStarted()).size(), 1u);

  Actions lifted = r_->ApplySnapshot(3, Snapshot(3, {}));
  auto open = All<action::SetFailClosed>(lifted);
  ASSERT_EQ(open.size(), 1u);
  EXPECT_EQ(open[0].reason, "");
  EXPECT_EQ(r_->failed_version(), 0u);
  // The order the executor must keep: the workers switch before the agent hears the ack.
  ASSERT_EQ(lifted.size(), 3u);
  EXPECT_TRUE(std::holds_alternative<action::InstallSnapshot>(lifted[0]));
  EXPECT_TRUE(std::holds_alternative<action::SendAck>(lifted[2]));
}

TEST_F(ReconcilerTest, UndeliveredGenerationFailsClosedOnlyIfNewerThanTheOneInForce) {
  r_->Connected();
  r_->ApplySnapshot(4, Snapshot(4, {}));
  EXPECT_TRUE(r_->SnapshotFailed(4, "too big").empty());
  EXPECT_TRUE(r_->SnapshotFailed(3, "too big").empty());
  auto closed = All<action::SetFailClosed>(r_->SnapshotFailed(5, "too big"));
  ASSERT_EQ(closed.size(), 1u);
  EXPECT_TRUE(absl::StrContains(closed[0].reason, "could not deliver it: too big"));
}

TEST_F(ReconcilerTest, RemovalOfAnUnknownPodIsStillAnswered) {
  Actions actions = r_->RemovePod("nobody/here");
  auto removed = All<action::RemovePod>(actions);
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_EQ(removed[0].uid, "nobody/here");
  EXPECT_EQ(removed[0].pod, nullptr);
}

TEST_F(ReconcilerTest, RemovalHandsOverThePodAndDropsItsIdentity) {
  Ready();
  auto pod = MakePod("backend", "api", "198.18.0.5", kApiId);
  const Pod* raw = pod.get();
  r_->AddPod(std::move(pod));
  ASSERT_EQ(r_->certs().Statuses().size(), 1u);
  auto removed = All<action::RemovePod>(r_->RemovePod("backend/api"));
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_EQ(removed[0].pod.get(), raw) << "the executor shuts this pod's listeners down";
  EXPECT_TRUE(r_->certs().Statuses().empty()) << "the last pod of an identity releases it";
  EXPECT_TRUE(r_->pods().empty());
  EXPECT_FALSE(r_->waiting_for_certificate("backend/api"));
}

TEST_F(ReconcilerTest, ReplacedPodWithAnotherIdentityReleasesTheOldOne) {
  Ready();
  r_->AddPod(MakePod("backend", "api", "198.18.0.5", kApiId));
  r_->AddPod(MakePod("backend", "api", "198.18.0.5", kWebId));
  auto statuses = r_->certs().Statuses();
  ASSERT_EQ(statuses.size(), 1u);
  EXPECT_EQ(statuses[0].identity, kWebId);
  // The same identity again holds one reference, not two.
  r_->AddPod(MakePod("backend", "api", "198.18.0.5", kWebId));
  EXPECT_EQ(r_->certs().Statuses()[0].refs, 1);
}

TEST_F(ReconcilerTest, HeartbeatCountsListenersAndAcceptingWorkers) {
  Ready();
  auto pod = MakePod("backend", "api", "198.18.0.5", kApiId);
  int hbone = pod->hbone_v4.get();
  r_->AddPod(std::move(pod));
  sockets_.SetListening(hbone, false);  // shut down behind our back

  auto asked = All<action::AskWorkers>(r_->Ping(7));
  ASSERT_EQ(asked.size(), 1u);
  EXPECT_EQ(asked[0].seq, 7u);
  EXPECT_EQ(asked[0].session, r_->session());

  // Two workers answered: one watches both listeners, one only one of them.
  std::vector<std::unordered_map<std::string, uint32_t>> watched = {{{"backend/api", 2}},
                                                                    {{"backend/api", 1}}};
  auto pongs = All<action::SendPong>(r_->HeartbeatAnswered(7, asked[0].session, watched));
  ASSERT_EQ(pongs.size(), 1u);
  EXPECT_EQ(pongs[0].seq, 7u);
  EXPECT_EQ(pongs[0].workers, 2u);
  ASSERT_EQ(pongs[0].pods.size(), 1u);
  EXPECT_EQ(pongs[0].pods[0].uid, "backend/api");
  EXPECT_EQ(pongs[0].pods[0].listening, 1u);
  EXPECT_EQ(pongs[0].pods[0].workers_accepting, 1u);
  EXPECT_TRUE(pongs[0].pods[0].waiting_for_certificate);
}

TEST_F(ReconcilerTest, HeartbeatOfAPreviousSessionIsNotAnswered) {
  Ready();
  auto asked = All<action::AskWorkers>(r_->Ping(3));
  ASSERT_EQ(asked.size(), 1u);
  r_->Connected();  // a new agent replaced the one that asked
  EXPECT_TRUE(r_->HeartbeatAnswered(3, asked[0].session, {}).empty());
  r_->Disconnected();
  EXPECT_TRUE(r_->HeartbeatAnswered(3, r_->session(), {}).empty()) << "nobody to answer";
}

TEST_F(ReconcilerTest, HeartbeatBeforeTheWorkersStartIsAnsweredAtOnce) {
  r_->Connected();
  auto pongs = All<action::SendPong>(r_->Ping(1));
  ASSERT_EQ(pongs.size(), 1u);
  EXPECT_EQ(pongs[0].workers, 0u);
}

// --- certificates and pod adoption --------------------------------------------------------------

// Pods that all start at once send their CSRs paced: at most kMaxOutstandingCsrs unanswered, the
// next one as each answer arrives, in order, until every pod is served.
TEST_F(ReconcilerTest, ManyCsrsArePacedAndAllAnswered) {
  constexpr int kPods = 40;
  std::vector<std::string> ips;
  for (int i = 0; i < kPods; ++i) ips.push_back(absl::StrCat("198.18.0.", i + 10));
  Ready(ips);
  Actions pending;
  for (int i = 0; i < kPods; ++i) {
    for (auto& a : r_->AddPod(MakePod("many", absl::StrCat("p", i), ips[i],
                                      absl::StrCat("spiffe://cluster.local/ns/many/sa/sa", i)))) {
      pending.push_back(std::move(a));
    }
  }
  std::set<std::string> asked;
  size_t outstanding = All<action::SendCsr>(pending).size();
  EXPECT_EQ(outstanding, Reconciler::kMaxOutstandingCsrs);
  int rounds = 0;
  while (!All<action::SendCsr>(pending).empty() && ++rounds < 100) {
    // Answered one at a time: each answer lets exactly one held CSR go.
    auto csrs = All<action::SendCsr>(pending);
    Actions next;
    for (auto& csr : csrs) {
      EXPECT_TRUE(asked.insert(csr.identity).second) << "asked twice: " << csr.identity;
    }
    for (size_t i = 0; i < csrs.size(); ++i) {
      Actions one;
      one.push_back(csrs[i]);
      Actions caused = SignAll(one);
      auto released = All<action::SendCsr>(caused);
      EXPECT_LE(released.size(), 1u);
      for (auto& a : caused) next.push_back(std::move(a));
    }
    pending = std::move(next);
  }
  EXPECT_EQ(asked.size(), static_cast<size_t>(kPods));
  for (int i = 0; i < kPods; ++i) {
    EXPECT_FALSE(r_->waiting_for_certificate(absl::StrCat("many/p", i))) << i;
  }
}

// CSRs still held when the agent goes away fail like the unanswered ones (the certificate
// manager retries them) instead of going to the next agent under a stale session.
TEST_F(ReconcilerTest, HeldCsrsFailWhenTheAgentGoesAway) {
  constexpr int kPods = Reconciler::kMaxOutstandingCsrs + 4;
  std::vector<std::string> ips;
  for (int i = 0; i < kPods; ++i) ips.push_back(absl::StrCat("198.18.0.", i + 10));
  Ready(ips);
  size_t sent = 0;
  for (int i = 0; i < kPods; ++i) {
    sent += All<action::SendCsr>(
                r_->AddPod(MakePod("many", absl::StrCat("p", i), ips[i],
                                   absl::StrCat("spiffe://cluster.local/ns/many/sa/sa", i))))
                .size();
  }
  EXPECT_EQ(sent, Reconciler::kMaxOutstandingCsrs);
  r_->Disconnected();
  r_->Connected();
  // Nothing held is sent on the new session by itself: the manager's retries ask again.
  EXPECT_TRUE(All<action::SendCsr>(r_->WorkersStarted()).empty());
}

TEST_F(ReconcilerTest, PodIsServedOnceItsCertificateIsValid) {
  Ready();
  Actions added = r_->AddPod(MakePod("backend", "api", "198.18.0.5", kApiId));
  ASSERT_EQ(All<action::SendCsr>(added).size(), 1u);
  EXPECT_EQ(All<action::SendCsr>(added)[0].identity, kApiId);
  Actions tick = r_->Tick();
  EXPECT_FALSE(Has<action::ServePod>(tick)) << "connections wait in the backlog for the cert";
  EXPECT_TRUE(r_->waiting_for_certificate("backend/api"));

  Actions signed_ = SignAll(added);
  auto served = All<action::ServePod>(signed_);
  ASSERT_EQ(served.size(), 1u);
  EXPECT_EQ(served[0].pod->uid, "backend/api");
  auto tls = All<action::InstallTls>(signed_);
  ASSERT_EQ(tls.size(), 1u);
  EXPECT_NE(tls[0].contexts->Find(kApiId), nullptr);
  EXPECT_FALSE(r_->waiting_for_certificate("backend/api"));
  EXPECT_FALSE(Has<action::ServePod>(r_->Tick())) << "served once";
}

TEST_F(ReconcilerTest, PodWithoutCertificateIsServedWhenTheGracePeriodEnds) {
  Ready();
  r_->AddPod(MakePod("backend", "api", "198.18.0.5", kApiId));  // the CSR is never answered
  EXPECT_EQ(r_->NextDeadline(), clock_.Now() + kCertGrace);
  clock_.Advance(kCertGrace - absl::Milliseconds(1));
  EXPECT_FALSE(Has<action::ServePod>(r_->Tick()));
  clock_.Advance(absl::Milliseconds(2));
  auto served = All<action::ServePod>(r_->Tick());
  ASSERT_EQ(served.size(), 1u);
  EXPECT_EQ(served[0].pod->uid, "backend/api");
}

TEST_F(ReconcilerTest, PodTheConfigurationDoesNotKnowIsNotServedEvenAfterGrace) {
  Ready({"198.18.0.99"});
  Actions added = r_->AddPod(MakePod("backend", "api", "198.18.0.5", kApiId));
  Actions signed_ = SignAll(added);
  EXPECT_FALSE(Has<action::ServePod>(signed_));
  clock_.Advance(kCertGrace * 2);
  EXPECT_FALSE(Has<action::ServePod>(r_->Tick()))
      << "its mTLS mode is unknown: serving it would be a guess";
  // The configuration catches up.
  r_->ApplySnapshot(2, Snapshot(2, {"198.18.0.5"}));
  EXPECT_EQ(All<action::ServePod>(r_->Tick()).size(), 1u);
}

TEST_F(ReconcilerTest, NothingIsServedBeforeTheFirstConfiguration) {
  r_->Connected();
  r_->WorkersStarted();
  r_->AddPod(MakePod("backend", "api", "", ""));  // no identity, no address: ready at once
  EXPECT_FALSE(Has<action::ServePod>(r_->Tick()));
  r_->ApplySnapshot(1, Snapshot(1, {}));
  EXPECT_EQ(All<action::ServePod>(r_->Tick()).size(), 1u);
}

TEST_F(ReconcilerTest, PodsServedBeforeTheWorkersStartAreGivenToThem) {
  r_->Connected();
  r_->TrustBundle({ca_->root_pem()});
  r_->AddPod(MakePod("backend", "api", "", ""));
  r_->ApplySnapshot(1, Snapshot(1, {}));
  EXPECT_FALSE(Has<action::ServePod>(r_->Tick())) << "no workers yet";
  Actions started = r_->WorkersStarted();
  EXPECT_TRUE(Has<action::InstallSnapshot>(started));
  EXPECT_TRUE(Has<action::InstallTls>(started));
  EXPECT_FALSE(Has<action::ServePod>(started)) << "still waiting: the next tick serves it";
  EXPECT_EQ(All<action::ServePod>(r_->Tick()).size(), 1u);
}

TEST_F(ReconcilerTest, RenewsAtHalfTheUsableLifetime) {
  Ready();
  Actions added = r_->AddPod(MakePod("backend", "api", "198.18.0.5", kApiId));
  const absl::Time issued = clock_.Now();
  SignAll(added, absl::Hours(24));
  ASSERT_EQ(State(kApiId), tls::CertState::kValid);
  EXPECT_EQ(r_->NextDeadline(), issued + absl::Hours(12));

  clock_.Set(issued + absl::Hours(12) - absl::Seconds(1));
  EXPECT_FALSE(Has<action::SendCsr>(r_->Tick()));
  clock_.Set(issued + absl::Hours(12));
  auto renewals = All<action::SendCsr>(r_->Tick());
  ASSERT_EQ(renewals.size(), 1u);
  EXPECT_EQ(renewals[0].identity, kApiId);
  EXPECT_EQ(State(kApiId), tls::CertState::kRenewing);
  EXPECT_NE(renewals[0].csr_pem, All<action::SendCsr>(added)[0].csr_pem) << "a new key";
}

TEST_F(ReconcilerTest, ExpiredCertificateIsNoLongerServed) {
  Ready();
  Actions added = r_->AddPod(MakePod("backend", "api", "198.18.0.5", kApiId));
  const absl::Time issued = clock_.Now();
  Actions signed_ = SignAll(added, absl::Hours(1));
  ASSERT_NE(All<action::InstallTls>(signed_).at(0).contexts->Find(kApiId), nullptr);

  // Renewal requests go unanswered; the timer fires at each deadline up to notAfter, and the
  // contexts in force keep the identity until then.
  const absl::Time not_after = issued + absl::Hours(1);
  std::shared_ptr<const TlsContexts> in_force = All<action::InstallTls>(signed_).back().contexts;
  for (int i = 0; i < 200 && clock_.Now() < not_after; ++i) {
    clock_.Set(std::min(r_->NextDeadline(), not_after - absl::Seconds(1)));
    for (const auto& tls : All<action::InstallTls>(r_->Tick())) in_force = tls.contexts;
    EXPECT_NE(in_force->Find(kApiId), nullptr) << "still valid at " << clock_.Now();
    if (clock_.Now() == not_after - absl::Seconds(1)) break;
  }
  ASSERT_EQ(clock_.Now(), not_after - absl::Seconds(1));
  clock_.Set(not_after + absl::Seconds(1));
  auto tls = All<action::InstallTls>(r_->Tick());
  ASSERT_EQ(tls.size(), 1u) << "expiry rebuilds the contexts";
  EXPECT_EQ(tls[0].contexts->Find(kApiId), nullptr);
  EXPECT_EQ(tls[0].contexts->missing_reason.at(kApiId), DrainReason::kExpired);
  EXPECT_EQ(State(kApiId), tls::CertState::kExpired);
}

TEST_F(ReconcilerTest, TrustBundleChangeRebuildsTheContextsOnce) {
  Ready();
  SignAll(r_->AddPod(MakePod("backend", "api", "198.18.0.5", kApiId)));
  EXPECT_FALSE(Has<action::InstallTls>(r_->Tick()));

  auto other = TestCa::Create(&clock_);
  ASSERT_TRUE(other.ok());
  r_->TrustBundle({ca_->root_pem(), (*other)->root_pem()});
  EXPECT_EQ(All<action::InstallTls>(r_->Tick()).size(), 1u);
  // The same roots in another order are the same bundle.
  r_->TrustBundle({(*other)->root_pem(), ca_->root_pem()});
  EXPECT_FALSE(Has<action::InstallTls>(r_->Tick()));

  r_->TrustBundle({"not a certificate"});
  auto tls = All<action::InstallTls>(r_->Tick());
  ASSERT_EQ(tls.size(), 1u);
  EXPECT_EQ(tls[0].contexts->Find(kApiId), nullptr) << "no trust bundle, no mTLS";
  EXPECT_EQ(tls[0].contexts->missing_reason.at(kApiId), DrainReason::kNotTrusted);
}

TEST_F(ReconcilerTest, TrustDomainChangeTakesTheOldIdentityOutOfService) {
  Ready();
  SignAll(r_->AddPod(MakePod("backend", "api", "198.18.0.5", kApiId)));
  r_->ApplySnapshot(2, Snapshot(2, {"198.18.0.5"}, "example.org"));
  auto tls = All<action::InstallTls>(r_->Tick());
  ASSERT_EQ(tls.size(), 1u);
  EXPECT_EQ(tls[0].contexts->Find(kApiId), nullptr);
  EXPECT_EQ(tls[0].contexts->missing_reason.at(kApiId), DrainReason::kOutOfTrustDomain);
}

TEST_F(ReconcilerTest, CsrWithoutAnAgentFailsAndIsRetriedWithBackoff) {
  r_->AddPod(MakePod("backend", "api", "198.18.0.5", kApiId));  // never connected
  r_->Tick();
  EXPECT_EQ(State(kApiId), tls::CertState::kFailed);
  EXPECT_GT(r_->NextDeadline(), clock_.Now());

  r_->Connected();
  clock_.Set(r_->NextDeadline());
  auto retried = All<action::SendCsr>(r_->Tick());
  ASSERT_EQ(retried.size(), 1u) << "retried once an agent is there and the back-off passed";
}

TEST_F(ReconcilerTest, AgentGoneFailsOutstandingCsrsAndIgnoresLateAnswers) {
  Ready();
  Actions added = r_->AddPod(MakePod("backend", "api", "198.18.0.5", kApiId));
  auto csrs = All<action::SendCsr>(added);
  ASSERT_EQ(csrs.size(), 1u);
  r_->Disconnected();
  r_->Tick();
  EXPECT_EQ(State(kApiId), tls::CertState::kFailed);

  auto chain = ca_->Sign(csrs[0].csr_pem);
  ASSERT_TRUE(chain.ok());
  EXPECT_TRUE(r_->CsrAnswered(csrs[0].request_id, *chain).empty());
  r_->Tick();
  EXPECT_EQ(State(kApiId), tls::CertState::kFailed) << "an answer nobody waits for is ignored";
}

TEST_F(ReconcilerTest, CsrThatCouldNotBeSentCountsAsFailed) {
  Ready();
  auto csrs = All<action::SendCsr>(r_->AddPod(MakePod("backend", "api", "198.18.0.5", kApiId)));
  ASSERT_EQ(csrs.size(), 1u);
  r_->CsrNotSent(csrs[0].request_id, absl::UnavailableError("send: broken pipe"));
  r_->Tick();
  EXPECT_EQ(State(kApiId), tls::CertState::kFailed);
  EXPECT_TRUE(absl::StrContains(r_->certs().Statuses()[0].last_error, "broken pipe"));
}

TEST_F(ReconcilerTest, CertificateReportOnlyWhenItChangesAndOncePerSession) {
  r_->Connected();
  auto first = All<action::SendCertReport>(r_->Tick());
  ASSERT_EQ(first.size(), 1u) << "an empty report is still a report";
  EXPECT_TRUE(first[0].certificates.empty());
  EXPECT_FALSE(Has<action::SendCertReport>(r_->Tick()));

  r_->AddPod(MakePod("backend", "api", "198.18.0.5", kApiId));
  auto pending = All<action::SendCertReport>(r_->Tick());
  ASSERT_EQ(pending.size(), 1u);
  ASSERT_EQ(pending[0].certificates.size(), 1u);
  EXPECT_EQ(pending[0].certificates[0].state, tls::CertState::kPending);
  EXPECT_FALSE(Has<action::SendCertReport>(r_->Tick()));

  r_->Disconnected();
  EXPECT_FALSE(Has<action::SendCertReport>(r_->Tick())) << "nobody to tell";
  r_->Connected();
  EXPECT_EQ(All<action::SendCertReport>(r_->Tick()).size(), 1u) << "a new agent gets it all";
}

}  // namespace
}  // namespace ambit::tunnel
