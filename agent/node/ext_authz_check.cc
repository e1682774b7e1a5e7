#include "agent/node/ext_authz_check.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "agent/authz/ext_authz.h"

namespace ambit::node {
namespace {

namespace pb = ::ambit::admin::v1;
using Answer = supervisor::ExtAuthzProbeAnswer;

constexpr char kRbacDenied[] = "RBAC: access denied";

const char* OpName(Answer::HeaderEdit::Op op) {
  switch (op) {
    case Answer::HeaderEdit::Op::kSet:
      return "set";
    case Answer::HeaderEdit::Op::kAppend:
      return "append";
    case Answer::HeaderEdit::Op::kRemove:
      return "remove";
  }
  return "?";
}

std::string EditsText(const std::vector<Answer::HeaderEdit>& edits) {
  std::vector<std::string> parts;
  for (const auto& e : edits) {
    parts.push_back(e.op == Answer::HeaderEdit::Op::kRemove
                        ? absl::StrCat("remove ", e.name)
                        : absl::StrCat(e.op == Answer::HeaderEdit::Op::kAppend ? "append " : "",
                                       e.name, ": ", e.value));
  }
  return absl::StrJoin(parts, ", ");
}

void EditsToProto(const std::vector<Answer::HeaderEdit>& edits,
                  google::protobuf::RepeatedPtrField<pb::CheckHeaderEdit>* out) {
  for (const auto& e : edits) {
    auto* p = out->Add();
    p->set_op(OpName(e.op));
    p->set_name(e.name);
    p->set_value(e.value);
  }
}

const char* OutcomeName(Answer::Outcome o) {
  switch (o) {
    case Answer::Outcome::kAllow:
      return "allow";
    case Answer::Outcome::kDeny:
      return "deny";
    case Answer::Outcome::kError:
      return "error";
  }
  return "error";
}

// What the DENY/ALLOW policies decide once the provider let the request on.
void AfterAllow(const authz::Decision& pending, ExtAuthzCheck* c, std::string* result) {
  c->decision = authz::ResolveExtAuthz(pending, true);
  if (c->decision.allowed) {
    *result = "forward";
    absl::StrAppend(&c->text, "then DENY/ALLOW policy: allow (", c->decision.explanation,
                    "): forwarded\n");
  } else {
    *result = "deny";
    c->http_status = 403;
    c->body = kRbacDenied;
    absl::StrAppend(&c->text, "then DENY/ALLOW policy: deny (", c->decision.explanation,
                    "): HTTP 403 \"", kRbacDenied, "\"\n");
  }
}

}  // namespace

std::string FormatLatency(absl::Duration latency) {
  return absl::StrFormat("%.1f ms", absl::ToDoubleMilliseconds(latency));
}

ExtAuthzCheck FoldExtAuthzAnswer(const authz::Decision& pending,
                                 const absl::StatusOr<supervisor::ExtAuthzProbeAnswer>& answer,
                                 absl::string_view not_asked, pb::CheckExtAuthz* out) {
  ExtAuthzCheck c;
  c.decision = pending;
  const std::string provider = pending.ext_authz ? pending.ext_authz->provider : "?";
  out->set_provider(provider);
  out->set_policy(pending.ext_authz ? pending.ext_authz->policy : pending.policy);
  const std::string if_allowed =
      pending.ext_authz ? absl::StrCat(pending.ext_authz->if_allowed.allowed ? "allow" : "deny",
                                       " (", pending.ext_authz->if_allowed.explanation, ")")
                        : std::string("?");
  std::string why_not(not_asked);
  if (why_not.empty() && !answer.ok()) {
    why_not = absl::StrCat("the waypoint could not be asked: ", answer.status().message());
  }
  if (!why_not.empty()) {
    out->set_asked(false);
    out->set_not_asked(why_not);
    out->set_result("undetermined");
    c.text = absl::StrCat("ext_authz: provider \"", provider, "\" not asked: ", why_not,
                          "\n  the decision is undetermined: it is the provider's; if it allows, "
                          "DENY/ALLOW policy gives ",
                          if_allowed, "\n");
    return c;
  }
  const Answer& a = *answer;
  c.determined = true;
  out->set_asked(true);
  out->set_answer(OutcomeName(a.outcome));
  out->set_status(a.outcome == Answer::Outcome::kDeny ? a.status : 0);
  out->set_detail(a.detail);
  out->set_latency_us(absl::ToInt64Microseconds(a.latency));
  out->set_waypoint_pod(a.waypoint_pod);
  out->set_kind(a.provider_kind);
  out->set_fail_open(a.fail_open);
  out->set_status_on_error(a.status_on_error);
  out->set_unresolved(a.unresolved);
  std::string result;
  if (!a.unresolved.empty()) {
    // The configuration is wrong, not the authorizer down: failOpen does not apply.
    c.decision = authz::ResolveExtAuthz(pending, absl::FailedPreconditionError(a.unresolved));
    c.http_status = 403;
    c.body = kRbacDenied;
    out->set_result("deny");
    c.text = absl::StrCat("ext_authz: provider \"", provider,
                          "\" is not asked by the waypoint: ", a.unresolved, ": HTTP 403 \"",
                          kRbacDenied, "\" (fail closed, whatever failOpen says)\n");
    return c;
  }
  c.text = absl::StrCat("ext_authz: provider \"", provider, "\" answered ", OutcomeName(a.outcome));
  if (a.outcome == Answer::Outcome::kDeny) absl::StrAppend(&c.text, " ", a.status);
  absl::StrAppend(&c.text, " in ", FormatLatency(a.latency));
  switch (a.outcome) {
    case Answer::Outcome::kDeny: {
      std::vector<std::string> headers;
      for (const auto& [name, value] : a.deny_headers) {
        headers.push_back(absl::StrCat(name, ": ", value));
        auto* h = out->add_headers();
        h->set_name(name);
        h->set_value(value);
      }
      out->set_body(a.deny_body);
      if (!headers.empty())
        absl::StrAppend(&c.text, " (headers: ", absl::StrJoin(headers, ", "), ")");
      absl::StrAppend(&c.text, "\n");
      if (!a.deny_body.empty()) {
        absl::StrAppend(&c.text, "  body: \"", a.deny_body, a.deny_body_truncated ? "..." : "",
                        "\"\n");
      }
      c.decision = authz::ResolveExtAuthz(pending, false);
      c.http_status = a.status;
      c.body = a.deny_body;
      result = "deny";
      absl::StrAppend(&c.text, "the waypoint answers HTTP ", a.status, " with the authorizer's ",
                      "headers and body\n");
      break;
    }
    case Answer::Outcome::kAllow: {
      EditsToProto(a.upstream_edits, out->mutable_upstream_edits());
      EditsToProto(a.downstream_edits, out->mutable_downstream_edits());
      std::vector<std::string> parts;
      if (!a.upstream_edits.empty()) {
        parts.push_back(absl::StrCat("upstream: ", EditsText(a.upstream_edits)));
      }
      if (!a.downstream_edits.empty()) {
        parts.push_back(absl::StrCat("response: ", EditsText(a.downstream_edits)));
      }
      if (!parts.empty()) absl::StrAppend(&c.text, " (", absl::StrJoin(parts, "; "), ")");
      absl::StrAppend(&c.text, "\n");
      AfterAllow(pending, &c, &result);
      break;
    }
    case Answer::Outcome::kError:
      absl::StrAppend(&c.text, ": ", a.detail.empty() ? "no detail" : a.detail, "\n");
      if (a.fail_open) {
        absl::StrAppend(&c.text, "failOpen: the request goes on as if the provider allowed\n");
        AfterAllow(pending, &c, &result);
        if (result == "forward") result = "fail_open";
      } else {
        c.decision = authz::ResolveExtAuthz(pending, absl::UnavailableError(a.detail));
        c.http_status = static_cast<int>(a.status_on_error);
        c.body.clear();
        result = "deny";
        absl::StrAppend(&c.text, "statusOnError: HTTP ", a.status_on_error, "\n");
      }
      break;
  }
  out->set_result(result);
  return c;
}

}  // namespace ambit::node
