#include "agent/admin/explain.h"

#include <algorithm>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ambit::admin {
namespace {

std::string LayerDescription(const authz::Workload& target, const authz::Request& request) {
  if (request.layer == authz::Layer::kL4) return "L4 (the node tunnel)";
  if (target.waypoint.has_value()) {
    return absl::StrCat("L7 at waypoint ", target.waypoint->namespace_name, "/",
                        target.waypoint->name);
  }
  return "L7 (an HTTP proxy in front of the workload)";
}

std::string Labels(const std::map<std::string, std::string>& labels) {
  if (labels.empty()) return "(no labels)";
  std::vector<std::string> parts;
  for (const auto& [k, v] : labels) parts.push_back(absl::StrCat(k, "=", v));
  return absl::StrCat("{", absl::StrJoin(parts, ", "), "}");
}

absl::string_view DecisionWord(const authz::Decision& d) {
  if (d.reason == authz::DecisionReason::kExtAuthzRequired) return "ext_authz";
  return d.allowed ? "allow" : "deny";
}

}  // namespace

bool RefusedByStrict(const authz::Request& request, const authz::PeerAuthnDecision& mtls) {
  return request.layer == authz::Layer::kL4 && request.source_principal.empty() &&
         mtls.mode == authz::MtlsMode::kStrict;
}

DecisionSummary Summarize(const authz::Decision& d, const authz::PeerAuthnDecision& mtls,
                          const authz::Request& request) {
  DecisionSummary s;
  s.mtls_mode = std::string(authz::MtlsModeName(mtls.mode));
  if (RefusedByStrict(request, mtls)) {
    s.refused_by_strict = true;
    s.decision = "deny";
    s.reason = absl::StrCat("STRICT mTLS refuses this plaintext client before authorization (",
                            mtls.reason, ")");
    return s;
  }
  const bool ext = d.reason == authz::DecisionReason::kExtAuthzRequired && d.ext_authz;
  s.decision = std::string(DecisionWord(d));
  if (ext) {
    s.provider = d.ext_authz->provider;
    s.after_ext_authz_allow = d.ext_authz->if_allowed.allowed ? "allow" : "deny";
  }
  s.policy = d.policy;
  s.reason = d.explanation;
  return s;
}

