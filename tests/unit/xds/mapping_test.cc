#include "agent/xds/mapping.h"

#include <arpa/inet.h>

#include <string>
#include <vector>

#include "agent/authz/compile.h"
#include "agent/authz/engine.h"
#include "agent/state/waypoint.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::xds {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
namespace iw = ::istio::workload;
namespace is = ::istio::security;

std::string V4(const char* text) {
  in_addr a;
  inet_pton(AF_INET, text, &a);
  return std::string(reinterpret_cast<const char*>(&a), 4);
}

iw::Address WorkloadAddress() {
  iw::Address a;
  iw::Workload* w = a.mutable_workload();
  w->set_uid("Kubernetes//Pod/backend/api-0");
  w->set_name("api-0");
  w->set_namespace_("backend");
  w->set_service_account("api");
  w->set_node("node1");
  w->set_tunnel_protocol(iw::HBONE);
  w->add_addresses(V4("198.18.0.5"));
  w->set_workload_name("api");
  w->set_canonical_name("api-canonical");
  w->set_canonical_revision("v2");
  w->add_authorization_policies("backend/only-web");
  (*w->mutable_services())["backend/api.backend.svc.cluster.local"].add_ports()->set_service_port(
      80);
  return a;
}

const state::Pod& PodOf(const Mapped& m) {
  for (const auto& o : m) {
    if (const auto* p = std::get_if<state::Pod>(&o.object)) return *p;
  }
  static state::Pod none;
  ADD_FAILURE() << "no pod mapped";
  return none;
}

TEST(MapWorkloadTest, FillsThePod) {
  absl::StatusOr<Mapped> m = MapAddress(WorkloadAddress(), MapContext{});
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->size(), 1u);
  EXPECT_EQ((*m)[0].id, "Pod backend/api-0");
  const state::Pod& pod = PodOf(*m);
  EXPECT_EQ(pod.uid, "Kubernetes//Pod/backend/api-0");
  EXPECT_EQ(pod.service_account, "api");
  EXPECT_EQ(pod.node_name, "node1");
  ASSERT_EQ(pod.ips.size(), 1u);
  EXPECT_EQ(pod.ips[0].ToString(), "198.18.0.5");
  EXPECT_EQ(pod.workload_name, "api");
  EXPECT_EQ(pod.canonical_service, "api-canonical");
  EXPECT_EQ(pod.canonical_revision, "v2");
  EXPECT_EQ(pod.source_file, "xds");
  EXPECT_EQ(pod.labels.at(std::string(state::kDataplaneModeLabel)), "ambient");
  EXPECT_EQ(pod.labels.at(PolicyLabel("backend", "only-web")), "true");
  EXPECT_EQ(pod.labels.at(ServiceLabel("backend", "api.backend.svc.cluster.local")), "true");
}

TEST(MapWorkloadTest, OnlyHboneWorkloadsAreInTheMesh) {
  for (auto [protocol, mode, in_mesh] :
       std::vector<std::tuple<iw::TunnelProtocol, iw::NetworkMode, bool>>{
           {iw::HBONE, iw::STANDARD, true},
           {iw::NONE, iw::STANDARD, false},
           {iw::LEGACY_ISTIO_MTLS, iw::STANDARD, false},
           {iw::HBONE, iw::HOST_NETWORK, false}}) {
    iw::Address a = WorkloadAddress();
    a.mutable_workload()->set_tunnel_protocol(protocol);
    a.mutable_workload()->set_network_mode(mode);
    absl::StatusOr<Mapped> m = MapAddress(a, MapContext{});
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(PodOf(*m).labels.contains(std::string(state::kDataplaneModeLabel)), in_mesh)
        << protocol << " " << mode;
  }
}

TEST(MapWorkloadTest, WaypointByHostnameBindsAndDeclaresTheGateway) {
  iw::Address a = WorkloadAddress();
  auto* h = a.mutable_workload()->mutable_waypoint()->mutable_hostname();
  h->set_namespace_("backend");
  h->set_hostname("waypoint.backend.svc.cluster.local");
  absl::StatusOr<Mapped> m = MapAddress(a, MapContext{});
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->size(), 2u);
  EXPECT_EQ((*m)[0].id, "Gateway backend/waypoint");
  const auto& gw = std::get<state::Gateway>((*m)[0].object);
  EXPECT_EQ(gw.gateway_class, "istio-waypoint");
  const state::Pod& pod = PodOf(*m);
  EXPECT_EQ(pod.labels.at(state::kUseWaypointLabel), "waypoint");
  EXPECT_EQ(pod.labels.at(state::kUseWaypointNamespaceLabel), "backend");
}

