// `ambitctl check` and a CUSTOM policy at the waypoint: the provider's answer, as the running
// waypoint reports it, folded into the decision (failOpen, statusOnError, then DENY/ALLOW policy),
// the question the evaluator asks the waypoint, and the text and fields it reports.

#include "agent/node/ext_authz_check.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/config/directory_loader.h"
#include "agent/config/load_result.h"
#include "agent/node/live_check.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::node {
namespace {

namespace pb = ::ambit::admin::v1;
using Answer = supervisor::ExtAuthzProbeAnswer;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pair;
using ::testing::SizeIs;

constexpr char kWebId[] = "spiffe://cluster.local/ns/default/sa/web";
constexpr char kProvider[] = "sample-ext-authz-http";

std::string Pod(const std::string& ns, const std::string& name, const std::string& sa,
                const std::string& ip, const std::string& labels) {
  return absl::StrCat("apiVersion: v1\nkind: Pod\nmetadata:\n  name: ", name, "\n  namespace: ", ns,
                      "\n  labels: {app: ", name, labels.empty() ? "" : ", ", labels,
                      "}\n  annotations: {ambit.dev/netns: /run/netns/", name,
                      "}\nspec: {serviceAccountName: ", sa,
                      ", nodeName: node-b}\nstatus: {podIP: ", ip, "}\n---\n");
}

std::string Config() {
  return absl::StrCat(Pod("default", "a", "web", "198.18.0.10", ""),
                      Pod("backend", "b", "api", "198.18.0.20", "tier: api"),
                      Pod("backend", "wp", "waypoint", "198.18.0.30",
                          "gateway.networking.k8s.io/gateway-name: waypoint"),
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
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: backend}
spec:
  targetRefs: [{kind: Service, group: "", name: api}]
  action: CUSTOM
  provider: {name: sample-ext-authz-http}
  rules: [{to: [{operation: {paths: ["/ext*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-blocked, namespace: backend}
spec:
  targetRefs: [{kind: Service, group: "", name: api}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/ext/blocked"]}}]}]
)");
}

constexpr char kMesh[] = R"(extensionProviders:
- name: sample-ext-authz-http
  envoyExtAuthzHttp:
    service: ext-authz.backend.svc.cluster.local
    port: 8000
    includeRequestHeadersInCheck: ["x-ext-authz"]
)";

// What the fake waypoint answers, and what it was asked.
struct FakeWaypoint {
  absl::StatusOr<Answer> answer = absl::UnavailableError("unset");
  std::vector<supervisor::ExtAuthzProbeQuery> queries;
};

class ExtAuthzLiveCheckTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::filesystem::path dir =
        std::filesystem::temp_directory_path() / absl::StrCat("ambit-ext-authz-check-", getpid());
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "config.yaml") << Config();
    std::ofstream(dir / "mesh.yaml") << kMesh;
    config::DirectoryLoader loader(dir.string());
    loaded_ = new config::LoadResult(loader.Load());
    std::filesystem::remove_all(dir);
    for (const auto& e : loaded_->errors) {
      if (!e.warning) ADD_FAILURE() << e.ToString();
    }
  }
  static void TearDownTestSuite() { delete loaded_; }

  void SetUp() override {
    auto engine = config::BuildAuthzEngine(*loaded_);
    ASSERT_TRUE(engine.ok()) << engine.status();
    FakeWaypoint* fake = &fake_;
    checker_ =
        NewCheckEvaluator({.state = std::make_shared<const state::ClusterState>(loaded_->state),
                           .peer_authns = loaded_->security.PeerAuthenticationList(),
                           .engine = std::move(*engine),
                           .request_authns = loaded_->security.RequestAuthenticationList(),
                           .ext_authz_prober = [fake](const supervisor::ExtAuthzProbeQuery& q) {
                             fake->queries.push_back(q);
                             return fake->answer;
                           }});
  }

  pb::CheckResponse Check(const std::string& path, bool no_ext_authz = false) {
    pb::CheckRequest r;
    r.set_from("default/a");
    r.set_to("backend/api");
    r.set_port(80);
    r.set_http(true);
    r.set_method("POST");
    r.set_path(path);
    r.set_no_ext_authz(no_ext_authz);
    auto* h = r.add_headers();
    h->set_name("x-ext-authz");
    h->set_value("allow");
    h = r.add_headers();
    h->set_name("host");
    h->set_value("api.example");
    auto resp = checker_->Check(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? *resp : pb::CheckResponse();
  }

  static Answer Allow() {
    Answer a;
    a.outcome = Answer::Outcome::kAllow;
    a.status = 200;
    a.latency = absl::Microseconds(1250);
    a.waypoint_pod = "backend/wp";
    a.provider_kind = "http";
    a.upstream_edits = {{Answer::HeaderEdit::Op::kSet, "x-ext-authz-upstream", "added"},
                        {Answer::HeaderEdit::Op::kRemove, "x-remove-me", ""}};
    a.downstream_edits = {{Answer::HeaderEdit::Op::kAppend, "x-ext-authz-downstream", "added"}};
    a.detail = "HTTP 200";
    return a;
  }
  static Answer Deny(int status) {
    Answer a;
    a.outcome = Answer::Outcome::kDeny;
    a.status = status;
    a.latency = absl::Microseconds(2100);
    a.waypoint_pod = "backend/wp";
    a.provider_kind = "http";
    a.deny_headers = {{"x-ext-authz-check-result", "denied"}};
    a.deny_body = "denied by ext_authz";
    a.detail = absl::StrCat("HTTP ", status);
    return a;
  }
  static Answer Error(bool fail_open, uint32_t status_on_error) {
    Answer a;
    a.outcome = Answer::Outcome::kError;
    a.latency = absl::Milliseconds(200);
    a.waypoint_pod = "backend/wp";
    a.provider_kind = "http";
    a.detail = "connection refused";
    a.fail_open = fail_open;
    a.status_on_error = status_on_error;
    return a;
  }

  static config::LoadResult* loaded_;
  FakeWaypoint fake_;
  std::shared_ptr<const admin::CheckEvaluator> checker_;
};

config::LoadResult* ExtAuthzLiveCheckTest::loaded_ = nullptr;

TEST_F(ExtAuthzLiveCheckTest, AsksTheWaypointWithTheRequestBeingChecked) {
  fake_.answer = Allow();
  Check("/ext/x?y=1");
  ASSERT_THAT(fake_.queries, SizeIs(1));
  const supervisor::ExtAuthzProbeQuery& q = fake_.queries[0];
  EXPECT_EQ(q.waypoint, "backend/waypoint");
  EXPECT_EQ(q.waypoint_pod, "");
  EXPECT_EQ(q.provider, kProvider);
  EXPECT_EQ(q.method, "POST");
  EXPECT_EQ(q.path, "/ext/x?y=1");
  EXPECT_EQ(q.host, "api.example");
  EXPECT_THAT(q.headers, ::testing::ElementsAre(Pair("x-ext-authz", "allow")));
  EXPECT_EQ(q.source_address, "198.18.0.10");
  EXPECT_EQ(q.source_principal, kWebId);
  EXPECT_EQ(q.destination_address, "198.19.0.1:80");
}

TEST_F(ExtAuthzLiveCheckTest, ProviderAllowsThenPoliciesAllow) {
  fake_.answer = Allow();
  const pb::CheckResponse r = Check("/ext/x");
  EXPECT_EQ(r.decision(), "allow");
  EXPECT_EQ(r.http_status(), 200);
  EXPECT_EQ(r.provider(), kProvider);
  ASSERT_THAT(r.hops(), SizeIs(2));
  EXPECT_EQ(r.hops(0).decision(), "allow");
  EXPECT_EQ(r.hops(1).decision(), "allow");
  const pb::CheckExtAuthz& e = r.ext_authz();
  EXPECT_TRUE(e.asked());
  EXPECT_EQ(e.answer(), "allow");
  EXPECT_EQ(e.result(), "forward");
  EXPECT_EQ(e.policy(), "backend/ext");
  EXPECT_EQ(e.latency_us(), 1250);
  EXPECT_EQ(e.waypoint_pod(), "backend/wp");
  ASSERT_THAT(e.upstream_edits(), SizeIs(2));
  EXPECT_EQ(e.upstream_edits(1).op(), "remove");
  EXPECT_EQ(e.downstream_edits(0).op(), "append");
  EXPECT_THAT(r.trace(), HasSubstr("ext_authz: provider \"sample-ext-authz-http\" answered allow "
                                   "in 1.2 ms (upstream: x-ext-authz-upstream: added, remove "
                                   "x-remove-me; response: append x-ext-authz-downstream: added)"));
  EXPECT_THAT(r.trace(), HasSubstr("then DENY/ALLOW policy: allow"));
}

TEST_F(ExtAuthzLiveCheckTest, ProviderAllowsThenDenyPolicyDenies) {
  fake_.answer = Allow();
  const pb::CheckResponse r = Check("/ext/blocked");
  EXPECT_EQ(r.decision(), "deny");
  EXPECT_EQ(r.http_status(), 403);
  EXPECT_EQ(r.policy(), "backend/deny-blocked");
  EXPECT_EQ(r.ext_authz().answer(), "allow");
  EXPECT_EQ(r.ext_authz().result(), "deny");
  EXPECT_EQ(r.hops(1).decision(), "not_reached");
  EXPECT_THAT(r.trace(), HasSubstr("then DENY/ALLOW policy: deny"));
  EXPECT_THAT(r.trace(), HasSubstr("HTTP 403 \"RBAC: access denied\""));
}

TEST_F(ExtAuthzLiveCheckTest, ProviderDeniesWithItsStatusHeadersAndBody) {
  for (int status : {403, 418}) {
    fake_.answer = Deny(status);
    const pb::CheckResponse r = Check("/ext/x");
    EXPECT_EQ(r.decision(), "deny");
    EXPECT_EQ(r.http_status(), status);
    EXPECT_EQ(r.policy(), "backend/ext");
    EXPECT_EQ(r.ext_authz().answer(), "deny");
    EXPECT_EQ(r.ext_authz().status(), status);
    EXPECT_EQ(r.ext_authz().result(), "deny");
    EXPECT_EQ(r.ext_authz().body(), "denied by ext_authz");
    ASSERT_THAT(r.ext_authz().headers(), SizeIs(1));
    EXPECT_EQ(r.ext_authz().headers(0).name(), "x-ext-authz-check-result");
    EXPECT_THAT(r.trace(), HasSubstr(absl::StrCat(
                               "ext_authz: provider \"sample-ext-authz-http\" answered deny ",
                               status, " in 2.1 ms (headers: x-ext-authz-check-result: denied)")));
    EXPECT_THAT(r.reason(), HasSubstr("denied by ext_authz provider"));
    EXPECT_EQ(r.hops(1).decision(), "not_reached");
  }
}

TEST_F(ExtAuthzLiveCheckTest, ProviderErrorDeniesWithStatusOnError) {
  fake_.answer = Error(/*fail_open=*/false, 503);
  const pb::CheckResponse r = Check("/ext/x");
  EXPECT_EQ(r.decision(), "deny");
  EXPECT_EQ(r.http_status(), 503);
  EXPECT_EQ(r.ext_authz().answer(), "error");
  EXPECT_EQ(r.ext_authz().result(), "deny");
  EXPECT_EQ(r.ext_authz().status_on_error(), 503);
  EXPECT_THAT(r.trace(), HasSubstr("answered error in 200.0 ms: connection refused"));
  EXPECT_THAT(r.trace(), HasSubstr("statusOnError: HTTP 503"));
}

TEST_F(ExtAuthzLiveCheckTest, ProviderErrorWithFailOpenGoesOnToPolicies) {
  fake_.answer = Error(/*fail_open=*/true, 403);
  pb::CheckResponse r = Check("/ext/x");
  EXPECT_EQ(r.decision(), "allow");
  EXPECT_EQ(r.http_status(), 200);
  EXPECT_EQ(r.ext_authz().result(), "fail_open");
  EXPECT_THAT(r.trace(), HasSubstr("failOpen"));
  // failOpen lets the request on; a DENY policy still stops it.
  r = Check("/ext/blocked");
  EXPECT_EQ(r.decision(), "deny");
  EXPECT_EQ(r.http_status(), 403);
}

TEST_F(ExtAuthzLiveCheckTest, UnresolvedProviderDeniesWhateverFailOpenSays) {
  Answer a = Error(/*fail_open=*/true, 503);
  a.unresolved = "service ext-authz.backend.svc.cluster.local is no Service of the configuration";
  fake_.answer = a;
  const pb::CheckResponse r = Check("/ext/x");
  EXPECT_EQ(r.decision(), "deny");
  EXPECT_EQ(r.http_status(), 403);
  EXPECT_EQ(r.ext_authz().result(), "deny");
  EXPECT_THAT(r.trace(), HasSubstr("is no Service of the configuration"));
}

TEST_F(ExtAuthzLiveCheckTest, NoExtAuthzLeavesTheDecisionUndetermined) {
  fake_.answer = Allow();
  const pb::CheckResponse r = Check("/ext/x", /*no_ext_authz=*/true);
  EXPECT_THAT(fake_.queries, SizeIs(0));  // the authorizer is never called
  EXPECT_EQ(r.decision(), "undetermined");
  EXPECT_EQ(r.http_status(), 0);
  EXPECT_FALSE(r.ext_authz().asked());
  EXPECT_EQ(r.ext_authz().not_asked(), "--no-ext-authz");
  EXPECT_EQ(r.ext_authz().result(), "undetermined");
  EXPECT_EQ(r.hops(0).decision(), "undetermined");
  EXPECT_EQ(r.hops(1).decision(), "not_reached");
  EXPECT_THAT(r.trace(), HasSubstr("decision: undetermined"));
  EXPECT_THAT(r.trace(), HasSubstr("if it allows, DENY/ALLOW policy gives allow"));
}

TEST_F(ExtAuthzLiveCheckTest, WaypointNotReachableLeavesTheDecisionUndetermined) {
  fake_.answer =
      absl::UnavailableError("no waypoint data plane (ambit-waypoint) runs on this node");
  const pb::CheckResponse r = Check("/ext/x");
  EXPECT_THAT(fake_.queries, SizeIs(1));
  EXPECT_EQ(r.decision(), "undetermined");
  EXPECT_NE(r.decision(), "allow");
  EXPECT_THAT(r.ext_authz().not_asked(), HasSubstr("no waypoint data plane"));
  EXPECT_THAT(r.reason(), HasSubstr("which was not asked"));
}

TEST_F(ExtAuthzLiveCheckTest, RequestsTheCustomPolicyDoesNotMatchAskNobody) {
  fake_.answer = Allow();
  const pb::CheckResponse r = Check("/other");
  EXPECT_THAT(fake_.queries, SizeIs(0));
  EXPECT_EQ(r.decision(), "allow");
  EXPECT_FALSE(r.has_ext_authz());
}

TEST(FormatLatencyTest, MillisecondsWithOneDecimal) {
  EXPECT_EQ(FormatLatency(absl::Microseconds(2100)), "2.1 ms");
  EXPECT_EQ(FormatLatency(absl::Microseconds(40)), "0.0 ms");
  EXPECT_EQ(FormatLatency(absl::Seconds(5)), "5000.0 ms");
}

TEST(FoldExtAuthzAnswerTest, ADecisionWithoutAnAnswerIsNeverAllow) {
  authz::Decision pending;
  pending.allowed = false;
  pending.reason = authz::DecisionReason::kExtAuthzRequired;
  pending.ext_authz = authz::ExtAuthzRequirement{kProvider, "ns/p", 0, {}};
  pb::CheckExtAuthz out;
  const ExtAuthzCheck c =
      FoldExtAuthzAnswer(pending, absl::DeadlineExceededError("no answer"), "", &out);
  EXPECT_FALSE(c.determined);
  EXPECT_FALSE(c.decision.allowed);
  EXPECT_EQ(out.result(), "undetermined");
  EXPECT_THAT(out.not_asked(), HasSubstr("no answer"));
  EXPECT_THAT(c.text, Not(HasSubstr("answered")));
}

}  // namespace
}  // namespace ambit::node
