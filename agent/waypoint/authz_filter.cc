#include "agent/waypoint/authz_filter.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/common/log.h"

namespace ambit::waypoint {
namespace {

constexpr const char* kLog = "waypoint";

// A status the waypoint can answer with; anything else (a misconfigured statusOnError) is 403.
int ReplyStatus(int status) { return status >= 200 && status <= 599 ? status : 403; }

AuthzCheckRequest CheckRequestFor(const RequestContext& ctx, const std::string& local_principal,
                                  bool with_body) {
  const authz::Request& req = ctx.request;
  AuthzCheckRequest check;
  check.method = req.method;
  check.path = req.path;
  check.host = req.host;
  for (const auto& [name, value] : req.headers.entries()) check.headers.emplace_back(name, value);
  if (req.source_ip) check.source = SocketAddress{*req.source_ip, 0};
  if (req.destination_ip)
    check.destination = SocketAddress{*req.destination_ip, req.destination_port};
  check.source_principal = req.source_principal;
  check.destination_principal = local_principal;
  if (const std::string* id = req.headers.Find("x-request-id")) check.request_id = *id;
  check.time = absl::Now();
  if (with_body) {
    check.body = ctx.body;
    check.body_truncated = ctx.body_truncated;
  }
  return check;
}

}  // namespace

FilterResult AuthzFilter::OnRequest(RequestContext& ctx) {
  authz::Decision d = engine_->Evaluate(target_, ctx.request);
  ctx.policy = d.policy;
  if (d.reason == authz::DecisionReason::kExtAuthzRequired) return AskAuthorizer(std::move(d), ctx);
  if (d.reason == authz::DecisionReason::kBadRequest) {
    ctx.details = "bad_request";
    return FilterResult::Respond(400, "Bad Request");
  }
  if (!d.allowed) {
    ctx.details = "rbac_access_denied";
    AMBIT_LOG(kLog, Debug) << "denied: " << d.explanation;
    return FilterResult::Respond(403, kRbacDeniedBody);
  }
  return FilterResult::Continue();
}

FilterResult AuthzFilter::AskAuthorizer(authz::Decision d, RequestContext& ctx) {
  const std::string provider = d.ext_authz ? d.ext_authz->provider : std::string("?");
  AuthorizerClient* client =
      d.ext_authz && authorizers_ ? authorizers_->Find(d.ext_authz->provider) : nullptr;
  std::string missing;
  if (client == nullptr) {
    missing = "no client for this provider in the waypoint's configuration";
  } else if (!client->provider().unresolved.empty()) {
    missing = client->provider().unresolved;
  }
  if (!missing.empty()) {
    ctx.details = "ext_authz_unavailable";
    AMBIT_LOG(kLog, Warning) << "denied " << ctx.request.method << " " << ctx.request.host
                             << ctx.request.path << ": CUSTOM policy " << d.policy
                             << " requires external authorization by provider \"" << provider
                             << "\", which cannot be asked (" << missing << "); fail closed";
    return FilterResult::Respond(403, kRbacDeniedBody);
  }
  const authz::ExtAuthzProvider& p = client->provider();
  Pending pending;
  if (p.include_request_body) {
    pending.body = BodyWanted{p.include_request_body->max_request_bytes,
                              p.include_request_body->allow_partial_message};
  }
  const bool with_body = pending.body.has_value();
  // The set keeps the client alive while a check is out; the filter itself may be gone by then.
  // `start` runs at most once (filter.h): what it holds moves on to the answer's callback.
  pending.start = [decision = std::move(d), client, authorizers = authorizers_, with_body,
                   local_principal = local_principal_, metrics = metrics_](
                      RequestContext& c, std::function<void(FilterResult)> done) mutable {
    RequestContext* rc = &c;  // destroying the handle first cancels `done`: see filter.h
    return client->Check(
        CheckRequestFor(c, local_principal, with_body),
        [decision = std::move(decision), client, authorizers = std::move(authorizers), rc, metrics,
         done = std::move(done)](AuthzCheckResponse r) {
          done(OnAnswer(decision, client->provider(), std::move(r), *rc, metrics));
        });
  };
  return FilterResult::Wait(std::move(pending));
}

FilterResult AuthzFilter::OnAnswer(const authz::Decision& d, const authz::ExtAuthzProvider& p,
                                   AuthzCheckResponse r, RequestContext& ctx,
                                   HttpMetrics* metrics) {
  using Outcome = AuthzCheckResponse::Outcome;
  const int64_t ms = absl::ToInt64Milliseconds(r.latency);
  const double ms_exact = absl::ToDoubleMilliseconds(r.latency);
  const char* result = r.outcome == Outcome::kAllow  ? "allow"
                       : r.outcome == Outcome::kDeny ? "deny"
                       : p.fail_open                 ? "failure_mode_allowed"
                                                     : "error";
  ctx.ext_authz = absl::StrCat(p.name, ":", result, ":", ms);
  if (metrics != nullptr) metrics->RecordExtAuthz(p.name, result, ms_exact);

  if (r.outcome == Outcome::kDeny) {
    const authz::Decision denied = authz::ResolveExtAuthz(d, false);
    ctx.policy = denied.policy;
    ctx.details = "ext_authz_denied";
    AMBIT_LOG(kLog, Debug) << denied.explanation << ": " << r.detail;
    return FilterResult::Respond(ReplyStatus(r.status), std::move(r.deny_body),
                                 std::move(r.deny_headers));
  }
  if (r.outcome == Outcome::kError && !p.fail_open) {
    const authz::Decision failed = authz::ResolveExtAuthz(d, absl::UnavailableError(r.detail));
    ctx.policy = failed.policy;
    ctx.details = "ext_authz_error";
    AMBIT_LOG(kLog, Warning) << failed.explanation << "; answering " << p.status_on_error;
    return FilterResult::Respond(ReplyStatus(static_cast<int>(p.status_on_error)), "");
  }
  if (r.outcome == Outcome::kError) {
    AMBIT_LOG(kLog, Warning) << "ext_authz provider \"" << p.name << "\" failed (" << r.detail
                             << "); failOpen lets the request on to the DENY and ALLOW policies";
  }
  // Allowed by the provider (or failOpen): the DENY and ALLOW policies have the last word.
  const authz::Decision after = authz::ResolveExtAuthz(d, true);
  ctx.policy = after.policy;
  if (!after.allowed) {
    ctx.details = "rbac_access_denied";
    AMBIT_LOG(kLog, Debug) << "denied: " << after.explanation;
    return FilterResult::Respond(403, kRbacDeniedBody);
  }
  for (HeaderEdit& e : r.upstream_edits) ctx.upstream_header_edits.push_back(std::move(e));
  for (HeaderEdit& e : r.downstream_edits) ctx.downstream_header_edits.push_back(std::move(e));
  return FilterResult::Continue();
}

}  // namespace ambit::waypoint
