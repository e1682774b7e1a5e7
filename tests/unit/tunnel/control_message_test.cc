// The data plane's decoding of control packets from the agent (agent/tunnel/control_message.h).

#include "agent/tunnel/control_message.h"

#include <fcntl.h>
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "agent/common/sealed_file.h"

namespace ambit::tunnel {
namespace {

namespace pb = ::ambit::dataplane::v1;

std::string Bytes(const pb::Envelope& env) { return env.SerializeAsString(); }

pb::Envelope Current() {
  pb::Envelope env;
  env.set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
  return env;
}

TEST(DecodeAgentMessageTest, AcceptsEachAgentMessageWithItsDescriptors) {
  pb::Envelope maps = Current();
  maps.mutable_maps()->add_fds(pb::FD_ROLE_ORIG_DST_MAP);
  maps.mutable_maps()->add_fds(pb::FD_ROLE_DELIVER_MAP);
  EXPECT_TRUE(DecodeAgentMessage(Bytes(maps), 2).ok());

  pb::Envelope pod = Current();
  pod.mutable_add_pod()->set_uid("default/web");
  pod.mutable_add_pod()->add_fds(pb::FD_ROLE_NETNS);
  pod.mutable_add_pod()->add_fds(pb::FD_ROLE_OUTBOUND_V4);
  auto decoded = DecodeAgentMessage(Bytes(pod), 2);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->add_pod().uid(), "default/web");

  pb::Envelope snapshot = Current();
  snapshot.mutable_snapshot()->set_version(7);
  EXPECT_TRUE(DecodeAgentMessage(Bytes(snapshot), 0).ok());

  // A sealed-file snapshot reaches the handler whatever it carried: a wrong count is nacked
  // there, failing closed, instead of ending the control session.
  pb::Envelope ref = Current();
  ref.mutable_snapshot_ref()->set_version(8);
  ref.mutable_snapshot_ref()->set_size(100);
  EXPECT_TRUE(DecodeAgentMessage(Bytes(ref), 1).ok());
  EXPECT_TRUE(DecodeAgentMessage(Bytes(ref), 0).ok());

