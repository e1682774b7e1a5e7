#pragma once

// The per-request decision chain. Each downstream request becomes a `RequestContext` (an L7
// `authz::Request` plus what the filters learn about it) and runs through the filters in order;
// the first one that answers ends the chain, otherwise the request is forwarded.
//
// The order is fixed by the proxy's owner: JWT authentication (RequestAuthentication; fills
// `request.auth` and `jwt_principal`, or answers 401) before authorization (which reads them).
// A filter answers at once (JWT authentication and the policy engine do no I/O) or asks for time:
// external authorization (CUSTOM) returns `FilterResult::Pending`, optionally asking for the
// request body first. The handler then holds the request (nothing goes upstream), collects the
// body as asked (at most `BodyWanted::max_bytes`, reading no further while it waits), calls
// `Pending::start` once with the context (its `body` filled), and on `done` either answers
// locally or runs the rest of the chain and forwards the request, then the body it held, then
// the rest of the body as it arrives. Destroying the `AsyncCheck` handle `start` returned (the
// stream ended first) cancels the check: `done` is never called after that.
//
// Thread-safety: a filter is shared by every connection of a worker and called on that worker's
// thread; implementations keep no per-request state in themselves.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/authz/request.h"
#include "agent/waypoint/http1_codec.h"

namespace ambit::waypoint {

// One change to a request header on its way upstream.
struct HeaderEdit {
  enum class Op { kSet, kAppend, kRemove };
  Op op = Op::kSet;
  std::string name;   // lower case
  std::string value;  // kSet only
};

// Applies edits to an outgoing header list in order: kRemove drops every header of that name,
// kSet drops them and appends one with the value, kAppend adds one more.
void ApplyHeaderEdits(const std::vector<HeaderEdit>& edits, HeaderList& headers);

struct RequestContext {
  authz::Request request;  // layer kL7, filled by the codec before the chain runs
  // Set by the authentication filter for the access log: "<iss>/<sub>" of a valid JWT.
  std::string jwt_principal;
  // Set by whichever filter decided: "namespace/name" of the deciding policy, or empty.
  std::string policy;
  // Why the request was answered locally ("rbac_access_denied", "ext_authz_unavailable"...),
  // for the access log's response flags and details.
  std::string details;
  // Header changes for the forwarded request, applied in order when the request goes upstream
  // (after the chain allowed it): Envoy's filters edit the request before the router sends it.
  // Names are lower case; kSet replaces every header of that name. The filters read
  // `request.headers` as the client sent them.
  std::vector<HeaderEdit> upstream_header_edits;
  // Header changes for the response sent to the client, applied to the upstream's response head
  // (ext_authz headersToDownstreamOnAllow). A local answer carries its own headers instead.
  std::vector<HeaderEdit> downstream_header_edits;
  // The request body as collected for a pending filter that asked for it (BodyWanted), and
  // whether the body went on beyond what was collected.
  std::string body;
  bool body_truncated = false;
  // Set by the authorization filter when an external authorizer was asked, for the access log:
  // `<provider>:<allow|deny|error|failure_mode_allowed>:<milliseconds>`.
  std::string ext_authz;
};

// A local answer.
struct LocalReply {
  int status = 403;
  std::string body;
  HeaderList headers;  // extra headers, e.g. www-authenticate
};

struct FilterResult;

// An outstanding asynchronous check; destroying it cancels (no `done` after that).
class AsyncCheck {
 public:
  virtual ~AsyncCheck() = default;
};

// What a pending filter wants before it starts: the request body, up to `max_bytes`. With
// `allow_partial`, a longer body is cut there (`body_truncated`); without it, a body longer than
// `max_bytes` is answered 413 Payload Too Large and the check never starts (Envoy's ext_authz
// with_request_body). A request without a body starts at once.
struct BodyWanted {
  uint32_t max_bytes = 0;
  bool allow_partial = false;
};

// A decision that needs time. `start` is called at most once, on the handler's loop thread, with
// the request's context; it returns the cancel handle and calls `done` exactly once on the same
// thread (never from inside `start`), unless cancelled. `done` gets Continue (run the rest of the
// chain) or Respond.
struct Pending {
  std::optional<BodyWanted> body;
  std::function<std::unique_ptr<AsyncCheck>(RequestContext& ctx,
                                            std::function<void(FilterResult)> done)>
      start;
};

struct FilterResult {
  bool proceed = true;
  LocalReply reply;                  // when !proceed
  std::shared_ptr<Pending> pending;  // set: wait (proceed is ignored)

  static FilterResult Continue() { return {}; }
  static FilterResult Respond(int status, std::string body, HeaderList headers = {}) {
    return FilterResult{false, LocalReply{status, std::move(body), std::move(headers)}, nullptr};
  }
  static FilterResult Wait(Pending pending) {
    return FilterResult{true, {}, std::make_shared<Pending>(std::move(pending))};
  }
};

class RequestFilter {
 public:
  virtual ~RequestFilter() = default;
  // Short name for logs ("jwt_authn", "rbac").
  virtual const char* name() const = 0;
  virtual FilterResult OnRequest(RequestContext& ctx) = 0;
};

using FilterChain = std::vector<std::shared_ptr<RequestFilter>>;

// Runs the chain from filter `*next` on; the first result that answers or waits wins. `*next` is
// left at the filter after the one that answered or waits, so a handler resumes a pending chain
// (after `done` said Continue) by calling RunFilters again with the same index.
inline FilterResult RunFilters(const FilterChain& chain, RequestContext& ctx, size_t* next) {
  while (*next < chain.size()) {
    FilterResult r = chain[(*next)++]->OnRequest(ctx);
    if (!r.proceed || r.pending) return r;
  }
  return FilterResult::Continue();
}

}  // namespace ambit::waypoint
