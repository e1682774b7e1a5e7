#include "agent/issuance/caller_auth.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "nlohmann/json.hpp"

namespace ambit::issuance {
namespace {

constexpr char kAgent[] = "system:serviceaccount:ambit-system:ambit";

TokenReviewPolicy Policy() {
  TokenReviewPolicy p;
  p.audience = "ambit-ca";
  p.users = {kAgent};
  return p;
}

// A TokenReview answer as the API server writes it for a pod-bound token.
nlohmann::json Answer(bool authenticated = true, const std::string& user = kAgent,
                      std::vector<std::string> audiences = {"ambit-ca"},
                      std::vector<std::string> nodes = {"node1"}) {
  nlohmann::json status = {{"authenticated", authenticated}};
  if (authenticated) {
    status["audiences"] = audiences;
    status["user"] = {{"username", user},
                      {"uid", "3c8a7d2e"},
                      {"groups", {"system:serviceaccounts", "system:authenticated"}},
                      {"extra",
                       {{"authentication.kubernetes.io/pod-name", {"ambit-x7k2p"}},
                        {"authentication.kubernetes.io/node-name", nodes}}}};
  } else {
    status["error"] = "[invalid bearer token, square/go-jose: error in cryptographic primitive]";
  }
  return {{"kind", "TokenReview"},
          {"apiVersion", "authentication.k8s.io/v1"},
          {"metadata", {{"creationTimestamp", nullptr}}},
          {"spec", {{"token", "x"}, {"audiences", {"ambit-ca"}}}},
          {"status", status}};
}

absl::StatusCode Code(int http, const nlohmann::json& body) {
  return DecideTokenReview(http, body.dump(), Policy()).status().code();
}

TEST(TokenReviewDecisionTest, PodBoundTokenOfTheAgentNamesItsNode) {
  auto node = DecideTokenReview(201, Answer().dump(), Policy());
  ASSERT_TRUE(node.ok()) << node.status();
  EXPECT_EQ(*node, "node1");
  // 200 is what some API servers (and proxies) answer a create with.
  EXPECT_TRUE(DecideTokenReview(200, Answer().dump(), Policy()).ok());
}

TEST(TokenReviewDecisionTest, Refusals) {
  struct Row {
    const char* name;
    int http;
    nlohmann::json body;
    absl::StatusCode want;
  };
  const Row rows[] = {
      {"unauthenticated", 201, Answer(false), absl::StatusCode::kUnauthenticated},
      {"wrong audience", 201, Answer(true, kAgent, {"https://kubernetes.default.svc"}),
       absl::StatusCode::kUnauthenticated},
      {"no audiences", 201, Answer(true, kAgent, {}), absl::StatusCode::kUnauthenticated},
      {"another service account", 201,
       Answer(true, "system:serviceaccount:default:web", {"ambit-ca"}),
       absl::StatusCode::kPermissionDenied},
      {"same name, other namespace", 201,
       Answer(true, "system:serviceaccount:default:ambit", {"ambit-ca"}),
       absl::StatusCode::kPermissionDenied},
      {"a user, not a service account", 201, Answer(true, "alice", {"ambit-ca"}),
       absl::StatusCode::kPermissionDenied},
      {"not bound to a node", 201, Answer(true, kAgent, {"ambit-ca"}, {}),
       absl::StatusCode::kUnauthenticated},
      {"two nodes", 201, Answer(true, kAgent, {"ambit-ca"}, {"node1", "node2"}),
       absl::StatusCode::kUnauthenticated},
      {"empty node", 201, Answer(true, kAgent, {"ambit-ca"}, {""}),
       absl::StatusCode::kUnauthenticated},
      // The review itself failed: nothing is known about the token, and nothing is let in.
      {"CA's own token refused", 401, nlohmann::json::object(), absl::StatusCode::kUnavailable},
      {"CA not allowed to review", 403, nlohmann::json::object(), absl::StatusCode::kUnavailable},
      {"server error", 500, Answer(), absl::StatusCode::kUnavailable},
      {"throttled", 429, Answer(), absl::StatusCode::kUnavailable},
      {"not a TokenReview", 201, nlohmann::json{{"kind", "Status"}},
       absl::StatusCode::kUnavailable},
      {"array", 201, nlohmann::json::array(), absl::StatusCode::kUnavailable},
  };
  for (const Row& r : rows) {
    EXPECT_EQ(Code(r.http, r.body), r.want) << r.name;
  }
}

TEST(TokenReviewDecisionTest, MalformedFieldsAreRefusedNotTrusted) {
  nlohmann::json a = Answer();
  a["status"]["authenticated"] = "true";  // a string is not a boolean
  EXPECT_EQ(Code(201, a), absl::StatusCode::kUnauthenticated);
  a = Answer();
  a["status"]["user"]["extra"]["authentication.kubernetes.io/node-name"] = "node1";  // not a list
  EXPECT_EQ(Code(201, a), absl::StatusCode::kUnauthenticated);
  a = Answer();
  a["status"]["user"] = "x";
  EXPECT_EQ(Code(201, a), absl::StatusCode::kPermissionDenied);
  a = Answer();
  a["status"] = nullptr;
  EXPECT_EQ(Code(201, a), absl::StatusCode::kUnauthenticated);
  for (const std::string& body :
       std::vector<std::string>{"", "{", "null", "\"x\"", std::string(4, '\0')}) {
    EXPECT_EQ(DecideTokenReview(201, body, Policy()).status().code(),
              absl::StatusCode::kUnavailable)
        << body;
  }
}

TEST(TokenReviewDecisionTest, MessagesSayWhatIsWrong) {
  auto wrong_audience =
      DecideTokenReview(201, Answer(true, kAgent, {"other"}).dump(), Policy()).status();
  EXPECT_NE(wrong_audience.message().find("audience ambit-ca"), std::string::npos)
      << wrong_audience;
  auto unauth = DecideTokenReview(201, Answer(false).dump(), Policy()).status();
  EXPECT_NE(unauth.message().find("invalid bearer token"), std::string::npos) << unauth;
  auto user = DecideTokenReview(201, Answer(true, "alice").dump(), Policy()).status();
  EXPECT_NE(user.message().find("'alice'"), std::string::npos) << user;
  auto forbidden = DecideTokenReview(403, "{}", Policy()).status();
  EXPECT_NE(forbidden.message().find("tokenreviews"), std::string::npos) << forbidden;
}

TEST(TokenReviewRequestTest, AsksForTheAudience) {
  auto review = nlohmann::json::parse(TokenReviewRequest("tok\"en", "ambit-ca"));
  EXPECT_EQ(review["apiVersion"], "authentication.k8s.io/v1");
  EXPECT_EQ(review["kind"], "TokenReview");
  EXPECT_EQ(review["spec"]["token"], "tok\"en");
  EXPECT_EQ(review["spec"]["audiences"], nlohmann::json::array({"ambit-ca"}));
}

class TokenReviewAuthenticatorTest : public ::testing::Test {
 protected:
  std::unique_ptr<TokenReviewAuthenticator> Make(size_t max_entries = 4096) {
    TokenReviewOptions o;
    o.policy = Policy();
    o.clock = &clock_;
    o.max_entries = max_entries;
    return std::make_unique<TokenReviewAuthenticator>(
        o, [this](const std::string& body) -> absl::StatusOr<HttpAnswer> {
          ++calls_;
          last_request_ = body;
          if (!up_) return absl::UnavailableError("connect 127.0.0.1:6443: connection refused");
          auto token = nlohmann::json::parse(body)["spec"]["token"].get<std::string>();
          auto it = answers_.find(token);
          if (it == answers_.end()) return HttpAnswer{201, Answer(false).dump()};
          return HttpAnswer{201, it->second.dump()};
        });
  }
  FakeClock clock_;
  bool up_ = true;
  int calls_ = 0;
  std::string last_request_;
  std::map<std::string, nlohmann::json> answers_ = {
      {"t1", Answer()}, {"t2", Answer(true, kAgent, {"ambit-ca"}, {"node2"})}};
};

TEST_F(TokenReviewAuthenticatorTest, KeepsDecisionsBrieflyByToken) {
  auto auth = Make();
  EXPECT_EQ(*auth->NodeOf("t1"), "node1");
  EXPECT_EQ(*auth->NodeOf("t1"), "node1");
  EXPECT_EQ(*auth->NodeOf("t2"), "node2");
  EXPECT_EQ(calls_, 2);
  EXPECT_EQ(auth->reviews(), 2u);
  clock_.Advance(absl::Seconds(31));  // accepted decisions last 30 s
  EXPECT_EQ(*auth->NodeOf("t1"), "node1");
  EXPECT_EQ(calls_, 3);
}

TEST_F(TokenReviewAuthenticatorTest, RefusalsAreKeptShorter) {
  auto auth = Make();
  EXPECT_EQ(auth->NodeOf("t3").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth->NodeOf("t3").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(calls_, 1);
  answers_["t3"] = Answer(true, kAgent, {"ambit-ca"}, {"node3"});
  clock_.Advance(absl::Seconds(6));
  EXPECT_EQ(*auth->NodeOf("t3"), "node3");
}

TEST_F(TokenReviewAuthenticatorTest, ApiServerDownIsRefusedAndNotRemembered) {
  auto auth = Make();
  up_ = false;
  auto down = auth->NodeOf("t1");
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(down.status().message().find("unreachable"), std::string::npos) << down.status();
  up_ = true;
  EXPECT_EQ(*auth->NodeOf("t1"), "node1");  // asked again at once
  EXPECT_EQ(calls_, 2);
  // An accepted token stays accepted while its decision lasts, even with the server gone.
  up_ = false;
  EXPECT_EQ(*auth->NodeOf("t1"), "node1");
}

TEST_F(TokenReviewAuthenticatorTest, EmptyTokenIsNeverSent) {
  auto auth = Make();
  EXPECT_EQ(auth->NodeOf("").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(calls_, 0);
}

TEST_F(TokenReviewAuthenticatorTest, CacheIsBounded) {
  auto auth = Make(/*max_entries=*/8);
  for (int i = 0; i < 100; ++i) {
    EXPECT_FALSE(auth->NodeOf("unknown-" + std::to_string(i)).ok());
  }
  // Every distinct token was reviewed; t1 still works (the cache made room).
  EXPECT_EQ(calls_, 100);
  EXPECT_EQ(*auth->NodeOf("t1"), "node1");
  EXPECT_EQ(*auth->NodeOf("t1"), "node1");
  EXPECT_EQ(calls_, 101);
}

TEST(StaticTokenAuthenticatorTest, FileOfTokens) {
  const std::string path = ::testing::TempDir() + "/ca-tokens";
  {
    std::ofstream f(path);
    f << "# token node\nn1secret node1\n\n  n2secret\tnode2  # trailing\n";
  }
  auto auth = MakeStaticTokenAuthenticator(path);
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_EQ(*(*auth)->NodeOf("n1secret"), "node1");
  EXPECT_EQ(*(*auth)->NodeOf("n2secret"), "node2");
  EXPECT_EQ((*auth)->NodeOf("node1").status().code(), absl::StatusCode::kUnauthenticated);
  {
    std::ofstream f(path);
    f << "a b c\n";
  }
  EXPECT_NE(MakeStaticTokenAuthenticator(path).status().message().find(":1:"), std::string::npos);
  {
    std::ofstream f(path);
    f << "# nothing\n";
  }
  EXPECT_EQ(MakeStaticTokenAuthenticator(path).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeStaticTokenAuthenticator("").status().code(), absl::StatusCode::kInvalidArgument);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace ambit::issuance
