#include "agent/waypoint/authz_filter.h"

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "agent/authz/compile.h"
#include "agent/authz/engine.h"
#include "agent/waypoint/metrics.h"
#include "gtest/gtest.h"

namespace ambit::waypoint {
namespace {

using Outcome = AuthzCheckResponse::Outcome;

// Answers when the test says so; records every check it was asked.
class FakeAuthorizer final : public AuthorizerClient {
 public:
  explicit FakeAuthorizer(authz::ExtAuthzProvider p) : provider_(std::move(p)) {}

  std::unique_ptr<AsyncCheck> Check(const AuthzCheckRequest& request,
                                    std::function<void(AuthzCheckResponse)> done) override {
    requests.push_back(request);
    auto h = std::make_unique<Handle>();
    pending = std::move(done);
    cancelled = h->cancelled;
    return h;
  }
  const authz::ExtAuthzProvider& provider() const override { return provider_; }

  void Answer(AuthzCheckResponse r) {
    ASSERT_TRUE(pending) << "no check outstanding";
    ASSERT_FALSE(*cancelled);
    auto done = std::move(pending);
    pending = nullptr;
    done(std::move(r));
  }

  std::vector<AuthzCheckRequest> requests;
  std::function<void(AuthzCheckResponse)> pending;
  std::shared_ptr<bool> cancelled;

 private:
  struct Handle final : AsyncCheck {
    ~Handle() override { *cancelled = true; }
    std::shared_ptr<bool> cancelled = std::make_shared<bool>(false);
  };
  authz::ExtAuthzProvider provider_;
};

class MapAuthorizers final : public AuthorizerSet {
 public:
  AuthorizerClient* Find(const std::string& provider) override {
    auto it = clients.find(provider);
    return it == clients.end() ? nullptr : it->second.get();
  }
  std::map<std::string, std::unique_ptr<FakeAuthorizer>> clients;
};

authz::CompiledPolicy Policy(authz::Action action, const std::string& name,
                             const std::string& provider = "",
                             std::vector<std::string> paths = {}) {
  authz::Policy p;
  p.namespace_name = "default";
  p.name = name;
  p.action = action;
  p.provider = provider;
  authz::Rule rule;
  if (!paths.empty()) {
    authz::Operation op;
    op.paths = std::move(paths);
    rule.to.push_back(op);
  }
  p.rules = std::vector<authz::Rule>{rule};
  auto c = authz::Compile(p);
  EXPECT_TRUE(c.ok()) << c.status();
  return std::move(*c);
}

AuthzCheckResponse Allow(std::vector<HeaderEdit> up = {}, std::vector<HeaderEdit> down = {}) {
  AuthzCheckResponse r;
  r.outcome = Outcome::kAllow;
  r.upstream_edits = std::move(up);
  r.downstream_edits = std::move(down);
  r.latency = absl::Milliseconds(12);
  return r;
}

class AuthzFilterTest : public ::testing::Test {
 protected:
  // A filter over `policies` with the providers registered so far.
  std::unique_ptr<AuthzFilter> Filter(std::vector<authz::CompiledPolicy> policies) {
    auto engine = authz::Engine::Create(std::move(policies));
    EXPECT_TRUE(engine.ok()) << engine.status();
    return std::make_unique<AuthzFilter>(std::shared_ptr<const authz::Engine>(std::move(*engine)),
                                         authz::Workload{"default", {}, std::nullopt}, authorizers_,
                                         "spiffe://td/ns/default/sa/waypoint", &metrics_);
  }

  FakeAuthorizer& AddProvider(const std::string& name, bool fail_open = false,
                              uint32_t status_on_error = 403) {
    authz::ExtAuthzProvider p;
    p.name = name;
    p.fail_open = fail_open;
    p.status_on_error = status_on_error;
    auto client = std::make_unique<FakeAuthorizer>(p);
    FakeAuthorizer& ref = *client;
    authorizers_->clients[name] = std::move(client);
    return ref;
  }

