#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/waypoint/ext_authz_client.h"
#include "agent/waypoint/ext_authz_http_internal.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_byte_stream.h"
#include "tests/fakes/fake_event_loop.h"

namespace ambit::waypoint {
namespace {

using internal::BuildHttpCheckRequest;
using internal::ReadHttpAnswer;
using Outcome = AuthzCheckResponse::Outcome;

authz::ExtAuthzProvider Provider() {
  authz::ExtAuthzProvider p;
  p.name = "sample";
  p.kind = authz::ExtAuthzProvider::Kind::kHttp;
  p.timeout = absl::Milliseconds(200);
  return p;
}

AuthzCheckRequest Request() {
  AuthzCheckRequest r;
  r.method = "POST";
  r.path = "/api/items?id=7&x=y";
  r.host = "svc.test:8080";
  r.headers = {{"host", "svc.test:8080"},   {"authorization", "Bearer abc"},
               {"x-ext-authz", "allow"},    {"x-custom-a", "1"},
               {"cookie", "c=1"},           {"content-length", "5"},
               {"connection", "keep-alive"}};
  return r;
}

TEST(HttpCheckRequestTest, KeepsMethodPathAndHostAndSendsOnlyAllowedHeaders) {
  authz::ExtAuthzProvider p = Provider();
  p.path_prefix = "/check";
  const std::string wire = BuildHttpCheckRequest(p, Request());
  EXPECT_TRUE(absl::StartsWith(wire, "POST /check/api/items?id=7&x=y HTTP/1.1\r\n")) << wire;
  EXPECT_NE(wire.find("host: svc.test:8080\r\n"), std::string::npos);
  // Authorization always goes, as in Envoy; the rest only when listed.
  EXPECT_NE(wire.find("authorization: Bearer abc\r\n"), std::string::npos);
  EXPECT_EQ(wire.find("x-ext-authz"), std::string::npos) << wire;
  EXPECT_EQ(wire.find("cookie"), std::string::npos);
  EXPECT_EQ(wire.find("connection"), std::string::npos);
  // No body: content-length 0 whatever the client's request said.
  EXPECT_NE(wire.find("content-length: 0\r\n"), std::string::npos);
  EXPECT_EQ(wire.find("content-length: 5"), std::string::npos);
  EXPECT_TRUE(absl::EndsWith(wire, "\r\n\r\n"));
}

TEST(HttpCheckRequestTest, IncludesListedHeadersByExactPrefixAndSuffixWithoutCase) {
  authz::ExtAuthzProvider p = Provider();
  p.include_request_headers = {"X-Ext-Authz", "x-custom-*", "*kie"};
  const std::string wire = BuildHttpCheckRequest(p, Request());
  EXPECT_NE(wire.find("x-ext-authz: allow\r\n"), std::string::npos) << wire;
  EXPECT_NE(wire.find("x-custom-a: 1\r\n"), std::string::npos);
  EXPECT_NE(wire.find("cookie: c=1\r\n"), std::string::npos);
}

TEST(HttpCheckRequestTest, AdditionalHeadersOverrideTheClients) {
  authz::ExtAuthzProvider p = Provider();
  p.include_request_headers = {"x-ext-authz"};
  p.include_additional_headers = {{"x-ext-authz", "deny-418"}, {"x-added", "v"}};
  const std::string wire = BuildHttpCheckRequest(p, Request());
  EXPECT_NE(wire.find("x-ext-authz: deny-418\r\n"), std::string::npos) << wire;
  EXPECT_EQ(wire.find("x-ext-authz: allow"), std::string::npos);
  EXPECT_NE(wire.find("x-added: v\r\n"), std::string::npos);
}

TEST(HttpCheckRequestTest, CarriesTheCollectedBodyWithItsLength) {
  authz::ExtAuthzProvider p = Provider();
  AuthzCheckRequest r = Request();
  r.body = "hello";
  const std::string wire = BuildHttpCheckRequest(p, r);
  EXPECT_NE(wire.find("content-length: 5\r\n"), std::string::npos);
  EXPECT_TRUE(absl::EndsWith(wire, "\r\n\r\nhello")) << wire;
}

TEST(HttpAnswerTest, OkAllowsAndPicksUpstreamAndDownstreamHeaders) {
  authz::ExtAuthzProvider p = Provider();
  AuthzCheckResponse none = ReadHttpAnswer(
      p, "HTTP/1.1 200 OK\r\nx-ext-authz-upstream: added\r\ncontent-length: 0\r\n\r\n", false);
  EXPECT_EQ(none.outcome, Outcome::kAllow);
  // Envoy's default: no answer header reaches the upstream unless listed.
  EXPECT_TRUE(none.upstream_edits.empty());
  EXPECT_TRUE(none.downstream_edits.empty());

  p.headers_to_upstream_on_allow = {"x-ext-authz-upstream", "x-user"};
  p.headers_to_downstream_on_allow = {"x-ext-authz-check-result"};
  AuthzCheckResponse r = ReadHttpAnswer(p,
                                        "HTTP/1.1 200 OK\r\nx-ext-authz-upstream: added\r\n"
                                        "x-ext-authz-check-result: allowed\r\nx-user: a\r\n"
                                        "x-user: b\r\nx-other: o\r\ncontent-length: 0\r\n\r\n",
                                        false);
  ASSERT_EQ(r.outcome, Outcome::kAllow);
  ASSERT_EQ(r.upstream_edits.size(), 3u);
  EXPECT_EQ(r.upstream_edits[0].op, HeaderEdit::Op::kSet);
  EXPECT_EQ(r.upstream_edits[0].name, "x-ext-authz-upstream");
  EXPECT_EQ(r.upstream_edits[1].op, HeaderEdit::Op::kSet);
  EXPECT_EQ(r.upstream_edits[1].value, "a");
  EXPECT_EQ(r.upstream_edits[2].op, HeaderEdit::Op::kAppend);
  EXPECT_EQ(r.upstream_edits[2].value, "b");
  ASSERT_EQ(r.downstream_edits.size(), 1u);
  EXPECT_EQ(r.downstream_edits[0].name, "x-ext-authz-check-result");
}

TEST(HttpAnswerTest, OtherStatusDeniesWithItsHeadersAndBody) {
  authz::ExtAuthzProvider p = Provider();
  const std::string answer =
      "HTTP/1.1 418 I'm a teapot\r\nserver: py\r\nx-teapot: yes\r\nwww-authenticate: Basic\r\n"
      "content-length: 15\r\n\r\nshort and stout";
  AuthzCheckResponse all = ReadHttpAnswer(p, answer, false);
  ASSERT_EQ(all.outcome, Outcome::kDeny);
  EXPECT_EQ(all.status, 418);
  EXPECT_EQ(all.deny_body, "short and stout");
  // Unset headersToDownstreamOnDeny: every header (framing and Server aside).
  EXPECT_EQ(all.deny_headers, (HeaderList{{"x-teapot", "yes"}, {"www-authenticate", "Basic"}}));

  p.headers_to_downstream_on_deny = {"x-nothing"};
  AuthzCheckResponse some = ReadHttpAnswer(p, answer, false);
  // Set: only the listed ones, plus WWW-Authenticate and Location as Envoy adds them.
  EXPECT_EQ(some.deny_headers, (HeaderList{{"www-authenticate", "Basic"}}));
}

TEST(HttpAnswerTest, ServerErrorIsAnErrorNotADenial) {
  AuthzCheckResponse r = ReadHttpAnswer(
      Provider(), "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown", false);
  EXPECT_EQ(r.outcome, Outcome::kError);
  EXPECT_NE(r.detail.find("503"), std::string::npos);
}

TEST(HttpAnswerTest, MalformedOrOversizedAnswersAreErrors) {
  const authz::ExtAuthzProvider p = Provider();
  EXPECT_EQ(ReadHttpAnswer(p, "NOT HTTP\r\n\r\n", true).outcome, Outcome::kError);
  EXPECT_EQ(ReadHttpAnswer(p, "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", true).outcome,
            Outcome::kError);
  EXPECT_EQ(ReadHttpAnswer(p, "", true).outcome, Outcome::kError);
  EXPECT_EQ(ReadHttpAnswer(p, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n", false).outcome,
            Outcome::kError);
  const std::string big_body(internal::kMaxAnswerBodyBytes + 1, 'x');
  EXPECT_EQ(ReadHttpAnswer(p,
                           absl::StrCat("HTTP/1.1 403 Forbidden\r\ncontent-length: ",
                                        big_body.size(), "\r\n\r\n", big_body),
                           false)
                .outcome,
            Outcome::kError);
  const std::string big_header(internal::kMaxAnswerHeaderBytes, 'h');
  EXPECT_EQ(ReadHttpAnswer(p,
                           absl::StrCat("HTTP/1.1 200 OK\r\nx-big: ", big_header,
                                        "\r\ncontent-length: 0\r\n\r\n"),
                           false)
                .outcome,
            Outcome::kError);
  // A body delimited by the close is complete at EOF.
  AuthzCheckResponse by_close = ReadHttpAnswer(p, "HTTP/1.1 401 Unauthorized\r\n\r\nwho?", true);
  EXPECT_EQ(by_close.outcome, Outcome::kDeny);
  EXPECT_EQ(by_close.deny_body, "who?");
}

TEST(HttpAnswerTest, InterimAnswersAreSkipped) {
  AuthzCheckResponse r = ReadHttpAnswer(
      Provider(), "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
      false);
  EXPECT_EQ(r.outcome, Outcome::kAllow);
}

constexpr char kAllow[] = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

class HttpAuthorizerClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    client_ = NewHttpAuthorizerClient(Provider(), &connector_, &loop_, &clock_);
  }