std::string ExplainText(const authz::Engine& engine, const authz::Workload& target,
                        const authz::Request& request, const authz::Decision& d,
                        const authz::PeerAuthnDecision& mtls) {
  std::ostringstream out;
  if (RefusedByStrict(request, mtls)) {
    // The effective decision leads; what the policies alone would decide follows.
    out << "decision: deny (STRICT mTLS refuses this plaintext client before authorization)\n"
        << "policies: " << DecisionWord(d) << " (if the client used mTLS)";
  } else {
    out << "decision: " << DecisionWord(d);
  }
  if (d.ext_authz.has_value()) {
    out << " (provider \"" << d.ext_authz->provider
        << "\" decides; if it allows: " << (d.ext_authz->if_allowed.allowed ? "allow" : "deny")
        << ")";
  }
  out << "\npolicy:   " << (d.policy.empty() ? "-" : d.policy) << "\nreason:   " << d.explanation
      << "\nmtls:     " << authz::MtlsModeName(mtls.mode) << " (plaintext "
      << (mtls.mode == authz::MtlsMode::kStrict ? "rejected" : "accepted") << "; " << mtls.reason
      << ")\n";
  if (request.source_principal.empty() && mtls.mode == authz::MtlsMode::kStrict) {
    out << "note:     this plaintext client is refused by STRICT mTLS before authorization\n";
  }

  const authz::Layer layer = request.layer;
  out << "\n"
      << LayerDescription(target, request) << ", workload in namespace " << target.namespace_name
      << " " << Labels(target.labels) << ", port " << request.destination_port << ", from "
      << (request.source_principal.empty() ? "a plaintext client" : request.source_principal)
      << "\n";
  std::vector<const authz::CompiledPolicy*> applicable = engine.ApplicablePolicies(target, layer);
  if (d.trace.empty()) {
    out << "  no authorization policy applies\n";
  }
  // In the order Istio evaluates them: CUSTOM, DENY, ALLOW, then AUDIT (which never decides).
  std::vector<authz::PolicyTrace> trace = d.trace;
  auto rank = [](authz::Action a) {
    switch (a) {
      case authz::Action::kCustom:
        return 0;
      case authz::Action::kDeny:
        return 1;
      case authz::Action::kAllow:
        return 2;
      case authz::Action::kAudit:
        return 3;
    }
    return 4;
  };
  std::stable_sort(trace.begin(), trace.end(),
                   [&rank](const authz::PolicyTrace& a, const authz::PolicyTrace& b) {
                     return rank(a.action) < rank(b.action);
                   });
  for (const authz::PolicyTrace& t : trace) {
    out << "  " << authz::ActionName(t.action) << " " << t.policy << (t.dry_run ? " (dry run)" : "")
        << ": "
        << (t.matched ? absl::StrCat("matched (rule ", t.rule_index, ")") : std::string("no match"))
        << "\n";
    for (const std::string& note : t.notes) out << "      " << note << "\n";
  }

  std::set<std::string> shown;
  for (const authz::CompiledPolicy* p : applicable) shown.insert(p->Key());
  if (layer == authz::Layer::kL4) {
    // The policies an HTTP proxy would apply to this workload that the node tunnel does not.
    authz::Workload plain = target;
    plain.waypoint.reset();
    std::vector<std::string> skipped;
    for (const authz::CompiledPolicy* p : engine.ApplicablePolicies(plain, authz::Layer::kL7)) {
      if (shown.contains(p->Key())) continue;
      skipped.push_back(absl::StrCat(p->Key(), " (", authz::ActionName(p->policy().action), ")"));
      shown.insert(p->Key());
    }
    if (!skipped.empty()) {
      out << "  not enforced at L4: " << absl::StrJoin(skipped, ", ") << "\n";
    }
  }
  for (const authz::DryRunResult& r : d.dry_run) out << "dry run:  " << r.explanation << "\n";
  if (d.dry_run_allowed.has_value()) {
    out << "dry run:  with the dry-run policies enforced the decision would be "
        << (*d.dry_run_allowed ? "allow" : "deny") << "\n";
  }
  for (const authz::PolicyMatch& a : d.audits) {
    out << "audit:    AUDIT policy " << a.policy << " rule " << a.rule_index
        << " matched: the request is logged\n";
  }
  for (const std::string& w : engine.LoadWarnings()) {
    const std::string key = w.substr(0, w.find(':'));
    if (layer == authz::Layer::kL4 && shown.contains(key)) out << "warning:  " << w << "\n";
  }
  return out.str();
}

std::string AuthnText(const authn::AuthnResult& r) {
  std::string out = "authentication (RequestAuthentication):\n";
  if (r.policies.empty()) {
    absl::StrAppend(&out, "  no RequestAuthentication applies: the request is not authenticated\n");
  } else {
    absl::StrAppend(&out, "  applies: ", absl::StrJoin(r.policies, ", "), "\n");
  }
  for (const authn::TokenCheck& c : r.checks) {
    absl::StrAppend(&out, "  token in ", c.location.ToString());
    if (!c.policy.empty()) absl::StrAppend(&out, ", rule ", c.policy, " jwtRules[", c.rule, "]");
    if (!c.issuer.empty()) absl::StrAppend(&out, ", iss ", c.issuer);
    absl::StrAppend(&out, ": ",
                    c.status == authn::JwtStatus::kOk ? "valid" : authn::StatusText(c.status));
    if (!c.detail.empty()) absl::StrAppend(&out, " (", c.detail, ")");
    absl::StrAppend(&out, "\n");
  }
  if (r.allowed) {
    absl::StrAppend(&out, "  result: allow, ", r.reason, "\n");
    for (const authn::HeaderMutation& m : r.header_mutations) {
      absl::StrAppend(
          &out,
          "  upstream header: ", m.op == authn::HeaderMutation::Op::kRemove ? "remove " : "set ",
          m.name, m.op == authn::HeaderMutation::Op::kSet ? absl::StrCat(": ", m.value) : "", "\n");
    }
  } else {
    absl::StrAppend(&out, "  result: reject, HTTP ", r.http_status, " \"", r.body, "\"\n",
                    "  www-authenticate: ", r.www_authenticate, "\n", "  why: ", r.reason, "\n");
  }
  return out;
}

const authn::TokenCheck* DecidingTokenCheck(const authn::AuthnResult& r) {
  for (const authn::TokenCheck& c : r.checks) {
    if ((c.status == authn::JwtStatus::kOk) == r.allowed) return &c;
  }
  return r.checks.empty() ? nullptr : &r.checks.front();
}

}  // namespace ambit::admin