  static RequestContext Request(const std::string& path = "/api") {
    RequestContext ctx;
    ctx.request.layer = authz::Layer::kL7;
    ctx.request.method = "GET";
    ctx.request.path = path;
    ctx.request.host = "svc.test";
    ctx.request.headers.Add("host", "svc.test");
    ctx.request.headers.Add("x-request-id", "rid-1");
    ctx.request.headers.Add("authorization", "Bearer t");
    ctx.request.source_principal = "spiffe://td/ns/client/sa/sleep";
    ctx.request.source_ip = IpAddress::Parse("198.18.0.5").value();
    return ctx;
  }

  // Runs the filter; when it waits, starts the check as a handler would and returns the result
  // the check's answer produced.
  std::optional<FilterResult> Run(AuthzFilter& f, RequestContext& ctx,
                                  const std::function<void()>& answer) {
    FilterResult r = f.OnRequest(ctx);
    if (!r.pending) return r;
    std::optional<FilterResult> out;
    handle_ = r.pending->start(ctx, [&out](FilterResult fr) { out = std::move(fr); });
    answer();
    return out;
  }

  std::shared_ptr<MapAuthorizers> authorizers_ = std::make_shared<MapAuthorizers>();
  HttpMetrics metrics_;
  std::unique_ptr<AsyncCheck> handle_;
};

TEST_F(AuthzFilterTest, WithoutCustomNothingIsAsked) {
  FakeAuthorizer& a = AddProvider("ext");
  auto f = Filter({Policy(authz::Action::kAllow, "all")});
  RequestContext ctx = Request();
  FilterResult r = f->OnRequest(ctx);
  EXPECT_TRUE(r.proceed);
  EXPECT_FALSE(r.pending);
  EXPECT_TRUE(a.requests.empty());
}

TEST_F(AuthzFilterTest, MissingOrUnresolvedProviderFailsClosed) {
  auto f = Filter({Policy(authz::Action::kCustom, "ext", "nowhere")});
  RequestContext ctx = Request();
  FilterResult r = f->OnRequest(ctx);
  EXPECT_FALSE(r.proceed);
  EXPECT_FALSE(r.pending);
  EXPECT_EQ(r.reply.status, 403);
  EXPECT_EQ(r.reply.body, kRbacDeniedBody);
  EXPECT_EQ(ctx.details, "ext_authz_unavailable");

  authz::ExtAuthzProvider p;
  p.name = "unresolved";
  p.fail_open = true;  // a wrong configuration is not an authorizer being down
  p.unresolved = "service ext-authz.foo.svc.cluster.local not found";
  authorizers_->clients["unresolved"] = std::make_unique<FakeAuthorizer>(p);
  auto g = Filter({Policy(authz::Action::kCustom, "ext", "unresolved")});
  RequestContext ctx2 = Request();
  FilterResult r2 = g->OnRequest(ctx2);
  EXPECT_FALSE(r2.proceed);
  EXPECT_FALSE(r2.pending);
  EXPECT_EQ(r2.reply.status, 403);
  EXPECT_TRUE(authorizers_->clients["unresolved"]->requests.empty());
}

TEST_F(AuthzFilterTest, AllowAppliesTheAuthorizersEdits) {
  FakeAuthorizer& a = AddProvider("ext");
  auto f = Filter({Policy(authz::Action::kCustom, "ext", "ext")});
  RequestContext ctx = Request();
  auto r = Run(*f, ctx, [&] {
    a.Answer(Allow({{HeaderEdit::Op::kSet, "x-ext-authz-upstream", "added"}},
                   {{HeaderEdit::Op::kAppend, "x-down", "d"}}));
  });
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->proceed);
  EXPECT_FALSE(r->pending);
  ASSERT_EQ(ctx.upstream_header_edits.size(), 1u);
  EXPECT_EQ(ctx.upstream_header_edits[0].name, "x-ext-authz-upstream");
  ASSERT_EQ(ctx.downstream_header_edits.size(), 1u);
  EXPECT_EQ(ctx.ext_authz, "ext:allow:12");
  EXPECT_EQ(metrics_.ext_authz_checks("ext", "allow"), 1u);
  // What the authorizer was told.
  ASSERT_EQ(a.requests.size(), 1u);
  const AuthzCheckRequest& q = a.requests[0];
  EXPECT_EQ(q.method, "GET");
  EXPECT_EQ(q.path, "/api");
  EXPECT_EQ(q.host, "svc.test");
  EXPECT_EQ(q.request_id, "rid-1");
  EXPECT_EQ(q.source_principal, "spiffe://td/ns/client/sa/sleep");
  EXPECT_EQ(q.destination_principal, "spiffe://td/ns/default/sa/waypoint");
  ASSERT_TRUE(q.source.has_value());
  EXPECT_EQ(q.source->ip.ToString(), "198.18.0.5");
  EXPECT_FALSE(q.body.has_value());
  bool saw_auth = false;
  for (const auto& [k, v] : q.headers) saw_auth |= k == "authorization" && v == "Bearer t";
  EXPECT_TRUE(saw_auth);
}

TEST_F(AuthzFilterTest, DenyAndAllowPoliciesStillApplyAfterTheProviderAllows) {
  FakeAuthorizer& a = AddProvider("ext");
  auto f = Filter({Policy(authz::Action::kCustom, "ext", "ext"),
                   Policy(authz::Action::kDeny, "no-admin", "", {"/admin"})});
  RequestContext ctx = Request("/admin");
  auto r = Run(*f, ctx, [&] { a.Answer(Allow({{HeaderEdit::Op::kSet, "x-u", "1"}})); });
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(r->proceed);
  EXPECT_EQ(r->reply.status, 403);
  EXPECT_EQ(r->reply.body, kRbacDeniedBody);
  EXPECT_EQ(ctx.policy, "default/no-admin");
  EXPECT_TRUE(ctx.upstream_header_edits.empty());

  RequestContext ok = Request("/api");
  auto r2 = Run(*f, ok, [&] { a.Answer(Allow()); });
  EXPECT_TRUE(r2->proceed);
}

TEST_F(AuthzFilterTest, DenyAnswersWithTheAuthorizersStatusHeadersAndBody) {
  FakeAuthorizer& a = AddProvider("ext");
  auto f = Filter({Policy(authz::Action::kCustom, "ext", "ext")});
  RequestContext ctx = Request();
  auto r = Run(*f, ctx, [&] {
    AuthzCheckResponse d;
    d.outcome = Outcome::kDeny;
    d.status = 418;
    d.deny_headers = {{"x-teapot", "yes"}};
    d.deny_body = "short and stout";
    d.latency = absl::Milliseconds(3);
    a.Answer(d);
  });
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(r->proceed);
  EXPECT_EQ(r->reply.status, 418);
  EXPECT_EQ(r->reply.body, "short and stout");
  EXPECT_EQ(r->reply.headers, (HeaderList{{"x-teapot", "yes"}}));
  EXPECT_EQ(ctx.details, "ext_authz_denied");
  EXPECT_EQ(ctx.ext_authz, "ext:deny:3");
  EXPECT_EQ(ctx.policy, "default/ext");
  EXPECT_EQ(metrics_.ext_authz_checks("ext", "deny"), 1u);
}

TEST_F(AuthzFilterTest, ErrorAnswersStatusOnErrorUnlessFailOpen) {
  FakeAuthorizer& closed = AddProvider("closed", false, 503);
  FakeAuthorizer& open = AddProvider("open", true);
  AuthzCheckResponse err;
  err.outcome = Outcome::kError;
  err.detail = "timeout after 200ms";

  auto f = Filter({Policy(authz::Action::kCustom, "c", "closed")});
  RequestContext ctx = Request();
  auto r = Run(*f, ctx, [&] { closed.Answer(err); });
  EXPECT_FALSE(r->proceed);
  EXPECT_EQ(r->reply.status, 503);
  EXPECT_EQ(r->reply.body, "");
  EXPECT_EQ(ctx.details, "ext_authz_error");
  EXPECT_EQ(ctx.ext_authz, "closed:error:0");

  auto g = Filter({Policy(authz::Action::kCustom, "o", "open")});
  RequestContext ctx2 = Request();
  auto r2 = Run(*g, ctx2, [&] { open.Answer(err); });
  EXPECT_TRUE(r2->proceed);
  EXPECT_EQ(ctx2.ext_authz, "open:failure_mode_allowed:0");
  EXPECT_EQ(metrics_.ext_authz_checks("open", "failure_mode_allowed"), 1u);
  EXPECT_EQ(metrics_.ext_authz_checks("closed", "error"), 1u);
  const std::string text = metrics_.RenderPrometheus();
  EXPECT_NE(text.find("ambit_waypoint_ext_authz_checks_total{provider=\"open\",result="
                      "\"failure_mode_allowed\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(
      text.find("ambit_waypoint_ext_authz_duration_milliseconds_count{provider=\"closed\"} 1"),
      std::string::npos);
}

TEST_F(AuthzFilterTest, AnOutOfRangeStatusOnErrorIsForbidden) {
  FakeAuthorizer& a = AddProvider("ext", false, 99);
  auto f = Filter({Policy(authz::Action::kCustom, "ext", "ext")});
  RequestContext ctx = Request();
  AuthzCheckResponse err;
  err.outcome = Outcome::kError;
  auto r = Run(*f, ctx, [&] { a.Answer(err); });
  EXPECT_EQ(r->reply.status, 403);
}

TEST_F(AuthzFilterTest, AsksForTheBodyWhenTheProviderIncludesIt) {
  authz::ExtAuthzProvider p;
  p.name = "body";
  p.include_request_body =
      authz::ExtAuthzBodyOptions{.max_request_bytes = 1024, .allow_partial_message = true};
  authorizers_->clients["body"] = std::make_unique<FakeAuthorizer>(p);
  FakeAuthorizer& a = *authorizers_->clients["body"];
  auto f = Filter({Policy(authz::Action::kCustom, "ext", "body")});
  RequestContext ctx = Request();
  FilterResult r = f->OnRequest(ctx);
  ASSERT_TRUE(r.pending);
  ASSERT_TRUE(r.pending->body.has_value());
  EXPECT_EQ(r.pending->body->max_bytes, 1024u);
  EXPECT_TRUE(r.pending->body->allow_partial);
  ctx.body = "hello";
  ctx.body_truncated = true;
  std::optional<FilterResult> out;
  handle_ = r.pending->start(ctx, [&out](FilterResult fr) { out = std::move(fr); });
  ASSERT_EQ(a.requests.size(), 1u);
  EXPECT_EQ(a.requests[0].body, "hello");
  EXPECT_TRUE(a.requests[0].body_truncated);
}

TEST_F(AuthzFilterTest, TwoProvidersEachForItsOwnPolicy) {
  FakeAuthorizer& a = AddProvider("a");
  FakeAuthorizer& b = AddProvider("b");
  auto f = Filter({Policy(authz::Action::kCustom, "pa", "a", {"/a*"}),
                   Policy(authz::Action::kCustom, "pb", "b", {"/b*"})});
  RequestContext ca = Request("/a/1");
  auto ra = Run(*f, ca, [&] { a.Answer(Allow()); });
  RequestContext cb = Request("/b/1");
  auto rb = Run(*f, cb, [&] { b.Answer(Allow()); });
  EXPECT_EQ(a.requests.size(), 1u);
  EXPECT_EQ(b.requests.size(), 1u);
  EXPECT_EQ(ca.ext_authz, "a:allow:12");
  EXPECT_EQ(cb.ext_authz, "b:allow:12");
}

TEST_F(AuthzFilterTest, ACheckOutlivesItsFilter) {
  FakeAuthorizer& a = AddProvider("ext");
  auto f = Filter({Policy(authz::Action::kCustom, "ext", "ext")});
  RequestContext ctx = Request();
  FilterResult r = f->OnRequest(ctx);
  ASSERT_TRUE(r.pending);
  std::optional<FilterResult> out;
  handle_ = r.pending->start(ctx, [&out](FilterResult fr) { out = std::move(fr); });
  f.reset();  // a new configuration replaced the chain
  r.pending.reset();
  a.Answer(Allow());
  ASSERT_TRUE(out.has_value());
  EXPECT_TRUE(out->proceed);
}

}  // namespace
}  // namespace ambit::waypoint
