// The evaluator behind `ambitctl check`: destination resolution as the tunnel does it, the
// waypoint hop (RequestAuthentication, then L7 AuthorizationPolicy), the destination tunnel's
// bypass check and L4 policy, on a configuration loaded as ambitd loads it.

#include "agent/node/live_check.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "agent/config/directory_loader.h"
#include "agent/config/load_result.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::node {
namespace {

namespace pb = ::ambit::admin::v1;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

// An RS256 key set and a token it verifies (iss https://issuer.test, sub user-1, exp 1800000000),
// made once with python3-jwt; the checks pick their time with now_unix_seconds.
constexpr char kJwks[] =
    R"({"keys":[{"kty":"RSA","key_ops":["verify"],"n":"v0VbwMDErB7caW1MeS1RHvBVMejLu8yYfSA1ubQEFaByJQmVYTxTJ_KZvQbamBK7xs05Bv-rmTgwU9sHfkOpwS9lrBdzmj-jANaeWVOChUpL9k1GA-iobX_aozwB2w-TJwpBcUvRtb9Z3CmzQ3B7MxWCz2frK5BdBXpQVlT-lKvz1K7eJpiQXOB7MeZlagSAxh5XBVtuQ1VP3J9GILr2aKw15J_U1k9r8rwW3kVskcU7WlYZ_pQOW-bzMnRjzwez-SIyvhNmcYys4jPmPduhikmyqT2cewvNFUXYAFjyp2A_ofs_ANjSoCCXjS9Nm4vgnKKVr2AHdrgUYCR6V9R-nQ","e":"AQAB","kid":"k1","alg":"RS256"}]})";
constexpr char kToken[] =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0."
    "eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0Iiwic3ViIjoidXNlci0xIiwiZXhwIjoxODAwMDAwMDAwLCJpYXQiOjE2MD"
    "AwMDAwMDB9.pNYcHuGnWYIU67PKhy_9wlNv6Vr7OmH4uHrCNf-65ypclEPyVTbmlCxelt7VmP-"
    "5u13cbQjiQLVpYC615fcf1KOHqqnocF4yd8jfHE2wsN18w24A_crponvzErUPx6R0T6KokbB-"
    "og1DMIyhUXY5F8eaqWdRoJR0EheaZOsONyf5oxIeqB5RxSyW1Uf8BWeFWAeezjoYz3gYJvuH5Hs0ebTOeWCIftY30jn0mI"
    "dPuujKt-gUpVRrh_K8uOxvT-EVkiE1mqPxfqJ5RWPFkrS1nOlKkjMZVPLMm861dWmX6Y69v_"
    "oi2YkhBTHvB1cZME1xxnBVhMGAt1mYdWOPU3iusg";
constexpr int64_t kBeforeExpiry = 1700000000;
constexpr int64_t kAfterExpiry = 1900000000;
constexpr char kWaypointId[] = "spiffe://cluster.local/ns/backend/sa/waypoint";
constexpr char kWebId[] = "spiffe://cluster.local/ns/default/sa/web";

std::string Pod(const std::string& ns, const std::string& name, const std::string& sa,
                const std::string& ip, const std::string& labels, bool netns = true,
                const std::string& annotations = "") {
  return absl::StrCat("apiVersion: v1\nkind: Pod\nmetadata:\n  name: ", name, "\n  namespace: ", ns,
                      "\n  labels: {app: ", name, labels.empty() ? "" : ", ", labels,
                      "}\n  annotations: {",
                      netns ? absl::StrCat("ambit.dev/netns: /run/netns/", name) : "",
                      annotations.empty() ? "" : (netns ? ", " : ""), annotations,
                      "}\nspec: {serviceAccountName: ", sa,
                      ", nodeName: node-b}\nstatus: {podIP: ", ip, "}\n---\n");
}

std::string Config() {
  return absl::StrCat(
      Pod("default", "a", "web", "198.18.0.10", ""),
      Pod("default", "x", "outside", "198.18.0.70", "", /*netns=*/false),
      Pod("backend", "b", "api", "198.18.0.20", "tier: api"),
      Pod("backend", "c", "api", "198.18.0.21", "tier: api"),
      Pod("backend", "wp", "waypoint", "198.18.0.30",
          "gateway.networking.k8s.io/gateway-name: waypoint"),
      Pod("backend", "d", "direct", "198.18.0.40", "istio.io/use-waypoint: waypoint"),
      Pod("backend", "m", "lost", "198.18.0.50", "istio.io/use-waypoint: missing"),
      Pod("backend", "o", "open", "198.18.0.60", "tier: open",
          /*netns=*/true, "ambit.dev/allow-waypoint-bypass: \"true\""),
      R"(apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: backend, labels: {istio.io/waypoint-for: all}}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: backend, labels: {istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: 198.19.0.1
  selector: {tier: api}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: admin, port: 90, targetPort: 9999}]
---
apiVersion: v1
kind: Service
metadata: {name: open, namespace: backend, labels: {istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: 198.19.0.3
  selector: {tier: open}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a-strict-7000, namespace: default}
spec:
  selector: {matchLabels: {app: a}}
  portLevelMtls: {"7000": {mode: STRICT}}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: default}
spec:
  clusterIP: 198.19.0.2
  selector: {app: a}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-api, namespace: backend}
