#include "agent/tunnel/mesh_snapshot.h"

#include <gtest/gtest.h>
#include <malloc.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/common/allocator.h"
#include "agent/mesh/wire.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::tunnel {
namespace {

namespace pb = ::ambit::dataplane::v1;

pb::Workload* AddWorkload(pb::Snapshot* s, const std::string& ns, const std::string& name,
                          const std::string& ip) {
  auto* w = s->add_workloads();
  w->set_namespace_(ns);
  w->set_name(name);
  w->set_service_account(name);
  w->set_spiffe_id(absl::StrCat("spiffe://cluster.local/ns/", ns, "/sa/", name));
  w->add_ips(ip);
  w->set_in_mesh(true);
  return w;
}

pb::Snapshot Local(pb::MtlsMode mode) {
  pb::Snapshot s;
  s.set_version(3);
  auto* w = AddWorkload(&s, "backend", "api", "198.18.0.5");
  w->set_enrolled_here(true);
  w->mutable_mtls()->set_mode(mode);
  return s;
}

// The defect this guards: an mTLS mode the data plane did not know (a renamed or newer value)
// read as PERMISSIVE, so plaintext reached a STRICT workload. Now the snapshot is refused, which
// the data plane answers with a nack and fails closed.
TEST(MeshSnapshotTest, UnknownMtlsModeRefusesTheSnapshot) {
  auto strict = MeshSnapshot::FromProto(Local(pb::MTLS_MODE_STRICT));
  ASSERT_TRUE(strict.ok()) << strict.status();
  const mesh::Workload* w = (*strict)->WorkloadByIp(*IpAddress::Parse("198.18.0.5"));
  ASSERT_NE(w, nullptr);
  ASSERT_TRUE(w->mtls.has_value());
  EXPECT_EQ(w->mtls->ForPort(8080).mode, mesh::MtlsMode::kStrict);

  for (int mode : {0, 4, 99}) {
    auto refused = MeshSnapshot::FromProto(Local(static_cast<pb::MtlsMode>(mode)));
    ASSERT_FALSE(refused.ok()) << "mode " << mode;
    EXPECT_NE(refused.status().message().find("workload backend/api: mtls.mode"), std::string::npos)
        << refused.status();
  }
}

// The node tunnel keeps every RequestAuthentication of the generation for the waypoint, from the
// serialized form the sealed file carries, and a bad one refuses the generation.
TEST(MeshSnapshotTest, KeepsRequestAuthenticationsForTheWaypoint) {
  pb::Snapshot s = Local(pb::MTLS_MODE_STRICT);
  for (const char* ns : {"backend", "frontend"}) {
    auto* ra = s.add_request_authentications();
    ra->set_name("jwt");
    ra->set_namespace_(ns);
    auto* ref = ra->add_target_refs();
    ref->set_group("gateway.networking.k8s.io");
    ref->set_kind("Gateway");
    ref->set_name("waypoint");
    auto* rule = ra->add_jwt_rules();
    rule->set_issuer("https://issuer.example");
    rule->set_jwks_uri("https://issuer.example/jwks");
    rule->mutable_timeout()->set_seconds(5);
  }
  auto snapshot = MeshSnapshot::Decode(s.SerializeAsString());
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  const auto& kept = (*snapshot)->request_authentications();
  ASSERT_EQ(kept.size(), 2u);
  EXPECT_EQ(kept[0].Key(), "backend/jwt");
  EXPECT_EQ(kept[1].Key(), "frontend/jwt");
  ASSERT_EQ(kept[1].jwt_rules.size(), 1u);
  EXPECT_EQ(kept[1].jwt_rules[0].jwks_uri, "https://issuer.example/jwks");
  EXPECT_EQ(kept[1].jwt_rules[0].timeout, absl::Seconds(5));
  EXPECT_TRUE(MeshSnapshot::Create(mesh::Snapshot{})->request_authentications().empty());

  s.mutable_request_authentications(1)->mutable_jwt_rules(0)->mutable_timeout()->set_seconds(-5);
  auto refused = MeshSnapshot::Decode(s.SerializeAsString());
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find(
                "RequestAuthentication frontend/jwt: jwt_rules[0].timeout: negative"),
            std::string::npos)
      << refused.status();
}

