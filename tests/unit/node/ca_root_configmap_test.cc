// istiod's roots from the istio-ca-root-cert ConfigMap: the parsing of the flag and of the API
// server's answer (pure), and the source against tests/kube/fake_apiserver.py (standing in for
// kube-apiserver: real paths, JSON and status codes) through a rotation.
#include "agent/node/ca_root_configmap.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "agent/ca/certificate_authority.h"
#include "tests/unit/kube/fake_apiserver_process.h"

namespace ambit::node {
namespace {

TEST(ParseConfigMapRefTest, NamespaceSlashName) {
  auto ref = ParseConfigMapRef("istio-system/istio-ca-root-cert");
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->namespace_name, "istio-system");
  EXPECT_EQ(ref->name, "istio-ca-root-cert");
  EXPECT_EQ(ref->key, "root-cert.pem");
  for (const char* bad :
       {"", "istio-ca-root-cert", "a/b/c", "/b", "a/", "A/b", "a/b?x=1", "a/../b", "a/-b"}) {
    auto r = ParseConfigMapRef(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(r.status().message().find("NAMESPACE/NAME"), std::string::npos) << r.status();
  }
}

TEST(RootsFromConfigMapTest, Answers) {
  const ConfigMapRef ref{"ambit-system", "istio-ca-root-cert"};
  auto ok = RootsFromConfigMap(200, R"({"kind":"ConfigMap","data":{"root-cert.pem":"PEM"}})", ref);
  EXPECT_EQ(ok.value_or(""), "PEM");
  struct Row {
    long status;
    const char* body;
    absl::StatusCode code;
    const char* message;
  } rows[] = {
      {404, R"({"kind":"Status"})", absl::StatusCode::kNotFound,
       "ConfigMap ambit-system/istio-ca-root-cert not found"},
      {403, R"({"kind":"Status"})", absl::StatusCode::kUnavailable, "HTTP 403"},
      {200, "not json", absl::StatusCode::kUnavailable, "no ConfigMap"},
      {200, R"({"kind":"Secret","data":{}})", absl::StatusCode::kUnavailable, "no ConfigMap"},
      {200, R"({"kind":"ConfigMap"})", absl::StatusCode::kInvalidArgument, "has no data"},
      {200, R"({"kind":"ConfigMap","data":{"ca.crt":"x"}})", absl::StatusCode::kInvalidArgument,
       "has no data key root-cert.pem"},
      {200, R"({"kind":"ConfigMap","data":{"root-cert.pem":7}})",
       absl::StatusCode::kInvalidArgument, "has no data key root-cert.pem"},
  };
  for (const Row& row : rows) {
    auto got = RootsFromConfigMap(row.status, row.body, ref);
    EXPECT_EQ(got.status().code(), row.code) << row.body;
    EXPECT_NE(got.status().message().find(row.message), std::string::npos) << got.status();
  }
}

std::string ConfigMapJson(const std::string& roots) {
  nlohmann::json object = {
      {"apiVersion", "v1"},
      {"kind", "ConfigMap"},
      {"metadata", {{"namespace", "ambit-system"}, {"name", "istio-ca-root-cert"}}},
      {"data", {{"root-cert.pem", roots}}}};
  return nlohmann::json({{"object", object}}).dump();
}

bool Eventually(const std::function<bool()>& done) {
  for (int i = 0; i < 100; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return done();
}

TEST(ConfigMapRootSourceTest, FollowsTheConfigMapAndKeepsTheLastGoodRoots) {
  kube::testing::FakeApiServerProcess server;
  ASSERT_TRUE(server.ok());
  std::string roots[2];
  for (int i = 0; i < 2; ++i) {
    ca::CaOptions o;
    o.state_dir = absl::StrCat(server.dir(), "/ca", i);
    auto ca = ca::CertificateAuthority::Create(o);
    ASSERT_TRUE(ca.ok()) << ca.status();
    roots[i] = (*ca)->TrustBundle()[0];
  }
  auto ref = ParseConfigMapRef("ambit-system/istio-ca-root-cert");
  ASSERT_TRUE(ref.ok());
  auto source = ConfigMapRootSource::Start(server.Client(), *ref, absl::Milliseconds(100));
  // Not published yet: no roots, and the reason says which ConfigMap.
  auto none = source->Roots();
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(none.status().message().find("not found"), std::string::npos) << none.status();

  server.Control("apply", ConfigMapJson(roots[0]));
  EXPECT_TRUE(Eventually([&] { return source->Roots().value_or("") == roots[0]; }));
  server.Control("apply", ConfigMapJson(roots[0] + roots[1]));
  EXPECT_TRUE(Eventually([&] { return source->Roots().value_or("") == roots[0] + roots[1]; }));
  // Bad content, then the ConfigMap deleted: the last good roots stay.
  server.Control("apply", ConfigMapJson("garbage"));
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(source->Roots().value_or(""), roots[0] + roots[1]);
  server.Control(
      "delete",
      R"({"kind": "ConfigMap", "namespace": "ambit-system", "name": "istio-ca-root-cert"})");
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(source->Roots().value_or(""), roots[0] + roots[1]);
  server.Control("apply", ConfigMapJson(roots[1]));
  EXPECT_TRUE(Eventually([&] { return source->Roots().value_or("") == roots[1]; }));
  EXPECT_EQ(source->Description(), "ConfigMap ambit-system/istio-ca-root-cert");
}

}  // namespace
}  // namespace ambit::node