  // Starts a check whose answer lands in `out`.
  std::unique_ptr<AsyncCheck> Start(std::optional<AuthzCheckResponse>* out) {
    return client_->Check(Request(), [out](AuthzCheckResponse r) { *out = std::move(r); });
  }

  FakeClock clock_;
  testing::FakeEventLoop loop_{&clock_};
  testing::FakeConnector connector_;
  std::unique_ptr<AuthorizerClient> client_;
};

TEST_F(HttpAuthorizerClientTest, AnswersFromTheLoopAndReusesTheConnection) {
  std::optional<AuthzCheckResponse> first, second;
  auto h1 = Start(&first);
  ASSERT_EQ(connector_.streams.size(), 1u);
  auto conn = connector_.streams[0];
  EXPECT_TRUE(absl::StartsWith(conn->written, "POST /api/items?id=7&x=y HTTP/1.1\r\n"));
  clock_.Advance(absl::Milliseconds(7));
  conn->Data(kAllow);
  EXPECT_FALSE(first.has_value()) << "done must not run inside the stream's callback";
  loop_.RunDeferred();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->outcome, Outcome::kAllow);
  EXPECT_EQ(first->latency, absl::Milliseconds(7));

  conn->written.clear();
  auto h2 = Start(&second);
  EXPECT_EQ(connector_.streams.size(), 1u) << "an idle kept connection carries the next check";
  EXPECT_FALSE(conn->written.empty());
  conn->Data("HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno");
  loop_.RunDeferred();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->outcome, Outcome::kDeny);
  EXPECT_EQ(second->deny_body, "no");
}