TEST(MeshSnapshotTest, RoutesByTheTypedModel) {
  pb::Snapshot s = Local(pb::MTLS_MODE_PERMISSIVE);
  AddWorkload(&s, "frontend", "web", "198.18.0.6");
  auto* svc = s.add_services();
  svc->set_namespace_("backend");
  svc->set_name("api");
  svc->add_cluster_ips("198.18.100.1");
  auto* tcp = svc->add_ports();
  tcp->set_port(80);
  tcp->set_target_port(8080);
  tcp->set_protocol(pb::SERVICE_PROTOCOL_TCP);
  tcp->set_app_protocol(pb::APP_PROTOCOL_DETECT);
  auto* udp = svc->add_ports();
  udp->set_port(53);
  udp->set_target_port(5353);
  udp->set_protocol(pb::SERVICE_PROTOCOL_UDP);
  udp->set_app_protocol(pb::APP_PROTOCOL_DETECT);
  svc->add_endpoints("backend/api");
  auto snapshot = MeshSnapshot::FromProto(s);
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();

  Route direct = (*snapshot)->Resolve({*IpAddress::Parse("198.18.0.6"), 9000}, 0);
  EXPECT_EQ(direct.kind, Route::Kind::kHbone);
  ASSERT_NE(direct.workload, nullptr);
  EXPECT_EQ(direct.workload->identity.ToString(), "spiffe://cluster.local/ns/frontend/sa/web");

  Route via_service = (*snapshot)->Resolve({*IpAddress::Parse("198.18.100.1"), 80}, 5);
  EXPECT_EQ(via_service.kind, Route::Kind::kHbone);
  EXPECT_EQ(via_service.target.ToString(), "198.18.0.5:8080");
  ASSERT_NE(via_service.workload, nullptr);
  EXPECT_EQ(via_service.workload->Key(), "backend/api");
  // A UDP service port routes no TCP connection.
  Route udp_port = (*snapshot)->Resolve({*IpAddress::Parse("198.18.100.1"), 53}, 0);
  EXPECT_EQ(udp_port.kind, Route::Kind::kPassthrough);
  EXPECT_EQ(udp_port.target.ToString(), "198.18.100.1:53");
}

// What one peer pod (another node's, as LargeConfigTest and bench/config create 100 000 of)
// costs the data plane while a snapshot is in force: its record and its index entry.
// backend/api (enrolled here) uses waypoint backend/wp (a pod on another node) for traffic to
// the pod and, through its service, to 198.18.100.1; frontend/web is an ordinary peer.
pb::Snapshot WithWaypoint(bool bypass_allowed = false, bool waypoint_has_pod = true) {
  pb::Snapshot s = Local(pb::MTLS_MODE_PERMISSIVE);
  s.mutable_workloads(0)->set_waypoint("backend/wp");
  s.mutable_workloads(0)->set_waypoint_bypass_allowed(bypass_allowed);
  AddWorkload(&s, "frontend", "web", "198.18.0.6");
  AddWorkload(&s, "backend", "wp", "198.18.0.9");
  auto* wp = s.add_waypoints();
  wp->set_namespace_("backend");
  wp->set_name("wp");
  if (waypoint_has_pod) wp->add_instances("backend/wp");
  auto* svc = s.add_services();
  svc->set_namespace_("backend");
  svc->set_name("api");
  svc->add_cluster_ips("198.18.100.1");
  auto* tcp = svc->add_ports();
  tcp->set_port(80);
  tcp->set_target_port(8080);
  tcp->set_protocol(pb::SERVICE_PROTOCOL_TCP);
  tcp->set_app_protocol(pb::APP_PROTOCOL_DETECT);
  svc->add_endpoints("backend/api");
  svc->set_waypoint("backend/wp");
  return s;
}

SocketAddress Addr(const char* ip, uint16_t port) { return {*IpAddress::Parse(ip), port}; }

