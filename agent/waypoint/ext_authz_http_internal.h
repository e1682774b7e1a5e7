#pragma once

// The pieces of the HTTP ext_authz client that need no socket, for unit tests and the fuzz target:
// the check request on the wire, and the reading and mapping of the authorizer's answer.
//
// Thread-compatible.

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "agent/authz/ext_authz.h"
#include "agent/waypoint/ext_authz_client.h"
#include "agent/waypoint/http1_codec.h"

namespace ambit::waypoint::internal {

// Bounds on an authorizer's answer: more is an error, never a partial answer.
inline constexpr size_t kMaxAnswerHeaderBytes = 64 << 10;
inline constexpr size_t kMaxAnswerBodyBytes = 1 << 20;

// Whether `lower_name` matches one of Istio's header patterns: an exact name, "prefix*",
// "*suffix" or "*", compared without case.
bool HeaderNameMatches(const std::vector<std::string>& patterns, absl::string_view lower_name);

// The HTTP/1.1 check request for `request` as Envoy's ext_authz HTTP service sends it: the same
// method, path_prefix + the original path (query kept), Host the original host, the headers Envoy
// always allows (Authorization; Host, method, path and Content-Length are the request's own) plus
// includeRequestHeadersInCheck, then includeAdditionalHeadersInCheck (which override), and the
// collected body when the provider includes it (Content-Length its size; otherwise 0).
std::string BuildHttpCheckRequest(const authz::ExtAuthzProvider& provider,
                                  const AuthzCheckRequest& request);

// What an authorizer's HTTP answer means, as Envoy's ext_authz reads it: 200 allows (the
// headersToUpstreamOnAllow headers replace the request's, the headersToDownstreamOnAllow ones are
// added to the response); 5xx is an error of the authorizer (failOpen / statusOnError apply);
// any other status denies with that status, the body and the headers headersToDownstreamOnDeny
// picks (all but Host when unset).
AuthzCheckResponse MapHttpAnswer(const authz::ExtAuthzProvider& provider, const MessageHead& head,
                                 std::string body);

// Reads one HTTP/1.1 answer from the bytes of a connection, bounded by the limits above.
class HttpAnswerReader final : public Http1Sink {
 public:
  enum class State { kMore, kDone, kError };
  // `head_request`: the check was a HEAD (the answer has no body whatever it says).
  explicit HttpAnswerReader(bool head_request);

  // Consumes what it can of `data`. kDone: `head()` and `body()` are the answer and `leftover()`
  // says whether bytes followed it (the connection is then not reusable).
  State Feed(absl::string_view data);
  // The peer closed: ends an answer delimited by the close, or fails.
  State FeedEof();

  State state() const { return state_; }
  const std::string& error() const { return error_; }
  const MessageHead& head() const { return head_; }
  std::string& body() { return body_; }
  bool leftover() const { return leftover_; }
  bool saw_bytes() const { return saw_bytes_; }

  void OnHead(MessageHead head) override;
  void OnBody(absl::string_view data) override;
  void OnMessageComplete() override;

 private:
  void Fail(std::string why);

  Http1Parser parser_;
  State state_ = State::kMore;
  std::string error_;
  MessageHead head_;
  bool have_head_ = false;
  bool complete_ = false;
  bool head_request_ = false;
  bool too_large_ = false;
  std::string body_;
  bool leftover_ = false;
  bool saw_bytes_ = false;
};

// Runs `bytes` (then EOF, when `eof`) through a reader and maps the answer; kError with the reason
// when the bytes are no complete, acceptable answer.
AuthzCheckResponse ReadHttpAnswer(const authz::ExtAuthzProvider& provider, absl::string_view bytes,
                                  bool eof);

}  // namespace ambit::waypoint::internal