TEST_F(HttpAuthorizerClientTest, ConcurrentChecksUseOneConnectionEach) {
  std::optional<AuthzCheckResponse> a, b;
  auto ha = Start(&a);
  auto hb = Start(&b);
  ASSERT_EQ(connector_.streams.size(), 2u);
  connector_.streams[1]->Data(kAllow);
  connector_.streams[0]->Data("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n");
  loop_.RunDeferred();
  EXPECT_EQ(a->outcome, Outcome::kDeny);
  EXPECT_EQ(b->outcome, Outcome::kAllow);
}

TEST_F(HttpAuthorizerClientTest, TimeoutIsAnErrorAndDropsTheConnection) {
  std::optional<AuthzCheckResponse> r;
  auto h = Start(&r);
  loop_.Advance(absl::Milliseconds(199));
  EXPECT_FALSE(r.has_value());
  loop_.Advance(absl::Milliseconds(1));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->outcome, Outcome::kError);
  EXPECT_NE(r->detail.find("timeout"), std::string::npos) << r->detail;
  EXPECT_TRUE(connector_.streams[0]->closed);
  // A late answer on the dead connection changes nothing.
  connector_.streams[0]->Data(kAllow);
  loop_.RunDeferred();
  EXPECT_EQ(r->outcome, Outcome::kError);
}

TEST_F(HttpAuthorizerClientTest, AnsweredChecksLeaveNoTimersBehind) {
  // One loop timer serves every check in flight; answered checks hold none (a timer per check
  // stayed armed for the whole timeout, 600 s by default, with the check's memory).
  for (int i = 0; i < 1000; ++i) {
    std::optional<AuthzCheckResponse> r;
    auto h = Start(&r);
    connector_.streams.back()->Data(kAllow);
    loop_.RunDeferred();
    ASSERT_TRUE(r.has_value());
    ASSERT_EQ(r->outcome, Outcome::kAllow);
  }
  EXPECT_LE(loop_.pending_timers(), 1u);
  EXPECT_EQ(connector_.streams.size(), 1u);
}

TEST_F(HttpAuthorizerClientTest, EachCheckTimesOutAtItsOwnDeadline) {
  std::optional<AuthzCheckResponse> a, b, c;
  auto ha = Start(&a);
  loop_.Advance(absl::Milliseconds(50));
  auto hb = Start(&b);
  loop_.Advance(absl::Milliseconds(50));
  auto hc = Start(&c);
  connector_.streams[0]->Data(kAllow);  // the oldest is answered: b's deadline comes next
  loop_.RunDeferred();
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->outcome, Outcome::kAllow);
  loop_.Advance(absl::Milliseconds(99));  // t = 199 ms
  EXPECT_FALSE(b.has_value());
  loop_.Advance(absl::Milliseconds(1));  // t = 200 ms: nothing was due at 200 but a's timer
  EXPECT_FALSE(b.has_value());
  loop_.Advance(absl::Milliseconds(50));  // t = 250 ms: b's deadline
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->outcome, Outcome::kError);
  EXPECT_FALSE(c.has_value());
  loop_.Advance(absl::Milliseconds(50));  // t = 300 ms: c's
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->outcome, Outcome::kError);
  EXPECT_NE(c->detail.find("timeout"), std::string::npos) << c->detail;
  EXPECT_EQ(loop_.pending_timers(), 0u);
}

