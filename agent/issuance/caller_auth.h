#pragma once

// Who a CA API caller is: the node its bearer token speaks for (docs/ARCHITECTURE.md#ca-api).
// Two ways: a static file of tokens (`--ca-tokens`), or a TokenReview against the Kubernetes API
// server (`--ca-token-review`), which checks a projected service-account token bound to a pod on
// a node.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"

namespace ambit::issuance {

// Thread-safe: called by the CA API server's request threads.
class CallerAuthenticator {
 public:
  virtual ~CallerAuthenticator() = default;
  // The node `token` speaks for. UNAUTHENTICATED or PERMISSION_DENIED when the token is not one
  // of a node agent; UNAVAILABLE when it cannot be checked now (fail closed: the caller retries).
  virtual absl::StatusOr<std::string> NodeOf(const std::string& token) = 0;
  // For the start-up log line: how callers are authenticated.
  virtual std::string Description() const = 0;
};

// Lines "<token> <node-name>"; '#' starts a comment. InvalidArgument naming the line of a bad one,
// and when the file holds no token at all (no caller could be authenticated).
absl::StatusOr<std::unique_ptr<CallerAuthenticator>> MakeStaticTokenAuthenticator(
    const std::string& tokens_file);

// The Kubernetes extra that binds a pod-bound service-account token to its node (set by the API
// server, from the pod the token was issued for).
inline constexpr char kNodeNameExtra[] = "authentication.kubernetes.io/node-name";

struct TokenReviewPolicy {
  // spec.audiences of the review; the answer's status.audiences must include it.
  std::string audience = "ambit-ca";
  // Usernames allowed to obtain certificates: the node agent's service accounts,
  // "system:serviceaccount:<namespace>:<name>".
  std::vector<std::string> users;
};

// The TokenReview (authentication.k8s.io/v1) to POST for `token`, as JSON.
std::string TokenReviewRequest(std::string_view token, std::string_view audience);

// The decision on the API server's answer to a TokenReview: the node the token speaks for, or why
// not. Pure. `http_status` is the answer's status: 201 (or 200) with a TokenReview body is an
// answer; anything else means the review could not be made (UNAVAILABLE, naming the status).
// Then, in order: status.authenticated must be true (UNAUTHENTICATED, with the API server's
// status.error), status.audiences must include the policy's audience (UNAUTHENTICATED),
// status.user.username must be one of the policy's users (PERMISSION_DENIED), and
// status.user.extra must name exactly one node under kNodeNameExtra (UNAUTHENTICATED: a token
// not bound to a pod). An unreadable body is UNAVAILABLE.
absl::StatusOr<std::string> DecideTokenReview(int http_status, std::string_view body,
                                              const TokenReviewPolicy& policy);

// POSTs a TokenReview body to /apis/authentication.k8s.io/v1/tokenreviews; returns the HTTP status
// and body, or an error when no answer came (connection, TLS, deadline). Must be thread-safe.
struct HttpAnswer {
  int status = 0;
  std::string body;
};
using TokenReviewTransport = std::function<absl::StatusOr<HttpAnswer>(const std::string& body)>;

struct TokenReviewOptions {
  TokenReviewPolicy policy;
  // How long a decision stands before the token is reviewed again: an accepted token, and a
  // refused one (shorter, so a token that becomes valid, e.g. a pod just scheduled, is not
  // refused for long). Errors (the API server unreachable) are never kept.
  absl::Duration accepted_ttl = absl::Seconds(30);
  absl::Duration refused_ttl = absl::Seconds(5);
  // Decisions kept at most; beyond, expired ones are dropped, then all.
  size_t max_entries = 4096;
  const Clock* clock = nullptr;  // null: real time; must outlive the authenticator
};

// Reviews each token with the API server and keeps the decision briefly, keyed by the token's
// SHA-256 (the token itself is neither kept nor logged). Thread-safe; reviews run outside the
// lock, so a slow review holds up only its own caller.
class TokenReviewAuthenticator final : public CallerAuthenticator {
 public:
  TokenReviewAuthenticator(TokenReviewOptions options, TokenReviewTransport transport);
  absl::StatusOr<std::string> NodeOf(const std::string& token) override;
  std::string Description() const override;
  // Reviews sent to the API server so far (cache misses), for tests and metrics.
  uint64_t reviews() const;

 private:
  struct Entry {
    absl::Status status;  // OK: accepted
    std::string node;
    absl::Time expires;
  };
  TokenReviewOptions options_;
  TokenReviewTransport transport_;
  const Clock* clock_;
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> cache_ ABSL_GUARDED_BY(mu_);  // by SHA-256 of the token
  uint64_t reviews_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ambit::issuance
