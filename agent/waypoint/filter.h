#pragma once

// The per-request decision chain. Each downstream request becomes a `RequestContext` (an L7
// `authz::Request` plus what the filters learn about it) and runs through the filters in order;
// the first one that answers ends the chain, otherwise the request is forwarded.
//
// The order is fixed by the proxy's owner: JWT authentication (RequestAuthentication; fills
// `request.auth` and `jwt_principal`, or answers 401) before authorization (which reads them).
// Filters are synchronous: the JWT library validates from keys it already holds, and the policy
// engine does no I/O. External authorization (CUSTOM) will need an asynchronous result; until it
// exists the authorization filter denies every request a CUSTOM policy matches.
//
// Thread-safety: a filter is shared by every connection of a worker and called on that worker's
// thread; implementations keep no per-request state in themselves.

#include <memory>
#include <string>
#include <vector>

#include "agent/authz/request.h"
#include "agent/waypoint/http1_codec.h"

namespace ambit::waypoint {

// One change to a request header on its way upstream.
struct HeaderEdit {
  enum class Op { kSet, kRemove };
  Op op = Op::kSet;
  std::string name;   // lower case
  std::string value;  // kSet only
};

// Applies edits to an outgoing header list in order: kRemove drops every header of that name,
// kSet drops them and appends one with the value.
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
};

// A local answer.
struct LocalReply {
  int status = 403;
  std::string body;
  HeaderList headers;  // extra headers, e.g. www-authenticate
};

struct FilterResult {
  bool proceed = true;
  LocalReply reply;  // when !proceed

  static FilterResult Continue() { return {}; }
  static FilterResult Respond(int status, std::string body, HeaderList headers = {}) {
    return FilterResult{false, LocalReply{status, std::move(body), std::move(headers)}};
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

// Runs the chain; the first non-Continue result wins.
inline FilterResult RunFilters(const FilterChain& chain, RequestContext& ctx) {
  for (const auto& f : chain) {
    FilterResult r = f->OnRequest(ctx);
    if (!r.proceed) return r;
  }
  return FilterResult::Continue();
}

}  // namespace ambit::waypoint
