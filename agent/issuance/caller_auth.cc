#include "agent/issuance/caller_auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <algorithm>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

namespace ambit::issuance {
namespace {

class StaticTokenAuthenticator final : public CallerAuthenticator {
 public:
  StaticTokenAuthenticator(std::string file, std::map<std::string, std::string> tokens)
      : file_(std::move(file)), tokens_(std::move(tokens)) {}
  absl::StatusOr<std::string> NodeOf(const std::string& token) override {
    auto t = tokens_.find(token);
    if (t == tokens_.end()) return absl::UnauthenticatedError("unknown bearer token");
    return t->second;
  }
  std::string Description() const override {
    return absl::StrCat("static tokens from ", file_, " (", tokens_.size(), ")");
  }

 private:
  const std::string file_;
  const std::map<std::string, std::string> tokens_;
};

// A string the JSON answer may hold at `key`, or "" (absent or not a string).
std::string StringAt(const nlohmann::json& object, const char* key) {
  if (!object.is_object()) return "";
  auto it = object.find(key);
  if (it == object.end() || !it->is_string()) return "";
  return it->get<std::string>();
}

std::string TokenHash(const std::string& token) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), digest);
  return std::string(reinterpret_cast<const char*>(digest), sizeof digest);
}

}  // namespace

absl::StatusOr<std::unique_ptr<CallerAuthenticator>> MakeStaticTokenAuthenticator(
    const std::string& tokens_file) {
  if (tokens_file.empty()) {
    return absl::InvalidArgumentError(
        "--ca-listen needs --ca-tokens or --ca-token-review: without them no caller could be "
        "authenticated");
  }
  std::ifstream in(tokens_file);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read CA tokens file ", tokens_file));
  std::map<std::string, std::string> tokens;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    std::string_view body = line;
    body = body.substr(0, body.find('#'));
    std::vector<std::string> f =
        absl::StrSplit(std::string(body), absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (f.empty()) continue;
    if (f.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(tokens_file, ":", n, ": expected '<token> <node-name>'"));
    }
    tokens[f[0]] = f[1];
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--ca-tokens ", tokens_file, " holds no token: no caller could be authenticated"));
  }
  return std::make_unique<StaticTokenAuthenticator>(tokens_file, std::move(tokens));
}

std::string TokenReviewRequest(std::string_view token, std::string_view audience) {
  nlohmann::json review = {
      {"apiVersion", "authentication.k8s.io/v1"},
      {"kind", "TokenReview"},
      {"spec", {{"token", std::string(token)}, {"audiences", {std::string(audience)}}}},
  };
  return review.dump();
}