// Each row: a change to a good workload and the error that refuses it.
TEST(MapWorkloadTest, RefusesWhatCannotBeMappedFaithfully) {
  struct Row {
    const char* what;
    void (*mutate)(iw::Workload*);
    const char* error;
  };
  const Row rows[] = {
      {"no uid", [](iw::Workload* w) { w->clear_uid(); }, "Workload: field uid"},
      {"no name", [](iw::Workload* w) { w->clear_name(); }, "field name: must not be empty"},
      {"no namespace", [](iw::Workload* w) { w->clear_namespace_(); }, "field namespace"},
      {"bad address", [](iw::Workload* w) { w->add_addresses("abc"); },
       "field addresses[1]: an address is 4 or 16 bytes, not 3"},
      {"unknown tunnel protocol",
       [](iw::Workload* w) { w->set_tunnel_protocol(static_cast<iw::TunnelProtocol>(9)); },
       "field tunnel_protocol: unknown value 9"},
      {"unknown network mode",
       [](iw::Workload* w) { w->set_network_mode(static_cast<iw::NetworkMode>(5)); },
       "field network_mode: unknown value 5"},
      {"other trust domain", [](iw::Workload* w) { w->set_trust_domain("other.org"); },
       "field trust_domain: 'other.org' is not the mesh's trust domain 'cluster.local'"},
      {"waypoint by address",
       [](iw::Workload* w) {
         w->mutable_waypoint()->mutable_address()->set_address(V4("198.18.0.9"));
       },
       "field waypoint.address: a waypoint given by address is not supported"},
      {"application tunnel",
       [](iw::Workload* w) {
         w->mutable_application_tunnel()->set_protocol(iw::ApplicationTunnel::PROXY);
       },
       "field application_tunnel.protocol: application tunnels (PROXY protocol) are not "
       "supported"},
      {"unknown workload type",
       [](iw::Workload* w) { w->set_workload_type(static_cast<iw::WorkloadType>(8)); },
       "field workload_type: unknown value 8"},
      {"network gateway", [](iw::Workload* w) { w->mutable_network_gateway()->mutable_hostname(); },
       "field network_gateway"},
      {"bad policy name", [](iw::Workload* w) { w->add_authorization_policies("nameonly"); },
       "field authorization_policies[1]: 'nameonly' is not <namespace>/<name>"},
  };
  for (const Row& row : rows) {
    iw::Address a = WorkloadAddress();
    row.mutate(a.mutable_workload());
    absl::StatusOr<Mapped> m = MapAddress(a, MapContext{});
    ASSERT_FALSE(m.ok()) << row.what;
    EXPECT_THAT(m.status().message(), HasSubstr(row.error)) << row.what;
  }
}

TEST(MapServiceTest, FillsTheService) {
  iw::Address a;
  iw::Service* s = a.mutable_service();
  s->set_name("api");
  s->set_namespace_("backend");
  s->set_hostname("api.backend.svc.cluster.local");
  s->add_addresses()->set_address(V4("198.19.7.1"));
  iw::Port* p = s->add_ports();
  p->set_service_port(80);
  p->set_target_port(8080);
  p->set_app_protocol(iw::HTTP2);
  absl::StatusOr<Mapped> m = MapAddress(a, MapContext{});
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->size(), 1u);
  EXPECT_EQ((*m)[0].id, "Service backend/api");
  const auto& svc = std::get<state::Service>((*m)[0].object);
  ASSERT_EQ(svc.cluster_ips.size(), 1u);
  EXPECT_EQ(svc.cluster_ips[0].ToString(), "198.19.7.1");
  ASSERT_EQ(svc.ports.size(), 1u);
  EXPECT_EQ(svc.ports[0].port, 80);
  EXPECT_EQ(svc.ports[0].target_port, "8080");
  EXPECT_EQ(svc.ports[0].app_protocol, "http2");
  // Its endpoints are the workloads that name it.
  absl::StatusOr<Mapped> w = MapAddress(WorkloadAddress(), MapContext{});
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE(state::Selects(svc, PodOf(*w)));

  p->set_app_protocol(static_cast<iw::AppProtocol>(42));
  m = MapAddress(a, MapContext{});
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(),
              HasSubstr("Service backend/api.backend.svc.cluster.local: field "
                        "ports[0].app_protocol: unknown value 42"));
}