  pb::Envelope failed = Current();
  failed.mutable_snapshot_failed()->set_version(9);
  EXPECT_TRUE(DecodeAgentMessage(Bytes(failed), 0).ok());
  EXPECT_FALSE(DecodeAgentMessage(Bytes(failed), 1).ok());
}

TEST(DecodeAgentMessageTest, RefusesGarbageOtherVersionsAndForeignBodies) {
  EXPECT_EQ(DecodeAgentMessage("\xff\xff\xff", 0).status().code(), absl::StatusCode::kDataLoss);

  pb::Envelope old;
  old.set_protocol_version(pb::PROTOCOL_VERSION_UNSPECIFIED);
  old.mutable_remove_pod()->set_uid("x");
  EXPECT_EQ(DecodeAgentMessage(Bytes(old), 0).status().code(),
            absl::StatusCode::kFailedPrecondition);

  pb::Envelope empty = Current();
  EXPECT_EQ(DecodeAgentMessage(Bytes(empty), 0).status().code(),
            absl::StatusCode::kInvalidArgument);

  pb::Envelope ack = Current();  // the data plane's own message, never the agent's
  ack.mutable_ack()->set_version(1);
  EXPECT_EQ(DecodeAgentMessage(Bytes(ack), 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DecodeAgentMessageTest, DescriptorsMustMatchTheBody) {
  pb::Envelope pod = Current();
  pod.mutable_add_pod()->set_uid("default/web");
  pod.mutable_add_pod()->add_fds(pb::FD_ROLE_NETNS);
  auto short_of_fds = DecodeAgentMessage(Bytes(pod), 0);
  EXPECT_EQ(short_of_fds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(short_of_fds.status().message().find("default/web"), std::string::npos);

  pb::Envelope maps = Current();
  maps.mutable_maps()->add_fds(pb::FD_ROLE_ORIG_DST_MAP);
  EXPECT_FALSE(DecodeAgentMessage(Bytes(maps), 2).ok());

  pb::Envelope remove = Current();
  remove.mutable_remove_pod()->set_uid("default/web");
  EXPECT_FALSE(DecodeAgentMessage(Bytes(remove), 1).ok());
}

// A trust bundle too large for one control message (CRLs) comes in a sealed file: one
// descriptor, a size within the limit, bytes that parse.
TEST(DecodeAgentMessageTest, TrustBundleRefTakesOneSealedFile) {
  pb::TrustBundle bundle;
  bundle.add_root_pem("-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n");
  bundle.add_crl_pem(std::string(300 << 10, 'R'));
  const std::string bytes = bundle.SerializeAsString();
  pb::Envelope ref = Current();
  ref.mutable_trust_bundle_ref()->set_size(bytes.size());
  EXPECT_TRUE(DecodeAgentMessage(Bytes(ref), 1).ok());
  EXPECT_FALSE(DecodeAgentMessage(Bytes(ref), 0).ok());
  EXPECT_FALSE(DecodeAgentMessage(Bytes(ref), 2).ok());
  pb::Envelope huge = Current();
  huge.mutable_trust_bundle_ref()->set_size(kMaxTrustBundleBytes + 1);
  EXPECT_EQ(DecodeAgentMessage(Bytes(huge), 1).status().code(), absl::StatusCode::kInvalidArgument);

  auto file = CreateSealedFile("test-bundle", bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  auto read = ReadTrustBundleFile(file->get(), bytes.size());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->root_pem_size(), 1);
  EXPECT_EQ(read->crl_pem(0).size(), size_t{300 << 10});
  EXPECT_EQ(ReadTrustBundleFile(file->get(), bytes.size() + 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto garbage = CreateSealedFile("test-garbage", "\xff\xff\xff\xff");
  ASSERT_TRUE(garbage.ok());
  EXPECT_EQ(ReadTrustBundleFile(garbage->get(), 4).status().code(), absl::StatusCode::kDataLoss);
}

TEST(DecodeAgentMessageTest, AcceptsAHeartbeatWithoutDescriptors) {
  pb::Envelope ping = Current();
  ping.mutable_ping()->set_seq(3);
  auto decoded = DecodeAgentMessage(Bytes(ping), 0);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->ping().seq(), 3u);
  EXPECT_FALSE(DecodeAgentMessage(Bytes(ping), 1).ok());

  pb::Envelope pong = Current();  // the data plane's half, never sent by the agent
  pong.mutable_pong()->set_seq(3);
  EXPECT_EQ(DecodeAgentMessage(Bytes(pong), 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DecodeAgentMessageTest, DrainTakesNoDescriptorsAndABoundedGrace) {
  pb::Envelope drain = Current();
  drain.mutable_drain()->set_grace_seconds(30);
  auto decoded = DecodeAgentMessage(Bytes(drain), 0);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->drain().grace_seconds(), 30u);
  // Zero: exit once nothing is left, at once if nothing is.
  drain.mutable_drain()->set_grace_seconds(0);
  EXPECT_TRUE(DecodeAgentMessage(Bytes(drain), 0).ok());
  drain.mutable_drain()->set_grace_seconds(kMaxDrainGraceSeconds);
  EXPECT_TRUE(DecodeAgentMessage(Bytes(drain), 0).ok());
  EXPECT_FALSE(DecodeAgentMessage(Bytes(drain), 1).ok());
  drain.mutable_drain()->set_grace_seconds(kMaxDrainGraceSeconds + 1);
  auto refused = DecodeAgentMessage(Bytes(drain), 0);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "drain grace"));
}

TEST(DecodeStatsSocketRequestTest, TellsAStatsRequestFromALogLevelChange) {
  pb::StatsSocketRequest stats;
  stats.mutable_stats()->set_connections(true);
  auto decoded = DecodeStatsSocketRequest(stats.SerializeAsString());
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_TRUE(decoded->has_stats());
  EXPECT_TRUE(decoded->stats().connections());

  pb::StatsSocketRequest change;
  change.mutable_log_level()->set_component("hbone");
  change.mutable_log_level()->set_level("debug");
  decoded = DecodeStatsSocketRequest(change.SerializeAsString());
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_TRUE(decoded->has_log_level());
  EXPECT_EQ(decoded->log_level().component(), "hbone");
  EXPECT_EQ(decoded->log_level().level(), "debug");
}

TEST(DecodeStatsSocketRequestTest, RefusesGarbageEmptyRequestsAndUnknownLevels) {
  EXPECT_EQ(DecodeStatsSocketRequest("\xff\xff\xff").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeStatsSocketRequest("").status().code(), absl::StatusCode::kUnimplemented);

  pb::StatsSocketRequest change;
  change.mutable_log_level()->set_level("verbose");
  auto refused = DecodeStatsSocketRequest(change.SerializeAsString());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("verbose"), std::string::npos);
}

pb::ExtAuthzProbeRequest GoodProbe() {
  pb::ExtAuthzProbeRequest r;
  r.set_waypoint("backend/waypoint");
  r.set_provider("sample-ext-authz-http");
  r.set_method("GET");
  r.set_path("/ext?x=1");
  r.set_host("api.backend.svc.cluster.local");
  auto* h = r.add_headers();
  h->set_name("x-ext-authz");
  h->set_value("allow");
  r.set_source_address("198.18.0.10");
  r.set_source_principal("spiffe://cluster.local/ns/default/sa/web");
  r.set_destination_address("[2001:2::1]:80");
  return r;
}

TEST(ExtAuthzProbeTest, DecodesAGoodProbe) {
  pb::StatsSocketRequest request;
  *request.mutable_ext_authz_probe() = GoodProbe();
  ASSERT_TRUE(DecodeStatsSocketRequest(request.SerializeAsString()).ok());
  auto probe = ExtAuthzProbeFromProto(GoodProbe());
  ASSERT_TRUE(probe.ok()) << probe.status();
  EXPECT_EQ(probe->waypoint, "backend/waypoint");
  EXPECT_EQ(probe->provider, "sample-ext-authz-http");
  ASSERT_EQ(probe->headers.size(), 1u);
  EXPECT_EQ(probe->headers[0].second, "allow");
  ASSERT_TRUE(probe->source.has_value());
  EXPECT_EQ(probe->source->ip.ToString(), "198.18.0.10");
  ASSERT_TRUE(probe->destination.has_value());
  EXPECT_EQ(probe->destination->port, 80);
  EXPECT_FALSE(probe->body.has_value());
}

TEST(ExtAuthzProbeTest, RefusesEachBadFieldByName) {
  struct Case {
    const char* field;
    std::function<void(pb::ExtAuthzProbeRequest&)> spoil;
  };
  const std::vector<Case> cases = {
      {"waypoint_pod/waypoint", [](auto& r) { r.set_waypoint_pod("backend/wp-0"); }},
      {"waypoint_pod/waypoint", [](auto& r) { r.clear_waypoint(); }},
      {"waypoint", [](auto& r) { r.set_waypoint("waypoint"); }},
      {"waypoint", [](auto& r) { r.set_waypoint("a/b/c"); }},
      {"provider", [](auto& r) { r.clear_provider(); }},
      {"method", [](auto& r) { r.set_method("GE T"); }},
      {"method", [](auto& r) { r.clear_method(); }},
      {"path", [](auto& r) { r.set_path("ext"); }},
      {"path", [](auto& r) { r.set_path("/a\r\nx: y"); }},
      {"host", [](auto& r) { r.set_host(std::string("a\0b", 3)); }},
      {"headers", [](auto& r) { r.mutable_headers(0)->set_name("X-Ext-Authz"); }},
      {"headers", [](auto& r) { r.mutable_headers(0)->set_name(""); }},
      {"headers", [](auto& r) { r.mutable_headers(0)->set_value("a\nb"); }},
      {"source_address", [](auto& r) { r.set_source_address("nowhere"); }},
      {"destination_address", [](auto& r) { r.set_destination_address("198.18.0.1:99999"); }},
      {"body", [](auto& r) { r.set_body("x"); }},
      {"body",
       [](auto& r) {
         r.set_has_body(true);
         r.set_body(std::string(kMaxProbeBody + 1, 'x'));
       }},
  };
  for (const Case& c : cases) {
    pb::ExtAuthzProbeRequest r = GoodProbe();
    c.spoil(r);
    auto probe = ExtAuthzProbeFromProto(r);
    EXPECT_EQ(probe.status().code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_TRUE(absl::StrContains(probe.status().message(), c.field)) << probe.status();
    pb::StatsSocketRequest request;
    *request.mutable_ext_authz_probe() = r;
    EXPECT_EQ(DecodeStatsSocketRequest(request.SerializeAsString()).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST(ExtAuthzProbeTest, AnswerCutsALongDenyBodyAndNamesEveryEnum) {
  ExtAuthzProbeResult result;
  result.outcome = ExtAuthzProbeResult::Outcome::kDeny;
  result.status = 418;
  result.deny_body = std::string(kMaxProbeAnswerBody + 10, 'b');
  result.upstream_edits = {{ExtAuthzProbeResult::HeaderEdit::Op::kAppend, "x-a", "1"}};
  result.latency = absl::Microseconds(2100);
  pb::ExtAuthzProbeResponse out = ExtAuthzProbeResultToProto(result);
  EXPECT_EQ(out.outcome(), pb::EXT_AUTHZ_PROBE_OUTCOME_DENY);
  EXPECT_EQ(out.status(), 418u);
  EXPECT_EQ(out.deny_body().size(), kMaxProbeAnswerBody);
  EXPECT_TRUE(out.deny_body_truncated());
  EXPECT_EQ(out.upstream_edits(0).op(), pb::PROBE_HEADER_EDIT_OP_APPEND);
  EXPECT_EQ(out.latency_us(), 2100);

  ExtAuthzProbeResult refused;
  refused.error = "not a waypoint";
  out = ExtAuthzProbeResultToProto(refused);
  EXPECT_EQ(out.error(), "not a waypoint");
  EXPECT_EQ(out.outcome(), pb::EXT_AUTHZ_PROBE_OUTCOME_UNSPECIFIED);
}

TEST(DecodeStatsSocketRequestTest, AStatsRequestOfProtocolTwoChangesNoLevel) {
  // What an agent of protocol version 2 sent: a bare StatsRequest, the level in field 4. The
  // fields are reserved now, so it asks for nothing this build knows.
  std::string old_bytes = std::string("\x08\x01", 2) + "\x22\x05" + "debug";
  auto decoded = DecodeStatsSocketRequest(old_bytes);
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kUnimplemented);
}

pb::Pod WebPod() {
  pb::Pod p;
  p.set_uid("default/web");
  p.set_namespace_("default");
  p.set_name("web");
  p.set_service_account("web-sa");
  p.set_spiffe_id("spiffe://cluster.local/ns/default/sa/web-sa");
  p.set_netns_cookie(99);
  p.add_ips("198.18.0.7");
  p.add_ips("2001:2::7");
  p.add_fds(pb::FD_ROLE_NETNS);
  p.add_fds(pb::FD_ROLE_OUTBOUND_V4);
  p.add_fds(pb::FD_ROLE_HBONE_V6);
  return p;
}

std::vector<UniqueFd> Fds(int n) {
  std::vector<UniqueFd> fds;
  for (int i = 0; i < n; ++i) fds.emplace_back(open("/dev/null", O_RDONLY | O_CLOEXEC));
  return fds;
}

TEST(DecodePodTest, MapsTheWorkloadAndEveryDescriptorAndHandsBackTheSame) {
  std::vector<UniqueFd> fds = Fds(3);
  int netns = fds[0].get(), outbound = fds[1].get(), hbone6 = fds[2].get();
  auto pod = DecodePod(WebPod(), std::move(fds));
  ASSERT_TRUE(pod.ok()) << pod.status();
  const Pod& p = **pod;
  EXPECT_EQ(p.uid, "default/web");
  EXPECT_EQ(p.spiffe_id, "spiffe://cluster.local/ns/default/sa/web-sa");
  EXPECT_EQ(p.workload.service_account, "web-sa");
  EXPECT_EQ(p.workload.identity.trust_domain, "cluster.local");
  ASSERT_EQ(p.workload.ips.size(), 2u);
  EXPECT_EQ(p.workload.ips[1].ToString(), "2001:2::7");
  EXPECT_TRUE(p.workload.enrolled_here);
  EXPECT_EQ(p.netns_cookie, 99u);
  EXPECT_EQ(p.netns.get(), netns);
  EXPECT_EQ(p.outbound_v4.get(), outbound);
  EXPECT_EQ(p.hbone_v6.get(), hbone6);
  EXPECT_FALSE(p.plain_v4);

  pb::Pod back;
  std::vector<int> sent;
  ASSERT_TRUE(EncodePod(p, &back, &sent).ok());
  EXPECT_EQ(back.SerializeAsString(), WebPod().SerializeAsString());
  EXPECT_EQ(sent, (std::vector<int>{netns, outbound, hbone6}));
}

TEST(DecodePodTest, APodWithoutIdentityIsServedWithoutOne) {
  pb::Pod p = WebPod();
  p.clear_spiffe_id();
  auto pod = DecodePod(p, Fds(3));
  ASSERT_TRUE(pod.ok()) << pod.status();
  EXPECT_EQ((*pod)->spiffe_id, "");
}

TEST(DecodePodTest, RefusesWhatDoesNotMap) {
  struct Row {
    const char* what;
    void (*change)(pb::Pod*);
    int fds;
    const char* error;
  };
  const Row rows[] = {
      {"fd count", [](pb::Pod*) {}, 2, "lists 3 fds but carried 2"},
      {"uid", [](pb::Pod* p) { p->set_uid("default/other"); }, 3, "uid"},
      {"name", [](pb::Pod* p) { p->clear_name(); }, 3, "name: missing"},
      {"address", [](pb::Pod* p) { p->set_ips(0, "198.18.0.300"); }, 3, "ips[0]"},
      {"identity", [](pb::Pod* p) { p->set_spiffe_id("spiffe://Bad/x"); }, 3, "spiffe_id"},
      {"no netns",
       [](pb::Pod* p) {
         p->clear_fds();
         p->add_fds(pb::FD_ROLE_OUTBOUND_V4);
       },
       1, "lacks its netns or outbound listener"},
      {"no outbound",
       [](pb::Pod* p) {
         p->clear_fds();
         p->add_fds(pb::FD_ROLE_NETNS);
       },
       1, "lacks its netns or outbound listener"},
  };
  for (const Row& r : rows) {
    pb::Pod p = WebPod();
    r.change(&p);
    auto pod = DecodePod(p, Fds(r.fds));
    ASSERT_FALSE(pod.ok()) << r.what;
    EXPECT_EQ(pod.status().code(), absl::StatusCode::kInvalidArgument) << r.what;
    EXPECT_TRUE(absl::StrContains(pod.status().message(), r.error))
        << r.what << ": " << pod.status();
  }
}

}  // namespace
}  // namespace ambit::tunnel
