// ambitd's decoding of control packets from the data plane and its mapping of the pod records
// (agent/supervisor/control_message.h).

#include "agent/supervisor/control_message.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/eventfd.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/common/ip_address.h"
#include "agent/common/sealed_file.h"
#include "agent/identity/spiffe_id.h"

namespace ambit::supervisor {
namespace {

namespace pb = ::ambit::dataplane::v1;

pb::Envelope Current() {
  pb::Envelope env;
  env.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
  return env;
}

// A message announcing a sealed file (`set_size` fills its size): decoded with exactly one
// descriptor, refused with none or two, and refused above `max_size`.
void ExpectSealedFileRefChecked(void (*set_size)(pb::Envelope*, uint64_t), uint64_t size,
                                uint64_t max_size) {
  pb::Envelope ref = Current();
  set_size(&ref, size);
  EXPECT_TRUE(DecodeDataPlaneMessage(ref.SerializeAsString(), 1).ok());
  EXPECT_FALSE(DecodeDataPlaneMessage(ref.SerializeAsString(), 0).ok());
  EXPECT_FALSE(DecodeDataPlaneMessage(ref.SerializeAsString(), 2).ok());
  pb::Envelope huge = Current();
  set_size(&huge, max_size + 1);
  EXPECT_EQ(DecodeDataPlaneMessage(huge.SerializeAsString(), 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(DecodeDataPlaneMessageTest, AcceptsEachDataPlaneMessage) {
  pb::Envelope hello = Current();
  hello.mutable_hello()->set_pod_count(1);
  EXPECT_TRUE(DecodeDataPlaneMessage(hello.SerializeAsString(), 0).ok());

  pb::Envelope csr = Current();
  csr.mutable_csr_request()->set_identity("spiffe://cluster.local/ns/a/sa/b");
  auto decoded = DecodeDataPlaneMessage(csr.SerializeAsString(), 0);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->csr_request().identity(), "spiffe://cluster.local/ns/a/sa/b");

  pb::Envelope pod = Current();  // a handed-back pod carries its listeners
  pod.mutable_add_pod()->add_fds(pb::FD_ROLE_NETNS);
  EXPECT_TRUE(DecodeDataPlaneMessage(pod.SerializeAsString(), 1).ok());

  pb::Envelope removed = Current();  // a removed pod fully released
  removed.mutable_pod_removed()->set_uid("default/web");
  EXPECT_TRUE(DecodeDataPlaneMessage(removed.SerializeAsString(), 0).ok());
  EXPECT_FALSE(DecodeDataPlaneMessage(removed.SerializeAsString(), 1).ok());
}

TEST(DecodeDataPlaneMessageTest, AcceptsAHeartbeatAnswerWithoutDescriptors) {
  pb::Envelope pong = Current();
  pong.mutable_pong()->set_seq(7);
  pong.mutable_pong()->set_workers(2);
  auto* pod = pong.mutable_pong()->add_pods();
  pod->set_uid("default/web");
  pod->set_listening(6);
  auto decoded = DecodeDataPlaneMessage(pong.SerializeAsString(), 0);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->pong().seq(), 7u);
  EXPECT_EQ(decoded->pong().pods(0).listening(), 6u);
  EXPECT_FALSE(DecodeDataPlaneMessage(pong.SerializeAsString(), 1).ok());

  pb::Envelope ping = Current();  // the agent's half, never sent by the data plane
  ping.mutable_ping()->set_seq(1);
  EXPECT_EQ(DecodeDataPlaneMessage(ping.SerializeAsString(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A report too large for one control message comes in a sealed file; the message carries that
// one descriptor and the size, both checked before the file is read.
TEST(CertificateReportRefTest, OneSealedFileOfTheAnnouncedSizeWithinTheLimit) {
  pb::CertificateReport report;
  for (int i = 0; i < 300; ++i) {
    auto* c = report.add_certificates();
    c->set_identity(absl::StrCat("spiffe://cluster.local/ns/many/sa/sa", i));
    c->set_state("valid");
    c->set_chain_pem(std::string(1500, 'C'));
  }
  const std::string bytes = report.SerializeAsString();
  ASSERT_GT(bytes.size(), 300u * 1500);
  ExpectSealedFileRefChecked(
      [](pb::Envelope* env, uint64_t size) {
        env->mutable_certificate_report_ref()->set_size(size);
      },
      bytes.size(), kMaxCertificateReportBytes);

  auto file = CreateSealedFile("test-report", bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  auto read = ReadCertificateReportFile(file->get(), bytes.size());
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->certificates_size(), 300);
  EXPECT_EQ(read->certificates(299).identity(), "spiffe://cluster.local/ns/many/sa/sa299");
  // Another size than announced, bytes that are no report, a file that is not sealed.
  EXPECT_EQ(ReadCertificateReportFile(file->get(), bytes.size() - 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto garbage = CreateSealedFile("test-garbage", "\xff\xff\xff\xff");
  ASSERT_TRUE(garbage.ok());
  EXPECT_EQ(ReadCertificateReportFile(garbage->get(), 4).status().code(),
            absl::StatusCode::kDataLoss);
  UniqueFd plain(eventfd(0, EFD_CLOEXEC));
  EXPECT_FALSE(ReadCertificateReportFile(plain.get(), 8).ok());
}

// A heartbeat answer for 1 024 pods of the longest uids (a 63-byte namespace, a 253-byte name)
// is over 300 KiB, more than one control message carries: it comes in a sealed file.
TEST(DecodeDataPlaneMessageTest, PongInASealedFile) {
  pb::Pong pong;
  pong.set_seq(7);
  pong.set_workers(2);
  for (int i = 0; i < 1024; ++i) {
    auto* p = pong.add_pods();
    p->set_uid(absl::StrCat(std::string(63, 'n'), "/", std::string(249, 'p'), i + 1000));
    p->set_listening(6);
    p->set_workers_accepting(2);
  }
  const std::string bytes = pong.SerializeAsString();
  ASSERT_GT(bytes.size(), 300u << 10);
  ExpectSealedFileRefChecked(
      [](pb::Envelope* env, uint64_t size) { env->mutable_pong_ref()->set_size(size); },
      bytes.size(), kMaxPongBytes);

  auto file = CreateSealedFile("test-pong", bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  auto read = ReadPongFile(file->get(), bytes.size());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->seq(), 7u);
  ASSERT_EQ(read->pods_size(), 1024);
  EXPECT_EQ(read->pods(1023).uid(), pong.pods(1023).uid());
  EXPECT_EQ(ReadPongFile(file->get(), bytes.size() + 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto garbage = CreateSealedFile("test-garbage", "\xff\xff\xff\xff");
  ASSERT_TRUE(garbage.ok());
  EXPECT_EQ(ReadPongFile(garbage->get(), 4).status().code(), absl::StatusCode::kDataLoss);
  UniqueFd plain(eventfd(0, EFD_CLOEXEC));
  EXPECT_FALSE(ReadPongFile(plain.get(), 8).ok());
}

TEST(DecodeDataPlaneMessageTest, RefusesWhatTheDataPlaneNeverSends) {
  EXPECT_EQ(DecodeDataPlaneMessage("\x0a\xff", 0).status().code(), absl::StatusCode::kDataLoss);

  pb::Envelope newer;
  newer.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT + 1);
  newer.mutable_ack()->set_version(1);
  EXPECT_EQ(DecodeDataPlaneMessage(newer.SerializeAsString(), 0).status().code(),
            absl::StatusCode::kFailedPrecondition);

  pb::Envelope snapshot = Current();  // the agent's message
  snapshot.mutable_snapshot()->set_version(1);
  EXPECT_EQ(DecodeDataPlaneMessage(snapshot.SerializeAsString(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);

  pb::Envelope ack = Current();
  ack.mutable_ack()->set_version(1);
  EXPECT_FALSE(DecodeDataPlaneMessage(ack.SerializeAsString(), 2).ok());

  pb::Envelope pod = Current();
  pod.mutable_add_pod()->add_fds(pb::FD_ROLE_NETNS);
  pod.mutable_add_pod()->add_fds(pb::FD_ROLE_HBONE_V4);
  EXPECT_FALSE(DecodeDataPlaneMessage(pod.SerializeAsString(), 1).ok());
}

// A data plane of the previous protocol (2: workloads with uid and string-keyed mTLS maps,
// socket_mark in the snapshot) would misread every snapshot: the agent refuses its hello and
// says what to do.
TEST(DecodeDataPlaneMessageTest, RefusesAnOlderDataPlaneSayingWhy) {
  pb::Envelope old;
  const int older = pb::PROTOCOL_VERSION_CURRENT - 1;
  old.set_protocol_version(older);
  old.mutable_hello()->set_pid(42);
  auto decoded = DecodeDataPlaneMessage(old.SerializeAsString(), 0);
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(decoded.status().message(),
            absl::StrCat("data plane speaks control protocol ", older, ", this agent ", older + 1,
                         "; restart the data plane"));
}

using ::testing::ElementsAre;
using ::testing::HasSubstr;

mesh::Workload Web() {
  mesh::Workload w;
  w.namespace_name = "default";
  w.name = "web";
  w.service_account = "web-sa";
  w.identity = *identity::ParseSpiffeId("spiffe://cluster.local/ns/default/sa/web-sa");
  w.ips = {*IpAddress::Parse("198.18.0.10"), *IpAddress::Parse("2001:2::10")};
  w.enrolled_here = true;
  return w;
}

UniqueFd NewFd() { return UniqueFd(eventfd(0, EFD_CLOEXEC)); }

TEST(EncodeAddPodTest, CarriesTheWorkloadCookieAndEachDescriptorWithItsRole) {
  PodDescriptor d;
  d.workload = Web();
  d.netns_cookie = 77;
  d.netns = 10;
  d.outbound_v4 = 11;
  d.plain_v4 = 13;
  d.hbone_v4 = 15;
  d.hbone_v6 = 16;  // outbound_v6 and plain_v6 stay -1: not sent
  pb::Pod p;
  std::vector<int> fds;
  ASSERT_TRUE(EncodeAddPod(d, &p, &fds).ok());
  EXPECT_EQ(p.uid(), "default/web");
  EXPECT_EQ(p.namespace_(), "default");
  EXPECT_EQ(p.name(), "web");
  EXPECT_EQ(p.service_account(), "web-sa");
  EXPECT_EQ(p.spiffe_id(), "spiffe://cluster.local/ns/default/sa/web-sa");
  EXPECT_THAT(p.ips(), ElementsAre("198.18.0.10", "2001:2::10"));
  EXPECT_EQ(p.netns_cookie(), 77u);
  EXPECT_THAT(fds, ElementsAre(10, 11, 13, 15, 16));
  EXPECT_THAT(p.fds(),
              ElementsAre(pb::FD_ROLE_NETNS, pb::FD_ROLE_OUTBOUND_V4, pb::FD_ROLE_INBOUND_PLAIN_V4,
                          pb::FD_ROLE_HBONE_V4, pb::FD_ROLE_HBONE_V6));
}

TEST(EncodeAddPodTest, RefusesAWorkloadThatDoesNotMapNamingTheField) {
  PodDescriptor d;
  d.workload = Web();
  d.workload.name.clear();
  d.netns = 10;
  pb::Pod p;
  std::vector<int> fds;
  absl::Status s = EncodeAddPod(d, &p, &fds);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("add_pod"));
  EXPECT_THAT(s.message(), HasSubstr("name: missing"));
  EXPECT_TRUE(fds.empty());
}

// What the agent sends comes back unchanged when the data plane hands the pod back after an
// agent restart: one mapping in both directions, so the agent compares like with like.
TEST(DecodeHandedBackPodTest, ReadsBackWhatTheAgentSentWithTheDescriptorsByRole) {
  UniqueFd netns = NewFd(), out4 = NewFd(), plain6 = NewFd(), hbone4 = NewFd();
  ASSERT_TRUE(netns && out4 && plain6 && hbone4);
  PodDescriptor d;
  d.workload = Web();
  d.netns_cookie = 77;
  d.netns = netns.get();
  d.outbound_v4 = out4.get();
  d.plain_v6 = plain6.get();
  d.hbone_v4 = hbone4.get();
  pb::Pod p;
  std::vector<int> sent;
  ASSERT_TRUE(EncodeAddPod(d, &p, &sent).ok());
  const int netns_fd = netns.get(), out4_fd = out4.get(), plain6_fd = plain6.get(),
            hbone4_fd = hbone4.get();
  std::vector<UniqueFd> fds;
  fds.push_back(std::move(netns));
  fds.push_back(std::move(out4));
  fds.push_back(std::move(plain6));
  fds.push_back(std::move(hbone4));

  auto pod = DecodeHandedBackPod(p, std::move(fds));
  ASSERT_TRUE(pod.ok()) << pod.status();
  EXPECT_EQ(pod->workload, Web());
  EXPECT_EQ(pod->netns_cookie, 77u);
  EXPECT_EQ(pod->netns.get(), netns_fd);
  EXPECT_EQ(pod->outbound_v4.get(), out4_fd);
  EXPECT_EQ(pod->plain_v6.get(), plain6_fd);
  EXPECT_EQ(pod->hbone_v4.get(), hbone4_fd);
  EXPECT_FALSE(pod->outbound_v6.valid());
  EXPECT_FALSE(pod->plain_v4.valid());
  EXPECT_FALSE(pod->hbone_v6.valid());
}

TEST(DecodeHandedBackPodTest, APodServedWithoutAnIdentityHasNone) {
  pb::Pod p;
  p.set_uid("default/web");
  p.set_namespace_("default");
  p.set_name("web");
  auto pod = DecodeHandedBackPod(p, {});
  ASSERT_TRUE(pod.ok()) << pod.status();
  EXPECT_TRUE(pod->workload.identity.trust_domain.empty());
  EXPECT_TRUE(pod->workload.enrolled_here);
}

// A handed-back pod the agent cannot describe is refused, naming the field, rather than adopted
// with a partial record (the data plane serves it with an identity and addresses the agent would
// not know).
TEST(DecodeHandedBackPodTest, RefusesAPodThatDoesNotMapNamingTheField) {
  struct Row {
    const char* what;
    void (*mutate)(pb::Pod*);
    const char* field;
  };
  const Row rows[] = {
      {"uid not namespace/name", [](pb::Pod* p) { p->set_uid("other"); }, "uid:"},
      {"no name", [](pb::Pod* p) { p->clear_name(); }, "name: missing"},
      {"no namespace", [](pb::Pod* p) { p->clear_namespace_(); }, "namespace: missing"},
      {"bad SPIFFE ID", [](pb::Pod* p) { p->set_spiffe_id("spiffe://UPPER/ns/a"); }, "spiffe_id:"},
      {"bad address", [](pb::Pod* p) { p->add_ips("198.18.0.300"); }, "ips[2]:"},
  };
  for (const Row& row : rows) {
    PodDescriptor d;
    d.workload = Web();
    pb::Pod p;
    std::vector<int> sent;
    ASSERT_TRUE(EncodeAddPod(d, &p, &sent).ok());
    row.mutate(&p);
    std::vector<UniqueFd> fds;
    fds.push_back(NewFd());
    p.add_fds(pb::FD_ROLE_NETNS);
    auto pod = DecodeHandedBackPod(p, std::move(fds));
    ASSERT_FALSE(pod.ok()) << row.what;
    EXPECT_EQ(pod.status().code(), absl::StatusCode::kInvalidArgument) << row.what;
    EXPECT_THAT(pod.status().message(), HasSubstr("handed-back pod: workload ")) << row.what;
    EXPECT_THAT(pod.status().message(), HasSubstr(row.field)) << row.what;
  }
}

}  // namespace
}  // namespace ambit::supervisor
