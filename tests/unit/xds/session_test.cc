#include "agent/xds/session.h"

#include <arpa/inet.h>

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::xds {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;
namespace dv3 = ::envoy::service::discovery::v3;
namespace iw = ::istio::workload;
namespace is = ::istio::security;

std::string WorkloadBytes(const std::string& uid, const std::string& name,
                          const std::string& trust_domain = "") {
  iw::Address a;
  iw::Workload* w = a.mutable_workload();
  w->set_uid(uid);
  w->set_name(name);
  w->set_namespace_("backend");
  w->set_trust_domain(trust_domain);
  w->set_tunnel_protocol(iw::HBONE);
  in_addr ip;
  inet_pton(AF_INET, "198.18.0.5", &ip);
  w->add_addresses(std::string(reinterpret_cast<const char*>(&ip), 4));
  return a.SerializeAsString();
}

std::string PolicyBytes(const std::string& name, int action = is::ALLOW) {
  is::Authorization a;
  a.set_name(name);
  a.set_namespace_("backend");
  a.set_scope(is::NAMESPACE);
  a.set_action(static_cast<is::Action>(action));
  a.add_rules();
  return a.SerializeAsString();
}

dv3::DeltaDiscoveryResponse Response(const std::string& type, const std::string& nonce) {
  dv3::DeltaDiscoveryResponse r;
  r.set_type_url(type);
  r.set_nonce(nonce);
  return r;
}

void Add(dv3::DeltaDiscoveryResponse* r, const std::string& name, const std::string& version,
         const std::string& bytes) {
  dv3::Resource* res = r->add_resources();
  res->set_name(name);
  res->set_version(version);
  res->mutable_resource()->set_type_url(r->type_url());
  res->mutable_resource()->set_value(bytes);
}

const std::string kAddr(kAddressType);
const std::string kAuthz(kAuthorizationType);

TEST(SessionTest, StartSubscribesToBothTypesWithTheNode) {
  Session s({}, {});
  envoy::config::core::v3::Node node;
  node.set_id("ztunnel~198.18.0.1~ambit.ambit-system~ambit-system.svc.cluster.local");
  auto reqs = s.Start(node);
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].type_url(), kAddr);
  EXPECT_EQ(reqs[1].type_url(), kAuthz);
  for (const auto& r : reqs) {
    EXPECT_EQ(r.node().id(), node.id());
    EXPECT_THAT(r.resource_names_subscribe(), IsEmpty());  // wildcard
    EXPECT_THAT(r.initial_resource_versions(), IsEmpty());
    EXPECT_TRUE(r.response_nonce().empty());
  }
  EXPECT_THAT(s.Missing(), ElementsAre(kAddr, kAuthz));
}

TEST(SessionTest, AcksWithTheNonceAndKeepsResources) {
  Session s({}, {});
  auto r = Response(kAddr, "n1");
  Add(&r, "uid-1", "v1", WorkloadBytes("uid-1", "api-0"));
  Session::Outcome o = s.Handle(r);
  EXPECT_FALSE(o.nack);
  EXPECT_TRUE(o.changed);
  EXPECT_EQ(o.reply.type_url(), kAddr);
  EXPECT_EQ(o.reply.response_nonce(), "n1");
  EXPECT_FALSE(o.reply.has_error_detail());
  EXPECT_THAT(s.Missing(), ElementsAre(kAuthz));
  EXPECT_TRUE(s.Received(kAddr));
  // The same again changes nothing.
  r.set_nonce("n2");
  o = s.Handle(r);
  EXPECT_FALSE(o.changed);
  EXPECT_EQ(o.reply.response_nonce(), "n2");
  std::map<std::string, config::ConfigObject> objects;
  std::vector<config::ConfigError> errors;
  s.Collect(&objects, &errors);
  EXPECT_TRUE(objects.contains("Pod backend/api-0"));
  EXPECT_THAT(errors, IsEmpty());
  EXPECT_EQ(s.counters(kAddr).acks, 2u);
}

TEST(SessionTest, NacksABadResourceAndKeepsItsLastGoodVersion) {
  Session s({}, {});
  auto r = Response(kAuthz, "n1");
  Add(&r, "backend/only-web", "1", PolicyBytes("only-web"));
  ASSERT_FALSE(s.Handle(r).nack);

  auto bad = Response(kAuthz, "n2");
  Add(&bad, "backend/only-web", "2", PolicyBytes("only-web", /*action=*/5));
  Add(&bad, "backend/other", "3", PolicyBytes("other"));
  Session::Outcome o = s.Handle(bad);
  EXPECT_TRUE(o.nack);
  EXPECT_EQ(o.reply.response_nonce(), "n2");
  EXPECT_EQ(o.reply.error_detail().code(), 3);
  EXPECT_THAT(o.reply.error_detail().message(),
              HasSubstr("Authorization backend/only-web: field action: unknown value 5"));
  // The good resource of the same response applied; the bad one kept version 1.
  EXPECT_THAT(
      s.resources(kAuthz),
      UnorderedElementsAre(Pair("backend/only-web", testing::Field(&Session::Held::version, "1")),
                           Pair("backend/other", testing::Field(&Session::Held::version, "3"))));
  std::map<std::string, config::ConfigObject> objects;
  std::vector<config::ConfigError> errors;
  s.Collect(&objects, &errors);
  EXPECT_EQ(std::get<authz::Policy>(objects.at("AuthorizationPolicy backend/only-web")).action,
            authz::Action::kAllow);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_THAT(errors[0].message, HasSubstr("its last good version stays in force"));
  EXPECT_EQ(errors[0].file, "xds");
  EXPECT_EQ(s.counters(kAuthz).nacks, 1u);

  // Fixed: the error goes.
  auto fixed = Response(kAuthz, "n3");
  Add(&fixed, "backend/only-web", "4", PolicyBytes("only-web", is::DENY));
  EXPECT_FALSE(s.Handle(fixed).nack);
  objects.clear();
  errors.clear();
  s.Collect(&objects, &errors);
  EXPECT_THAT(errors, IsEmpty());
  EXPECT_EQ(std::get<authz::Policy>(objects.at("AuthorizationPolicy backend/only-web")).action,
            authz::Action::kDeny);
}