// ---- Authorization: mapped, then judged by the engine, so the rows state Istio's semantics ----

is::StringMatch Exact(const std::string& s) {
  is::StringMatch m;
  m.set_exact(s);
  return m;
}

is::Authorization Policy(is::Action action, is::Scope scope) {
  is::Authorization a;
  a.set_name("p");
  a.set_namespace_("backend");
  a.set_action(action);
  a.set_scope(scope);
  return a;
}

authz::Decision Judge(const is::Authorization& a, const std::string& principal,
                      uint16_t port = 8080, const char* source_ip = "198.18.0.2",
                      const char* dest_ip = "198.18.0.5", bool selected = true) {
  absl::StatusOr<Mapped> m = MapAuthorization(a, MapContext{});
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return {};
  const auto& policy = std::get<authz::Policy>((*m)[0].object);
  auto compiled = authz::Compile(policy);
  EXPECT_TRUE(compiled.ok());
  auto engine = authz::Engine::Create({*compiled}, {});
  EXPECT_TRUE(engine.ok());
  authz::Workload target;
  target.namespace_name = "backend";
  if (selected) target.labels[PolicyLabel("backend", "p")] = "true";
  authz::Request r;
  r.source_principal = principal.empty() ? "" : "spiffe://" + principal;
  r.source_ip = *IpAddress::Parse(source_ip);
  r.destination_ip = *IpAddress::Parse(dest_ip);
  r.destination_port = port;
  return (*engine)->Evaluate(target, r);
}

constexpr char kWeb[] = "cluster.local/ns/frontend/sa/web";
constexpr char kOther[] = "cluster.local/ns/frontend/sa/other";

TEST(MapAuthorizationTest, KeepsIstiodsNameAndScope) {
  is::Authorization a = Policy(is::ALLOW, is::WORKLOAD_SELECTOR);
  a.set_dry_run(true);
  absl::StatusOr<Mapped> m = MapAuthorization(a, MapContext{});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)[0].id, "AuthorizationPolicy backend/p");
  const auto& p = std::get<authz::Policy>((*m)[0].object);
  EXPECT_EQ(p.Key(), "backend/p");
  EXPECT_TRUE(p.dry_run);
  ASSERT_TRUE(p.selector.has_value());
  EXPECT_EQ(p.selector->at(PolicyLabel("backend", "p")), "true");

  a.set_scope(is::GLOBAL);
  a.set_namespace_("istio-system");
  a.set_name("istio_converted_static_strict");
  m = MapAuthorization(a, MapContext{.root_namespace = "mesh-root"});
  ASSERT_TRUE(m.ok()) << m.status();
  const auto& g = std::get<authz::Policy>((*m)[0].object);
  EXPECT_EQ(g.Key(), "mesh-root/istio_converted_static_strict");
  EXPECT_FALSE(g.selector.has_value());

  a.set_scope(is::NAMESPACE);
  a.set_namespace_("backend");
  m = MapAuthorization(a, MapContext{});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_FALSE(std::get<authz::Policy>((*m)[0].object).selector.has_value());
}