TEST(MeshSnapshotTest, TrafficToAWaypointBoundDestinationGoesToTheWaypoint) {
  auto snapshot = MeshSnapshot::FromProto(WithWaypoint());
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  const std::vector<IpAddress> client = {*IpAddress::Parse("198.18.0.6")};

  // Pod-addressed: to the waypoint's 15008 with the waypoint's identity; CONNECT to the pod.
  Route to_pod = (*snapshot)->Resolve(Addr("198.18.0.5", 8080), 0, client);
  ASSERT_EQ(to_pod.kind, Route::Kind::kHbone);
  ASSERT_NE(to_pod.waypoint, nullptr);
  EXPECT_EQ(to_pod.waypoint->key, "backend/wp");
  EXPECT_EQ(to_pod.hbone_ip.ToString(), "198.18.0.9");
  EXPECT_EQ(to_pod.workload->identity.ToString(), "spiffe://cluster.local/ns/backend/sa/wp");
  EXPECT_EQ(to_pod.target.ToString(), "198.18.0.5:8080");

  // Service-addressed: the CONNECT target stays the cluster IP, as ztunnel sends it.
  Route to_service = (*snapshot)->Resolve(Addr("198.18.100.1", 80), 0, client);
  ASSERT_EQ(to_service.kind, Route::Kind::kHbone);
  EXPECT_EQ(to_service.hbone_ip.ToString(), "198.18.0.9");
  EXPECT_EQ(to_service.target.ToString(), "198.18.100.1:80");
  ASSERT_NE(to_service.service, nullptr);

  // From the waypoint itself: straight on to the destination, never back to the waypoint.
  const std::vector<IpAddress> waypoint = {*IpAddress::Parse("198.18.0.9")};
  Route onward = (*snapshot)->Resolve(Addr("198.18.0.5", 8080), 0, waypoint);
  ASSERT_EQ(onward.kind, Route::Kind::kHbone);
  EXPECT_EQ(onward.waypoint, nullptr);
  EXPECT_EQ(onward.hbone_ip.ToString(), "198.18.0.5");
  Route onward_service = (*snapshot)->Resolve(Addr("198.18.100.1", 80), 0, waypoint);
  EXPECT_EQ(onward_service.waypoint, nullptr);
  EXPECT_EQ(onward_service.target.ToString(), "198.18.0.5:8080");

  // Unbound destinations are untouched.
  Route plain = (*snapshot)->Resolve(Addr("198.18.0.6", 9000), 0, client);
  EXPECT_EQ(plain.waypoint, nullptr);
  EXPECT_EQ(plain.hbone_ip.ToString(), "198.18.0.6");
}

TEST(MeshSnapshotTest, WaypointWithoutPodsRefusesInsteadOfGoingDirect) {
  auto snapshot = MeshSnapshot::FromProto(WithWaypoint(false, /*waypoint_has_pod=*/false));
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  Route r = (*snapshot)->Resolve(Addr("198.18.0.5", 8080), 0, {});
  EXPECT_EQ(r.kind, Route::Kind::kRefused);
  EXPECT_NE(r.refused.find("uses waypoint backend/wp, which has no pod"), std::string::npos)
      << r.refused;
  std::string decided_by;
  auto denied = (*snapshot)->Authorize(Addr("198.18.0.6", 4000), Addr("198.18.0.5", 8080),
                                       "spiffe://cluster.local/ns/frontend/sa/web", &decided_by);
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(denied.message().find("which has no pod yet"), std::string::npos) << denied;
}