TEST_F(HttpAuthorizerClientTest, CancelCallsNothingAndDropsTheConnection) {
  bool called = false;
  auto h = client_->Check(Request(), [&called](AuthzCheckResponse) { called = true; });
  h.reset();
  EXPECT_TRUE(connector_.streams[0]->closed);
  loop_.Advance(absl::Seconds(1));
  EXPECT_FALSE(called);
}

TEST_F(HttpAuthorizerClientTest, CancelAfterTheAnswerWasQueuedCallsNothing) {
  bool called = false;
  auto h = client_->Check(Request(), [&called](AuthzCheckResponse) { called = true; });
  connector_.streams[0]->Data(kAllow);
  h.reset();
  loop_.RunDeferred();
  EXPECT_FALSE(called);
}

TEST_F(HttpAuthorizerClientTest, RefusedAndResetAreErrors) {
  std::optional<AuthzCheckResponse> r;
  auto h = Start(&r);
  connector_.streams[0]->Error(
      absl::UnavailableError("connect to 127.0.0.1:9: Connection refused"));
  loop_.RunDeferred();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->outcome, Outcome::kError);
  EXPECT_NE(r->detail.find("refused"), std::string::npos);

  std::optional<AuthzCheckResponse> r2;
  auto h2 = Start(&r2);
  ASSERT_EQ(connector_.streams.size(), 2u);
  connector_.streams[1]->Data("HTTP/1.1 200 OK\r\ncontent-le");
  connector_.streams[1]->End();
  loop_.RunDeferred();
  ASSERT_TRUE(r2.has_value());
  EXPECT_EQ(r2->outcome, Outcome::kError);
}

TEST_F(HttpAuthorizerClientTest, GarbageIsAnErrorAndTheConnectionIsNotReused) {
  std::optional<AuthzCheckResponse> r, next;
  auto h = Start(&r);
  connector_.streams[0]->Data("NOT HTTP\r\n\r\n");
  loop_.RunDeferred();
  EXPECT_EQ(r->outcome, Outcome::kError);
  EXPECT_TRUE(connector_.streams[0]->closed);
  auto h2 = Start(&next);
  EXPECT_EQ(connector_.streams.size(), 2u);
}

TEST_F(HttpAuthorizerClientTest, AKeptConnectionClosedUnderUsIsRetriedOnce) {
  std::optional<AuthzCheckResponse> first, second;
  auto h1 = Start(&first);
  connector_.streams[0]->Data(kAllow);
  loop_.RunDeferred();
  auto h2 = Start(&second);
  ASSERT_EQ(connector_.streams.size(), 1u);
  connector_.streams[0]->End();  // the authorizer's idle timeout raced our request
  ASSERT_EQ(connector_.streams.size(), 2u);
  connector_.streams[1]->Data(kAllow);
  loop_.RunDeferred();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->outcome, Outcome::kAllow);
}

TEST_F(HttpAuthorizerClientTest, ConnectionCloseInTheAnswerIsHonoured) {
  std::optional<AuthzCheckResponse> r, next;
  auto h = Start(&r);
  connector_.streams[0]->Data("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
  loop_.RunDeferred();
  EXPECT_EQ(r->outcome, Outcome::kAllow);
  EXPECT_TRUE(connector_.streams[0]->closed);
  auto h2 = Start(&next);
  EXPECT_EQ(connector_.streams.size(), 2u);
}

TEST_F(HttpAuthorizerClientTest, KeepsAtMostSixteenIdleConnections) {
  std::vector<std::optional<AuthzCheckResponse>> out(20);
  std::vector<std::unique_ptr<AsyncCheck>> handles;
  for (auto& o : out) handles.push_back(Start(&o));
  ASSERT_EQ(connector_.streams.size(), 20u);
  for (auto& s : connector_.streams) s->Data(kAllow);
  loop_.RunDeferred();
  int open = 0;
  for (auto& s : connector_.streams) open += !s->closed;
  EXPECT_EQ(open, 16);
}

TEST_F(HttpAuthorizerClientTest, DestroyingTheClientAnswersPendingChecksWithAnError) {
  std::optional<AuthzCheckResponse> r;
  auto h = Start(&r);
  client_.reset();
  EXPECT_TRUE(connector_.streams[0]->closed);
  loop_.RunDeferred();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->outcome, Outcome::kError);
  h.reset();  // after the client: harmless
}

}  // namespace
}  // namespace ambit::waypoint