spec:
  targetRefs: [{kind: Service, group: "", name: api}]
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/get", "/public*"]}}]
  - from: [{source: {requestPrincipals: ["https://issuer.test/*"]}}]
    to: [{operation: {paths: ["/private*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: backend}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-9999, namespace: backend}
spec:
  selector: {matchLabels: {tier: api}}
  action: DENY
  rules: [{to: [{operation: {ports: ["9999"]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: backend}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  jwtRules: [{issuer: "https://issuer.test", jwks: ')",
      kJwks, R"('}]
)");
}

class LiveCheckTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::filesystem::path dir =
        std::filesystem::temp_directory_path() / absl::StrCat("ambit-live-check-", getpid());
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "config.yaml") << Config();
    config::DirectoryLoader loader(dir.string());
    config::LoadResult loaded = loader.Load();
    std::filesystem::remove_all(dir);
    for (const auto& e : loaded.errors) {
      if (!e.warning) ADD_FAILURE() << e.ToString();  // the unbound label only warns
    }
    auto engine = config::BuildAuthzEngine(loaded);
    ASSERT_TRUE(engine.ok()) << engine.status();
    checker_ = new std::shared_ptr<const admin::CheckEvaluator>(
        NewCheckEvaluator({.state = std::make_shared<const state::ClusterState>(loaded.state),
                           .peer_authns = loaded.security.PeerAuthenticationList(),
                           .engine = std::move(*engine),
                           .request_authns = loaded.security.RequestAuthenticationList()}));
  }
  static void TearDownTestSuite() { delete checker_; }

  static pb::CheckRequest Req(const std::string& from, const std::string& to, uint32_t port) {
    pb::CheckRequest r;
    r.set_from(from);
    r.set_to(to);
    r.set_port(port);
    return r;
  }
  static pb::CheckRequest Http(const std::string& to, uint32_t port, const std::string& path,
                               const std::string& token = "", int64_t now = kBeforeExpiry) {
    pb::CheckRequest r = Req("default/a", to, port);
    r.set_http(true);
    r.set_method("GET");
    r.set_path(path);
    r.set_now_unix_seconds(now);
    if (!token.empty()) {
      auto* h = r.add_headers();
      h->set_name("authorization");
      h->set_value(absl::StrCat("Bearer ", token));
    }
    return r;
  }
  static pb::CheckResponse Check(const pb::CheckRequest& r) {
    auto resp = (*checker_)->Check(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? *resp : pb::CheckResponse();
  }

  static std::shared_ptr<const admin::CheckEvaluator>* checker_;
};

std::shared_ptr<const admin::CheckEvaluator>* LiveCheckTest::checker_ = nullptr;

TEST_F(LiveCheckTest, ServiceThroughWaypointAllowsAtBothHops) {
  const pb::CheckResponse r = Check(Http("backend/api", 80, "/get?x=1"));
  EXPECT_EQ(r.decision(), "allow");
  EXPECT_EQ(r.http_status(), 200);
  EXPECT_EQ(r.waypoint(), "backend/waypoint");
  EXPECT_EQ(r.service(), "backend/api");
  EXPECT_EQ(r.destination(), "backend/b");  // the first endpoint by name
  EXPECT_THAT(r.endpoint_note(), HasSubstr("the first of 2 endpoints"));
  EXPECT_EQ(r.policy(), "backend/allow-api");
  ASSERT_THAT(r.hops(), SizeIs(2));
  EXPECT_EQ(r.hops(0).kind(), "waypoint");
  EXPECT_EQ(r.hops(0).source_principal(), kWebId);
  EXPECT_EQ(r.hops(1).kind(), "tunnel");
  EXPECT_EQ(r.hops(1).decision(), "allow");
  // The destination's tunnel sees the waypoint, not the client.
  EXPECT_EQ(r.hops(1).source_principal(), kWaypointId);
  EXPECT_THAT(r.trace(), HasSubstr("hop 1: waypoint backend/waypoint"));
  EXPECT_THAT(r.trace(), HasSubstr("is its identity"));
  EXPECT_EQ(r.authn().result(), "allow");
}

TEST_F(LiveCheckTest, ClusterIpIsTheSameService) {
  const pb::CheckResponse r = Check(Http("198.19.0.1", 80, "/get"));
  EXPECT_EQ(r.service(), "backend/api");
  EXPECT_EQ(r.waypoint(), "backend/waypoint");
  EXPECT_EQ(r.decision(), "allow");
  EXPECT_EQ(r.http_status(), 200);
}

TEST_F(LiveCheckTest, PathDenyIs403WithThePolicy) {
  const pb::CheckResponse r = Check(Http("backend/api", 80, "/admin/users"));
  EXPECT_EQ(r.decision(), "deny");
  EXPECT_EQ(r.http_status(), 403);
  EXPECT_EQ(r.policy(), "backend/deny-admin");
  EXPECT_THAT(r.reason(), HasSubstr("RBAC: access denied"));
  EXPECT_THAT(r.trace(), HasSubstr("DENY backend/deny-admin: matched (rule 0)"));
  ASSERT_THAT(r.hops(), SizeIs(2));
  EXPECT_EQ(r.hops(1).decision(), "not_reached");
}

TEST_F(LiveCheckTest, ValidTokenOpensTheRequestPrincipalRule) {
  const pb::CheckResponse r = Check(Http("backend/api", 80, "/private", kToken));
  EXPECT_EQ(r.decision(), "allow") << r.trace();
  EXPECT_EQ(r.http_status(), 200);
  EXPECT_EQ(r.authn().principal(), "https://issuer.test/user-1");
  EXPECT_THAT(r.authn().rule(), HasSubstr("backend/jwt jwtRules[0]"));
  EXPECT_THAT(r.authn().policies(), ::testing::ElementsAre("backend/jwt"));
}

TEST_F(LiveCheckTest, ExpiredTokenIs401) {
  const pb::CheckResponse r = Check(Http("backend/api", 80, "/private", kToken, kAfterExpiry));
  EXPECT_EQ(r.decision(), "deny");
  EXPECT_EQ(r.http_status(), 401);
  EXPECT_EQ(r.authn().result(), "reject");
  EXPECT_EQ(r.authn().status(), 401);
  EXPECT_EQ(r.policy(), "backend/jwt");
  EXPECT_THAT(r.reason(), HasSubstr("Jwt is expired"));
  EXPECT_THAT(r.trace(), HasSubstr("Jwt is expired"));
  EXPECT_THAT(r.trace(), HasSubstr("AuthorizationPolicy: not evaluated"));
}

TEST_F(LiveCheckTest, MissingTokenFailsTheRequestPrincipalRule) {
  const pb::CheckResponse r = Check(Http("backend/api", 80, "/private"));
  EXPECT_EQ(r.decision(), "deny");
  EXPECT_EQ(r.http_status(), 403);
  EXPECT_EQ(r.authn().result(), "allow");  // no token: unauthenticated, not rejected
  EXPECT_THAT(r.authn().principal(), IsEmpty());
  EXPECT_THAT(r.trace(), HasSubstr("requestPrincipals"));
}

TEST_F(LiveCheckTest, PodAddressedWaypointAppliesGatewayPoliciesOnly) {
  // d's own binding: the Service-attached ALLOW does not apply, the Gateway's DENY does.
  pb::CheckResponse r = Check(Http("backend/d", 8080, "/anything"));
  EXPECT_EQ(r.waypoint(), "backend/waypoint");
  EXPECT_EQ(r.decision(), "allow") << r.trace();
  EXPECT_THAT(r.service(), IsEmpty());
  r = Check(Http("198.18.0.40", 8080, "/admin"));
  EXPECT_EQ(r.http_status(), 403);
  EXPECT_EQ(r.policy(), "backend/deny-admin");
}

TEST_F(LiveCheckTest, DirectToAServicesEndpointIsABypass) {
  // b is not bound itself, but the service selecting it is: its tunnel accepts the waypoint only.
  const pb::CheckResponse r = Check(Req("default/a", "backend/b", 8080));
  EXPECT_EQ(r.decision(), "deny");
  EXPECT_THAT(r.waypoint(), IsEmpty());
  EXPECT_EQ(r.policy(), "waypoint backend/waypoint");
  EXPECT_THAT(r.reason(), HasSubstr(absl::StrCat("only its identity may connect, not ", kWebId)));
  ASSERT_THAT(r.hops(), SizeIs(1));
  EXPECT_EQ(r.hops(0).decision(), "deny");
  EXPECT_THAT(r.trace(), HasSubstr("bypass refused"));
}

TEST_F(LiveCheckTest, WaypointsOwnPodGoesStraightToTheDestination) {
  const pb::CheckResponse r = Check(Req("backend/wp", "backend/api", 80));
  EXPECT_THAT(r.waypoint(), IsEmpty());
  EXPECT_EQ(r.decision(), "allow") << r.trace();
  EXPECT_EQ(r.source_principal(), kWaypointId);
}

TEST_F(LiveCheckTest, OptOutAcceptsTheBypass) {
  const pb::CheckResponse r = Check(Req("default/a", "backend/o", 8080));
  // Addressed directly, o skips its service's waypoint; it opts out of the bypass check, so any
  // identity may connect.
  EXPECT_EQ(r.decision(), "allow") << r.trace();
  EXPECT_THAT(r.trace(), HasSubstr("opts out of the bypass check"));
}

TEST_F(LiveCheckTest, WaypointWithoutPodIsRefused) {
  const pb::CheckResponse r = Check(Req("default/a", "backend/m", 8080));
  EXPECT_EQ(r.decision(), "deny");
  EXPECT_EQ(r.waypoint(), "backend/missing");
  EXPECT_EQ(r.policy(), "waypoint backend/missing");
  EXPECT_THAT(r.reason(), HasSubstr("which has no pod (no Gateway backend/missing"));
}

TEST_F(LiveCheckTest, WithoutWaypointHttpIsNotEvaluated) {
  const pb::CheckResponse r = Check(Http("default/plain", 80, "/admin"));
  EXPECT_EQ(r.decision(), "allow");
  EXPECT_EQ(r.http_status(), 0);
  EXPECT_THAT(r.waypoint(), IsEmpty());
  EXPECT_EQ(r.destination(), "default/a");
  EXPECT_THAT(r.trace(), HasSubstr("L7 rules are not evaluated: no waypoint serves default/plain"));
  EXPECT_THAT(r.trace(), ::testing::StartsWith("decision: allow\n"));
}

TEST_F(LiveCheckTest, TunnelDenialBehindAnAllowingWaypointIs503) {
  const pb::CheckResponse r = Check(Http("backend/api", 90, "/get"));
  EXPECT_EQ(r.decision(), "deny");
  EXPECT_EQ(r.http_status(), 503);
  EXPECT_EQ(r.policy(), "backend/no-9999");
  ASSERT_THAT(r.hops(), SizeIs(2));
  EXPECT_EQ(r.hops(0).decision(), "allow");
  EXPECT_EQ(r.hops(1).decision(), "deny");
}

TEST_F(LiveCheckTest, PlaintextClientSkipsTheWaypointAndIsRefused) {
  const pb::CheckResponse r = Check(Req("default/x", "backend/api", 80));
  EXPECT_THAT(r.waypoint(), IsEmpty());
  EXPECT_EQ(r.decision(), "deny");
  EXPECT_THAT(r.reason(), HasSubstr("not a plaintext client"));
}

// A plaintext client of a STRICT port is refused before any policy: the decision as enforced
// leads, the policies' own answer follows in the trace.
TEST_F(LiveCheckTest, PlaintextClientOfAStrictPortIsDenied) {
  const pb::CheckResponse r = Check(Req("default/x", "default/a", 7000));
  EXPECT_EQ(r.decision(), "deny");
  EXPECT_EQ(r.mtls_mode(), "STRICT");
  EXPECT_THAT(r.reason(), HasSubstr("STRICT mTLS refuses this plaintext client"));
  EXPECT_THAT(r.trace(), ::testing::StartsWith("decision: deny (STRICT mTLS refuses"));
  EXPECT_THAT(r.trace(), HasSubstr("policies: allow (if the client used mTLS)"));
  // Another port of the same pod is PERMISSIVE: plaintext passes.
  EXPECT_EQ(Check(Req("default/x", "default/a", 8080)).decision(), "allow");
  // With mTLS the STRICT port is the policies' answer.
  EXPECT_EQ(Check(Req("backend/b", "default/a", 7000)).decision(), "allow");
}

TEST_F(LiveCheckTest, BadDestinationsAreClearErrors) {
  auto r = (*checker_)->Check(Req("default/a", "backend/api", 81));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("has no TCP port 81 (its TCP ports: 80, 90)"));
  r = (*checker_)->Check(Req("default/a", "backend/nothing", 80));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("no pod or service backend/nothing"));
  r = (*checker_)->Check(Req("default/a", "198.51.100.1", 80));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("passed through as plain TCP"));
}

}  // namespace
}  // namespace ambit::node