TEST(SessionTest, EnvelopeProblemsAreNacked) {
  Session s({.max_resources = 1}, {});
  auto r = Response(kAddr, "n1");
  Add(&r, "uid-1", "1", WorkloadBytes("uid-1", "a"));
  Add(&r, "uid-2", "1", WorkloadBytes("uid-2", "b"));  // past max_resources
  dv3::Resource* wrong = r.add_resources();
  wrong->set_name("uid-3");
  wrong->mutable_resource()->set_type_url(kAuthz);
  r.add_resources()->set_name("uid-4");  // no resource
  Session::Outcome o = s.Handle(r);
  ASSERT_TRUE(o.nack);
  const std::string& msg = o.reply.error_detail().message();
  EXPECT_THAT(msg, HasSubstr("resource 'uid-2': more than 1 resources of this type"));
  EXPECT_THAT(msg, HasSubstr("resource 'uid-3': holds a 'type.googleapis.com/istio.security"));
  EXPECT_THAT(msg, HasSubstr("resource 'uid-4': no resource"));
  EXPECT_EQ(s.resources(kAddr).size(), 1u);

  // A type never subscribed to is NACKed whole.
  o = s.Handle(Response("type.googleapis.com/envoy.config.cluster.v3.Cluster", "n2"));
  EXPECT_TRUE(o.nack);
  EXPECT_THAT(o.reply.error_detail().message(), HasSubstr("was not subscribed to"));
}

TEST(SessionTest, RemovalsAndInitialVersionsOnReconnect) {
  Session s({}, {});
  auto r = Response(kAddr, "n1");
  Add(&r, "uid-1", "7", WorkloadBytes("uid-1", "a"));
  Add(&r, "uid-2", "8", WorkloadBytes("uid-2", "b"));
  s.Handle(r);
  auto rm = Response(kAddr, "n2");
  rm.add_removed_resources("uid-1");
  rm.add_removed_resources("never-held");
  Session::Outcome o = s.Handle(rm);
  EXPECT_FALSE(o.nack);
  EXPECT_TRUE(o.changed);
  auto reqs = s.Start(envoy::config::core::v3::Node());
  EXPECT_THAT(reqs[0].initial_resource_versions(), UnorderedElementsAre(Pair("uid-2", "8")));
  EXPECT_THAT(reqs[1].initial_resource_versions(), IsEmpty());
  // A type received on an earlier stream stays received: readiness does not drop on reconnect.
  EXPECT_TRUE(s.Received(kAddr));
}

TEST(SessionTest, MeshChangeRemapsHeldResources) {
  Session s({}, {});
  auto r = Response(kAddr, "n1");
  Add(&r, "uid-1", "1", WorkloadBytes("uid-1", "a", "example.org"));
  EXPECT_TRUE(s.Handle(r).nack);  // not the mesh's trust domain (cluster.local)
  EXPECT_TRUE(s.SetContext({.trust_domain = "example.org"}));
  r.set_nonce("n2");
  EXPECT_FALSE(s.Handle(r).nack);
  // Back to cluster.local: held, but left out with an error.
  EXPECT_TRUE(s.SetContext({.trust_domain = "cluster.local"}));
  std::map<std::string, config::ConfigObject> objects;
  std::vector<config::ConfigError> errors;
  s.Collect(&objects, &errors);
  EXPECT_THAT(objects, IsEmpty());
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_THAT(errors[0].message, HasSubstr("left out under the mesh config"));
}

TEST(SessionTest, TwoResourcesOfOneObjectAreReported) {
  Session s({}, {});
  auto r = Response(kAddr, "n1");
  Add(&r, "uid-1", "1", WorkloadBytes("uid-1", "same"));
  Add(&r, "uid-2", "1", WorkloadBytes("uid-2", "same"));
  s.Handle(r);
  std::map<std::string, config::ConfigObject> objects;
  std::vector<config::ConfigError> errors;
  s.Collect(&objects, &errors);
  EXPECT_EQ(std::get<state::Pod>(objects.at("Pod backend/same")).uid, "uid-1");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_THAT(errors[0].message, HasSubstr("resource 'uid-2' maps to the same object as 'uid-1'"));
}

}  // namespace
}  // namespace ambit::xds
