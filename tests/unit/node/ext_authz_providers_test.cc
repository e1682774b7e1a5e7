#include "agent/node/ext_authz_providers.h"

#include <string>

#include "absl/time/time.h"
#include "agent/mesh/wire.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::node {
namespace {

using ::testing::HasSubstr;

state::ClusterState WithServices() {
  state::ClusterState s;
  for (const auto& [ns, name] : {std::pair{"foo", "ext-authz"}, std::pair{"bar", "ext-authz"},
                                 std::pair{"istio-system", "authz"}}) {
    state::Service svc;
    svc.namespace_name = ns;
    svc.name = name;
    s.services[svc.Key()] = svc;
  }
  return s;
}

state::ExtensionProvider Http(const std::string& name, const std::string& service) {
  state::ExtensionProvider p;
  p.name = name;
  p.kind = state::ExtensionProvider::Kind::kEnvoyExtAuthzHttp;
  p.kind_name = "envoyExtAuthzHttp";
  p.service = service;
  p.port = 8000;
  return p;
}

// istiod's rule (LookupCluster): the hostname as a registry holds it, with an optional namespace
// that must be the Service's own; ambit also takes the short forms a pod's resolver would.
TEST(ResolveProviderServiceTest, FollowsIstiodsHostnamesAndTheShortForms) {
  const auto services = WithServices().services;
  struct Row {
    std::string service;
    std::string key;  // empty: not resolved
    std::string why;
  } rows[] = {
      {"ext-authz.foo.svc.cluster.local", "foo/ext-authz", ""},
      {"ext-authz.foo.svc.cluster.local.", "foo/ext-authz", ""},
      {"Ext-Authz.FOO.svc.cluster.local", "foo/ext-authz", ""},
      {"foo/ext-authz.foo.svc.cluster.local", "foo/ext-authz", ""},
      {"*/ext-authz.bar.svc.cluster.local", "bar/ext-authz", ""},
      {"ext-authz.bar.svc", "bar/ext-authz", ""},
      {"ext-authz.bar", "bar/ext-authz", ""},
      {"istio-system/authz", "istio-system/authz", ""},
      {"bar/ext-authz", "bar/ext-authz", ""},
      {"ext-authz", "", "is a bare name"},
      {"bar/ext-authz.foo.svc.cluster.local", "", "names namespace bar but hostname"},
      {"ext-authz.baz.svc.cluster.local", "", "names no Service (looked up baz/ext-authz)"},
      {"ext-authz.foo.svc.other.domain", "", "is not a Kubernetes Service hostname"},
      {"a.b.c", "", "is not a Kubernetes Service hostname"},
      {"198.18.0.9", "", "is not a Kubernetes Service hostname"},
      {"nope/missing", "", "names no Service (looked up nope/missing)"},
  };
  for (const Row& row : rows) {
    auto key = ResolveProviderService(row.service, services);
    if (row.key.empty()) {
      ASSERT_FALSE(key.ok()) << row.service << " -> " << *key;
      EXPECT_THAT(std::string(key.status().message()), HasSubstr(row.why)) << row.service;
    } else {
      ASSERT_TRUE(key.ok()) << row.service << ": " << key.status();
      EXPECT_EQ(*key, row.key) << row.service;
    }
  }
}

TEST(ConvertExtAuthzProvidersTest, FillsIstioDefaultsAndLowerCasesHeaderNames) {
  state::ClusterState s = WithServices();
  state::ExtensionProvider http = Http("http", "ext-authz.foo.svc.cluster.local");
  http.path_prefix = "/check";
  http.include_request_headers_in_check = {"X-Ext-Authz", "cookie"};
  http.include_additional_headers_in_check = {{"X-Added", "v"}};
  http.headers_to_upstream_on_allow = {"X-Ext-Authz-Upstream"};
  http.headers_to_downstream_on_deny = {"X-Ext-Authz-Check-Result"};
  http.headers_to_downstream_on_allow = {"X-Down"};
  state::ExtensionProvider grpc = Http("grpc", "bar/ext-authz.bar.svc.cluster.local");
  grpc.kind = state::ExtensionProvider::Kind::kEnvoyExtAuthzGrpc;
  grpc.timeout = absl::Milliseconds(200);
  grpc.status_on_error = 503;
  grpc.fail_open = true;
  grpc.include_request_body_in_check = state::ExtAuthzRequestBody{1024, true, true};
  state::ExtensionProvider tracing;
  tracing.name = "zipkin";
  tracing.kind_name = "zipkin";
  s.mesh.extension_providers = {http, tracing, grpc};

  ExtAuthzProviders out = ConvertExtAuthzProviders(s);
  EXPECT_TRUE(out.warnings.empty());
  ASSERT_EQ(out.providers.size(), 2u);
  const authz::ExtAuthzProvider& h = out.providers[0];
  EXPECT_EQ(h.name, "http");
  EXPECT_EQ(h.kind, authz::ExtAuthzProvider::Kind::kHttp);
  EXPECT_EQ(h.service_key, "foo/ext-authz");
  EXPECT_EQ(h.unresolved, "");
  EXPECT_EQ(h.port, 8000);
  EXPECT_EQ(h.timeout, absl::Seconds(600));
  EXPECT_EQ(h.status_on_error, 403u);
  EXPECT_FALSE(h.fail_open);
  EXPECT_FALSE(h.include_request_body.has_value());
  EXPECT_EQ(h.path_prefix, "/check");
  EXPECT_THAT(h.include_request_headers, ::testing::ElementsAre("x-ext-authz", "cookie"));
  ASSERT_EQ(h.include_additional_headers.size(), 1u);
  EXPECT_EQ(h.include_additional_headers[0].first, "x-added");
  EXPECT_EQ(h.include_additional_headers[0].second, "v");
  EXPECT_THAT(h.headers_to_upstream_on_allow, ::testing::ElementsAre("x-ext-authz-upstream"));
  EXPECT_THAT(h.headers_to_downstream_on_deny, ::testing::ElementsAre("x-ext-authz-check-result"));
  EXPECT_THAT(h.headers_to_downstream_on_allow, ::testing::ElementsAre("x-down"));
  const authz::ExtAuthzProvider& g = out.providers[1];
  EXPECT_EQ(g.kind, authz::ExtAuthzProvider::Kind::kGrpc);
  EXPECT_EQ(g.service_key, "bar/ext-authz");
  EXPECT_EQ(g.timeout, absl::Milliseconds(200));
  EXPECT_EQ(g.status_on_error, 503u);
  EXPECT_TRUE(g.fail_open);
  ASSERT_TRUE(g.include_request_body.has_value());
  EXPECT_EQ(*g.include_request_body, (authz::ExtAuthzBodyOptions{1024, true, true}));
  for (const auto& p : out.providers) EXPECT_TRUE(mesh::CheckExtAuthzProvider(p).ok()) << p.name;
}

// What the waypoint cannot use still goes down, unresolved with why, so the log there names it;
// and each such provider is a warning naming provider and field.
TEST(ConvertExtAuthzProvidersTest, UnusableProvidersAreUnresolvedWithWhy) {
  state::ClusterState s = WithServices();
  state::ExtensionProvider missing = Http("missing", "ext-authz.nowhere.svc.cluster.local");
  state::ExtensionProvider big = Http("big", "foo/ext-authz");
  big.include_request_body_in_check =
      state::ExtAuthzRequestBody{mesh::kMaxExtAuthzRequestBytes + 1};
  state::ExtensionProvider header = Http("header", "foo/ext-authz");
  header.headers_to_upstream_on_allow = {"ok", "bad header"};
  state::ExtensionProvider value = Http("value", "foo/ext-authz");
  value.include_additional_headers_in_check = {{"x-a", "line\r\nx-injected: 1"}};
  state::ExtensionProvider zero = Http("zero", "foo/ext-authz");
  zero.timeout = absl::ZeroDuration();
  state::ExtensionProvider dup = Http("missing", "foo/ext-authz");
  state::ExtensionProvider noport = Http("noport", "foo/ext-authz");
  noport.port = 0;
  s.mesh.extension_providers = {missing, big, header, value, zero, dup, noport};

  ExtAuthzProviders out = ConvertExtAuthzProviders(s);
  ASSERT_EQ(out.providers.size(), 5u);
  struct Expect {
    std::string name, why;
  } expected[] = {
      {"missing", "names no Service (looked up nowhere/ext-authz)"},
      {"big", "maxRequestBytes: 8388609 is over 8388608"},
      {"header", "headersToUpstreamOnAllow[1]: 'bad header'"},
      {"value", "includeAdditionalHeadersInCheck.x-a: the value holds CR, LF or NUL"},
      {"zero", "timeout: 0 is not longer than 0s"},
  };
  for (size_t i = 0; i < 5; ++i) {
    const authz::ExtAuthzProvider& p = out.providers[i];
    EXPECT_EQ(p.name, expected[i].name);
    EXPECT_EQ(p.service_key, "") << p.name;
    EXPECT_THAT(p.unresolved, HasSubstr(expected[i].why));
    // Whatever the agent makes of the configuration, the snapshot still encodes.
    EXPECT_TRUE(mesh::CheckExtAuthzProvider(p).ok()) << mesh::CheckExtAuthzProvider(p);
  }
  EXPECT_TRUE(out.providers[3].include_additional_headers.empty());
  ASSERT_EQ(out.warnings.size(), 7u);
  EXPECT_THAT(out.warnings[0],
              HasSubstr("extensionProviders missing: service: 'ext-authz.nowhere"));
  EXPECT_THAT(out.warnings[5],
              HasSubstr("extensionProviders missing: skipped (the name is listed twice)"));
  EXPECT_THAT(out.warnings[6], HasSubstr("extensionProviders noport: skipped (port 0)"));

  // A snapshot with all of them encodes: the agent never sends what the data plane refuses.
  mesh::Snapshot snapshot;
  for (const auto& [key, svc] : s.services) {
    mesh::Service d;
    d.namespace_name = svc.namespace_name;
    d.name = svc.name;
    snapshot.services.push_back(d);
  }
  snapshot.ext_authz_providers = out.providers;
  std::string bytes;
  EXPECT_TRUE(mesh::EncodeSnapshot(snapshot, &bytes).ok());
}

}  // namespace
}  // namespace ambit::node