absl::StatusOr<std::string> DecideTokenReview(int http_status, std::string_view body,
                                              const TokenReviewPolicy& policy) {
  if (http_status != 200 && http_status != 201) {
    std::string why;
    if (http_status == 401 || http_status == 403) {
      why =
          ": the CA's own credentials were refused (its service account needs create on "
          "tokenreviews.authentication.k8s.io)";
    }
    return absl::UnavailableError(
        absl::StrCat("token review failed: the API server answered HTTP ", http_status, why));
  }
  nlohmann::json answer = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (answer.is_discarded() || !answer.is_object() || StringAt(answer, "kind") != "TokenReview") {
    return absl::UnavailableError("token review failed: the API server's answer is no TokenReview");
  }
  auto status_it = answer.find("status");
  const nlohmann::json status =
      status_it != answer.end() && status_it->is_object() ? *status_it : nlohmann::json::object();
  auto authenticated = status.find("authenticated");
  if (authenticated == status.end() || !authenticated->is_boolean() ||
      !authenticated->get<bool>()) {
    std::string error = StringAt(status, "error");
    return absl::UnauthenticatedError(
        absl::StrCat("the API server did not authenticate the token",
                     error.empty() ? std::string() : absl::StrCat(": ", error)));
  }
  bool audience_ok = false;
  if (auto audiences = status.find("audiences");
      audiences != status.end() && audiences->is_array()) {
    for (const auto& a : *audiences) {
      if (a.is_string() && a.get<std::string>() == policy.audience) audience_ok = true;
    }
  }
  if (!audience_ok) {
    return absl::UnauthenticatedError(absl::StrCat(
        "the token is not for audience ", policy.audience, " (request a projected token with it)"));
  }
  auto user_it = status.find("user");
  const nlohmann::json user =
      user_it != status.end() && user_it->is_object() ? *user_it : nlohmann::json::object();
  const std::string username = StringAt(user, "username");
  if (std::find(policy.users.begin(), policy.users.end(), username) == policy.users.end()) {
    return absl::PermissionDeniedError(
        absl::StrCat("user '", username,
                     "' is not a node agent (allowed: ", absl::StrJoin(policy.users, ", "), ")"));
  }
  std::vector<std::string> nodes;
  if (auto extra = user.find("extra"); extra != user.end() && extra->is_object()) {
    if (auto values = extra->find(std::string(kNodeNameExtra));
        values != extra->end() && values->is_array()) {
      for (const auto& v : *values) {
        if (v.is_string()) nodes.push_back(v.get<std::string>());
      }
    }
  }
  if (nodes.size() != 1 || nodes[0].empty()) {
    return absl::UnauthenticatedError(absl::StrCat(
        "the token of ", username, " names ", nodes.size(), " nodes in ", kNodeNameExtra,
        ": it must be a pod-bound service-account token (a projected volume) naming one"));
  }
  return nodes[0];
}

TokenReviewAuthenticator::TokenReviewAuthenticator(TokenReviewOptions options,
                                                   TokenReviewTransport transport)
    : options_(std::move(options)),
      transport_(std::move(transport)),
      clock_(options_.clock != nullptr ? options_.clock : &RealClock::Get()) {}

absl::StatusOr<std::string> TokenReviewAuthenticator::NodeOf(const std::string& token) {
  if (token.empty()) return absl::UnauthenticatedError("empty bearer token");
  const std::string key = TokenHash(token);
  {
    absl::MutexLock lock(&mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      if (clock_->Now() < it->second.expires) {
        if (!it->second.status.ok()) return it->second.status;
        return it->second.node;
      }
      cache_.erase(it);
    }
    ++reviews_;
  }
  std::string request = TokenReviewRequest(token, options_.policy.audience);
  absl::StatusOr<HttpAnswer> answer = transport_(request);
  // The request held the token in the clear; nothing else of ours keeps it.
  OPENSSL_cleanse(request.data(), request.size());
  if (!answer.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "token review failed: the API server is unreachable: ", answer.status().message()));
  }
  absl::StatusOr<std::string> node =
      DecideTokenReview(answer->status, answer->body, options_.policy);
  if (!node.ok() && node.status().code() == absl::StatusCode::kUnavailable) return node;
  Entry entry;
  entry.status = node.status();
  if (node.ok()) entry.node = *node;
  entry.expires = clock_->Now() + (node.ok() ? options_.accepted_ttl : options_.refused_ttl);
  absl::MutexLock lock(&mu_);
  if (cache_.size() >= options_.max_entries) {
    const absl::Time now = clock_->Now();
    std::erase_if(cache_, [now](const auto& kv) { return kv.second.expires <= now; });
    if (cache_.size() >= options_.max_entries) cache_.clear();
  }
  cache_[key] = std::move(entry);
  return node;
}

std::string TokenReviewAuthenticator::Description() const {
  return absl::StrCat("TokenReview (audience ", options_.policy.audience, ", users ",
                      absl::StrJoin(options_.policy.users, ", "), ")");
}

uint64_t TokenReviewAuthenticator::reviews() const {
  absl::MutexLock lock(&mu_);
  return reviews_;
}

}  // namespace ambit::issuance