TEST(MapAuthorizationTest, Semantics) {
  // ALLOW principals [web]: web in, other out.
  is::Authorization allow = Policy(is::ALLOW, is::WORKLOAD_SELECTOR);
  *allow.add_rules()->add_clauses()->add_matches()->add_principals() = Exact(kWeb);
  EXPECT_TRUE(Judge(allow, kWeb).allowed);
  EXPECT_FALSE(Judge(allow, kOther).allowed);
  // Not selected: the WORKLOAD_SELECTOR policy does not apply.
  EXPECT_TRUE(Judge(allow, kOther, 8080, "198.18.0.2", "198.18.0.5", false).allowed);

  // STRICT as istiod converts it: DENY not_principals [presence].
  is::Authorization strict = Policy(is::DENY, is::NAMESPACE);
  strict.add_rules()->add_clauses()->add_matches()->add_not_principals()->mutable_presence();
  EXPECT_FALSE(Judge(strict, "").allowed);
  EXPECT_TRUE(Judge(strict, kWeb).allowed);
  EXPECT_EQ(Judge(strict, "").policy, "backend/p");

  // Prefix, suffix.
  is::Authorization prefix = Policy(is::DENY, is::NAMESPACE);
  prefix.add_rules()->add_clauses()->add_matches()->add_principals()->set_prefix(
      "cluster.local/ns/frontend/");
  EXPECT_FALSE(Judge(prefix, kWeb).allowed);
  EXPECT_TRUE(Judge(prefix, "cluster.local/ns/backend/sa/x").allowed);
  is::Authorization suffix = Policy(is::DENY, is::NAMESPACE);
  suffix.add_rules()->add_clauses()->add_matches()->add_principals()->set_suffix("/sa/other");
  EXPECT_FALSE(Judge(suffix, kOther).allowed);
  EXPECT_TRUE(Judge(suffix, kWeb).allowed);

  // Two clauses are ANDed: source namespace AND port.
  is::Authorization both = Policy(is::DENY, is::NAMESPACE);
  is::Rule* r = both.add_rules();
  *r->add_clauses()->add_matches()->add_namespaces() = Exact("frontend");
  r->add_clauses()->add_matches()->add_destination_ports(9000);
  EXPECT_FALSE(Judge(both, kWeb, 9000).allowed);
  EXPECT_TRUE(Judge(both, kWeb, 8080).allowed);
  EXPECT_TRUE(Judge(both, "cluster.local/ns/backend/sa/x", 9000).allowed);

  // The matches of a clause are ORed; not_ forms exclude.
  is::Authorization ored = Policy(is::DENY, is::NAMESPACE);
  is::Clause* c = ored.add_rules()->add_clauses();
  *c->add_matches()->add_principals() = Exact(kWeb);
  is::Match* m2 = c->add_matches();
  *m2->add_namespaces() = Exact("frontend");
  *m2->add_not_principals() = Exact(kWeb);
  *m2->add_not_principals() = Exact(kOther);
  EXPECT_FALSE(Judge(ored, kWeb).allowed);
  EXPECT_TRUE(Judge(ored, kOther).allowed);
  EXPECT_FALSE(Judge(ored, "cluster.local/ns/frontend/sa/third").allowed);

  // Source and destination IPs, not_ ports, in one match (conditions).
  is::Authorization ips = Policy(is::DENY, is::NAMESPACE);
  is::Match* m = ips.add_rules()->add_clauses()->add_matches();
  is::Address* sip = m->add_source_ips();
  sip->set_address(V4("198.18.0.0"));
  sip->set_length(24);
  is::Address* dip = m->add_not_destination_ips();
  dip->set_address(V4("198.18.0.6"));
  dip->set_length(32);
  m->add_not_destination_ports(22);
  EXPECT_FALSE(Judge(ips, kWeb, 8080, "198.18.0.2", "198.18.0.5").allowed);
  EXPECT_TRUE(Judge(ips, kWeb, 8080, "198.18.1.2", "198.18.0.5").allowed);
  EXPECT_TRUE(Judge(ips, kWeb, 8080, "198.18.0.2", "198.18.0.6").allowed);
  EXPECT_TRUE(Judge(ips, kWeb, 22, "198.18.0.2", "198.18.0.5").allowed);

  // A clause of several matches mixing fields distributes into rules: (ns a AND port 1) OR
  // (principal web), ANDed with a port clause.
  is::Authorization mixed = Policy(is::DENY, is::NAMESPACE);
  is::Rule* mr = mixed.add_rules();
  is::Clause* mc = mr->add_clauses();
  is::Match* ma = mc->add_matches();
  *ma->add_namespaces() = Exact("backend");
  ma->add_destination_ports(1);
  *mc->add_matches()->add_principals() = Exact(kWeb);
  mr->add_clauses()->add_matches()->add_not_destination_ports(7);
  EXPECT_FALSE(Judge(mixed, kWeb, 80).allowed);
  EXPECT_TRUE(Judge(mixed, kWeb, 7).allowed);
  EXPECT_FALSE(Judge(mixed, "cluster.local/ns/backend/sa/x", 1).allowed);
  EXPECT_TRUE(Judge(mixed, "cluster.local/ns/backend/sa/x", 2).allowed);

  // Service accounts.
  is::Authorization sa = Policy(is::ALLOW, is::NAMESPACE);
  is::ServiceAccountMatch* sam =
      sa.add_rules()->add_clauses()->add_matches()->add_service_accounts();
  sam->set_namespace_("frontend");
  sam->set_serviceaccount("web");
  EXPECT_TRUE(Judge(sa, kWeb).allowed);
  EXPECT_FALSE(Judge(sa, kOther).allowed);

  // An ALLOW with no rules denies everything it applies to; an empty clause matches nothing; an
  // empty rule everything.
  EXPECT_FALSE(Judge(Policy(is::ALLOW, is::NAMESPACE), kWeb).allowed);
  is::Authorization empty_clause = Policy(is::DENY, is::NAMESPACE);
  empty_clause.add_rules()->add_clauses();
  EXPECT_TRUE(Judge(empty_clause, kWeb).allowed);
  is::Authorization empty_rule = Policy(is::DENY, is::NAMESPACE);
  empty_rule.add_rules();
  EXPECT_FALSE(Judge(empty_rule, kWeb).allowed);
}