TEST(MeshSnapshotTest, WaypointBoundWorkloadAcceptsOnlyTheWaypoint) {
  auto snapshot = MeshSnapshot::FromProto(WithWaypoint());
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  const SocketAddress dst = Addr("198.18.0.5", 8080);
  std::string decided_by;
  auto bypass = (*snapshot)->Authorize(Addr("198.18.0.6", 4000), dst,
                                       "spiffe://cluster.local/ns/frontend/sa/web", &decided_by);
  EXPECT_EQ(bypass.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(decided_by, "waypoint backend/wp");
  EXPECT_NE(bypass.message().find("uses waypoint backend/wp; only its identity may connect, not "
                                  "spiffe://cluster.local/ns/frontend/sa/web"),
            std::string::npos)
      << bypass;
  auto plaintext = (*snapshot)->Authorize(Addr("198.18.0.6", 4000), dst, "", nullptr);
  EXPECT_NE(plaintext.message().find("not a plaintext client"), std::string::npos) << plaintext;
  EXPECT_TRUE((*snapshot)
                  ->Authorize(Addr("198.18.0.9", 4000), dst,
                              "spiffe://cluster.local/ns/backend/sa/wp", &decided_by)
                  .ok());
  EXPECT_EQ(decided_by, "default");

  // The opt-out: anyone policy allows may connect.
  auto open = MeshSnapshot::FromProto(WithWaypoint(/*bypass_allowed=*/true));
  ASSERT_TRUE(open.ok()) << open.status();
  EXPECT_TRUE((*open)
                  ->Authorize(Addr("198.18.0.6", 4000), dst,
                              "spiffe://cluster.local/ns/frontend/sa/web", nullptr)
                  .ok());
}

// A pod bound only through its service's waypoint is closed too: addressing the pod directly
// would skip the service's L7 policy.
TEST(MeshSnapshotTest, ServiceWaypointClosesItsEndpoints) {
  pb::Snapshot s = WithWaypoint();
  s.mutable_workloads(0)->clear_waypoint();
  auto snapshot = MeshSnapshot::FromProto(s);
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  Route direct = (*snapshot)->Resolve(Addr("198.18.0.5", 8080), 0, {});
  EXPECT_EQ(direct.waypoint, nullptr);  // pod-addressed: no waypoint, as in Istio
  auto denied = (*snapshot)->Authorize(Addr("198.18.0.6", 4000), Addr("198.18.0.5", 8080),
                                       "spiffe://cluster.local/ns/frontend/sa/web", nullptr);
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
}

TEST(MeshSnapshotTest, PeerPodsStaySmall) {
  constexpr int kPeers = 20000;
  pb::Snapshot s;
  s.set_version(1);
  for (int i = 0; i < kPeers; ++i) {
    AddWorkload(&s, absl::StrCat("scale-", i % 100), absl::StrCat("peer-", i),
                absl::StrFormat("2001:2:ff::%x:%x", i >> 16, i & 0xffff))
        ->set_node(absl::StrCat("far-", i % 50));
  }
  malloc_trim(0);
  size_t before = mallinfo2().uordblks + mallinfo2().hblkhd;  // heap and mmapped blocks
  auto snapshot = MeshSnapshot::FromProto(s);
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  size_t after = mallinfo2().uordblks + mallinfo2().hblkhd;
  double per_peer = static_cast<double>(after - before) / kPeers;
  std::printf("  %.0f bytes per peer pod (sizeof(mesh::Workload) = %zu)\n", per_peer,
              sizeof(mesh::Workload));
  // The WorkloadInfo behind a shared_ptr per peer that this replaced took 582 bytes here; 489
  // before Istio's workload metadata (workload name, canonical service and revision: three
  // strings, which telemetry labels need for peers too), 625 with it.
  EXPECT_LT(per_peer, 680);
  EXPECT_NE((*snapshot)->WorkloadByIp(*IpAddress::Parse("2001:2:ff::0:2a")), nullptr);
}

// Resident memory of this process, in bytes.
size_t RssBytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  long pages = 0, resident = 0;
  if (f != nullptr) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<size_t>(resident) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

// What a peer pod costs in resident memory, not just in live heap, when the snapshot arrives as
// bytes (the sealed file): decoding into a whole Snapshot message first left about 1.5 KiB of RSS
// per peer, most of it pages the freed message's small allocations kept pinned among the
// model's. Bounded here at the 1 KiB per peer the data plane is allowed; the snapshot gone, the
// memory goes back.
TEST(MeshSnapshotTest, DecodedPeerPodsFitTheirResidentBudget) {
  FixAllocatorThresholds();  // as ambit-tunnel does
  constexpr int kPeers = 50000;
  std::string bytes;
  {
    pb::Snapshot s;
    s.set_version(1);
    for (int i = 0; i < kPeers; ++i) {
      AddWorkload(&s, absl::StrCat("scale-", i % 100), absl::StrCat("peer-", i),
                  absl::StrFormat("2001:2:ff::%x:%x", i >> 16, i & 0xffff))
          ->set_node(absl::StrCat("far-", i % 50));
    }
    bytes = s.SerializeAsString();
  }
  malloc_trim(0);
  const size_t before = RssBytes();
  auto snapshot = MeshSnapshot::Decode(bytes);
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  malloc_trim(0);
  const size_t with = RssBytes();
  const double per_peer = (static_cast<double>(with) - static_cast<double>(before)) / kPeers;
  std::printf("  %.0f bytes of RSS per peer pod\n", per_peer);
  EXPECT_LT(per_peer, 1024);
  EXPECT_NE((*snapshot)->WorkloadByIp(*IpAddress::Parse("2001:2:ff::0:2a")), nullptr);
  snapshot->reset();
  const size_t after = RssBytes();
  std::printf("  RSS %zu KiB before, %zu KiB with the snapshot, %zu KiB after\n", before >> 10,
              with >> 10, after >> 10);
  // Its destructor gave the pages back (a worker drops the last reference; no one trims later).
  EXPECT_LT(after, before + (static_cast<size_t>(kPeers) * 1024 / 4));
}

// The waypoint finds a CUSTOM policy's provider by name and sends its checks to the Service's
// first cluster IP on the provider's port; what it cannot dial says why.
TEST(MeshSnapshotTest, ExtAuthzProvidersAndTheirTargets) {
  mesh::Snapshot s;
  s.version = 7;
  mesh::Workload authz;
  authz.namespace_name = "authz";
  authz.name = "ext-authz";
  authz.identity = *identity::ParseSpiffeId("spiffe://cluster.local/ns/authz/sa/ext-authz");
  authz.ips = {*IpAddress::Parse("198.18.0.9")};
  s.workloads = {authz};
  mesh::Service svc;
  svc.namespace_name = "authz";
  svc.name = "ext-authz";
  svc.cluster_ips = {*IpAddress::Parse("198.18.100.9"), *IpAddress::Parse("2001:2::100:9")};
  svc.ports = {{8000, 8000, mesh::Protocol::kTcp, mesh::AppProtocol::kHttp},
               {53, 53, mesh::Protocol::kUdp, mesh::AppProtocol::kDetect}};
  svc.endpoints = {"authz/ext-authz"};
  mesh::Service headless = svc;
  headless.name = "headless";
  headless.cluster_ips.clear();
  s.services = {svc, headless};
  authz::ExtAuthzProvider http;
  http.name = "http";
  http.service = "ext-authz.authz.svc.cluster.local";
  http.service_key = "authz/ext-authz";
  http.port = 8000;
  authz::ExtAuthzProvider udp = http;
  udp.name = "udp";
  udp.port = 53;
  authz::ExtAuthzProvider nohost = http;
  nohost.name = "headless";
  nohost.service_key = "authz/headless";
  authz::ExtAuthzProvider missing = http;
  missing.name = "missing";
  missing.service_key.clear();
  missing.unresolved = "service 'x.y' names no Service (looked up y/x)";
  s.ext_authz_providers = {http, udp, nohost, missing};
  pb::Snapshot proto;
  ASSERT_TRUE(mesh::ToProto(s, &proto).ok());
  auto snapshot = MeshSnapshot::Decode(proto.SerializeAsString());
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  const MeshSnapshot& m = **snapshot;

  ASSERT_EQ(m.ext_authz_providers().size(), 4u);
  EXPECT_EQ(m.FindExtAuthzProvider("nope"), nullptr);
  const authz::ExtAuthzProvider* p = m.FindExtAuthzProvider("http");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, http);
  std::string why;
  auto target = m.ExtAuthzTarget(*p, &why);
  ASSERT_TRUE(target.has_value()) << why;
  EXPECT_EQ(target->ToString(), "198.18.100.9:8000");
  // What a check leaves for: the Service's endpoint, as any connection to the cluster IP.
  Route route = m.Resolve(*target, 0);
  EXPECT_EQ(route.target.ToString(), "198.18.0.9:8000");

  struct Row {
    const char* provider;
    const char* why;
  } rows[] = {
      {"udp", "service authz/ext-authz has no TCP port 53"},
      {"headless", "service authz/headless is headless"},
      {"missing", "names no Service (looked up y/x)"},
  };
  for (const Row& row : rows) {
    const authz::ExtAuthzProvider* q = m.FindExtAuthzProvider(row.provider);
    ASSERT_NE(q, nullptr) << row.provider;
    why.clear();
    EXPECT_FALSE(m.ExtAuthzTarget(*q, &why).has_value()) << row.provider;
    EXPECT_NE(why.find(row.why), std::string::npos) << row.provider << ": " << why;
  }
  // A provider of another configuration, naming a service this one does not index.
  authz::ExtAuthzProvider stranger = http;
  stranger.service_key = "authz/other";
  EXPECT_FALSE(m.ExtAuthzTarget(stranger, &why).has_value());
  EXPECT_NE(why.find("is not in configuration 7"), std::string::npos) << why;
}

}  // namespace
}  // namespace ambit::tunnel