TEST(MapAuthorizationTest, Refuses) {
  struct Row {
    const char* what;
    void (*mutate)(is::Authorization*);
    const char* error;
  };
  const Row rows[] = {
      {"unknown action", [](is::Authorization* a) { a->set_action(static_cast<is::Action>(2)); },
       "Authorization backend/p: field action: unknown value 2"},
      {"unknown scope", [](is::Authorization* a) { a->set_scope(static_cast<is::Scope>(7)); },
       "field scope: unknown value 7"},
      {"no name", [](is::Authorization* a) { a->clear_name(); }, "field name"},
      {"empty string match",
       [](is::Authorization* a) { a->add_rules()->add_clauses()->add_matches()->add_principals(); },
       "field rules[0].clauses[0].matches[0].principals[0]: no match type"},
      {"bad CIDR",
       [](is::Authorization* a) {
         is::Address* ip = a->add_rules()->add_clauses()->add_matches()->add_not_source_ips();
         ip->set_address(V4("198.18.0.0"));
         ip->set_length(33);
       },
       "field rules[0].clauses[0].matches[0].not_source_ips[0].length: 33 is longer than 32"},
      {"extension", [](is::Authorization* a) { a->add_extensions()->set_name("x.y"); },
       "field extensions: extension 'x.y' is not supported"},
      {"wildcard exact",
       [](is::Authorization* a) {
         *a->add_rules()->add_clauses()->add_matches()->add_namespaces() = Exact("*");
       },
       "would match as a wildcard"},
  };
  for (const Row& row : rows) {
    is::Authorization a = Policy(is::ALLOW, is::WORKLOAD_SELECTOR);
    row.mutate(&a);
    absl::StatusOr<Mapped> m = MapAuthorization(a, MapContext{});
    ASSERT_FALSE(m.ok()) << row.what;
    EXPECT_THAT(m.status().message(), HasSubstr(row.error)) << row.what;
  }
}

TEST(MapAuthorizationTest, ExpansionIsBounded) {
  is::Authorization a = Policy(is::DENY, is::NAMESPACE);
  is::Rule* r = a.add_rules();
  // Four clauses of five mixed matches: 5^4 = 625 rules, past the bound.
  for (int c = 0; c < 4; ++c) {
    is::Clause* clause = r->add_clauses();
    for (int m = 0; m < 5; ++m) {
      is::Match* match = clause->add_matches();
      *match->add_namespaces() = Exact("ns" + std::to_string(m));
      match->add_destination_ports(1000 + m);
    }
  }
  absl::StatusOr<Mapped> m = MapAuthorization(a, MapContext{});
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("expands to more than 256 rules"));
}

TEST(MapResourceTest, NamesMustMatchTheResource) {
  std::string bytes = WorkloadAddress().SerializeAsString();
  EXPECT_TRUE(MapResource(kAddressType, "Kubernetes//Pod/backend/api-0", bytes, {}).ok());
  absl::StatusOr<Mapped> m = MapResource(kAddressType, "other", bytes, {});
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("Address other: the resource holds"));
  m = MapResource(kAddressType, "x", "\xff\xff\xff", {});
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("not a valid istio.workload.Address"));
  m = MapResource("type.googleapis.com/envoy.config.cluster.v3.Cluster", "x", "", {});
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("unknown type URL"));
}

}  // namespace
}  // namespace ambit::xds
