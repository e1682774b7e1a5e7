#include "agent/authz/engine.h"

#include <algorithm>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "agent/authz/internal/compiled.h"

namespace ambit::authz {
namespace {

using internal::Attr;
using internal::Clause;
using internal::CompiledRule;
using internal::Field;
using internal::StringPattern;

// The request's attributes as policies see them, computed once per evaluation.
struct View {
  View(const Request& r, Layer l) : req(r), layer(l) {}

  const Request& req;
  Layer layer;
  bool has_principal = false;
  std::string principal;  // without "spiffe://"
  std::optional<SpiffeId> peer;
  std::optional<IpAddress> remote_ip;
  std::optional<std::string> path;  // normalized (L7)
  bool has_jwt = false;
  std::string iss;
  std::string sub;
  std::vector<std::string> audiences;
  std::optional<std::string> presenter;
};

View MakeView(const Request& r, std::optional<std::string> path) {
  View v(r, r.layer);
  absl::string_view principal = r.source_principal;
  // Istio matches principals without the spiffe:// scheme; anything else never matches.
  if (absl::ConsumePrefix(&principal, "spiffe://") && !principal.empty()) {
    v.has_principal = true;
    v.principal = std::string(principal);
  }
  v.peer = ParseSpiffeId(r.source_principal);
  v.remote_ip = r.remote_ip.has_value() ? r.remote_ip : r.source_ip;
  v.path = std::move(path);
  if (r.auth.has_value()) {
    const JwtAuth& auth = *r.auth;
    v.has_jwt = true;
    const ClaimValue* iss = auth.claims.Find("iss");
    const ClaimValue* sub = auth.claims.Find("sub");
    if (iss != nullptr && iss->AsString() != nullptr && sub != nullptr &&
        sub->AsString() != nullptr) {
      v.iss = *iss->AsString();
      v.sub = *sub->AsString();
    } else {
      size_t slash = auth.principal.rfind('/');
      v.iss = auth.principal.substr(0, slash);
      v.sub = slash == std::string::npos ? "" : auth.principal.substr(slash + 1);
    }
    v.audiences = auth.audiences;
    if (v.audiences.empty()) {
      if (const ClaimValue* aud = auth.claims.Find("aud"); aud != nullptr) {
        if (aud->AsString() != nullptr) v.audiences.push_back(*aud->AsString());
        if (aud->AsList() != nullptr) {
          for (const ClaimValue& a : *aud->AsList()) {
            if (a.AsString() != nullptr) v.audiences.push_back(*a.AsString());
          }
        }
      }
    }
    v.presenter = auth.presenter;
    if (!v.presenter.has_value()) {
      const ClaimValue* azp = auth.claims.Find("azp");
      if (azp != nullptr && azp->AsString() != nullptr) v.presenter = *azp->AsString();
    }
  }
  return v;
}

std::string Quote(absl::string_view s) { return absl::StrCat("\"", s, "\""); }

std::string QuoteList(const std::vector<std::string>& values) {
  return absl::StrCat(
      "[",
      absl::StrJoin(values, ", ",
                    [](std::string* out, const std::string& s) { out->append(Quote(s)); }),
      "]");
}

bool AnyString(const std::vector<StringPattern>& patterns, absl::string_view value,
               bool ignore_case = false) {
  for (const StringPattern& p : patterns) {
    if (p.Matches(value, ignore_case)) return true;
  }
  return false;
}

bool AnyCidr(const std::vector<Cidr>& cidrs, const std::optional<IpAddress>& ip) {
  if (!ip.has_value()) return false;
  for (const Cidr& c : cidrs) {
    if (c.Contains(*ip)) return true;
  }
  return false;
}

// A header-style match: "*" means present, even with an empty value.
bool AnyHeaderValue(const std::vector<StringPattern>& patterns, const std::string* value,
                    bool ignore_case) {
  if (value == nullptr) return false;
  for (const StringPattern& p : patterns) {
    if (p.kind == StringPattern::Kind::kPresence || p.Matches(*value, ignore_case)) return true;
  }
  return false;
}

// The claim at `path`, walking nested objects; null when absent.
const ClaimValue* FindClaim(const ClaimValue& claims, const std::vector<std::string>& path) {
  const ClaimValue* v = &claims;
  for (const std::string& key : path) {
    v = v->Find(key);
    if (v == nullptr) return nullptr;
  }
  return v;
}

// Strings match; lists match when any string element does; anything else never matches.
bool ClaimMatches(const std::vector<StringPattern>& patterns, const ClaimValue* claim) {
  if (claim == nullptr) return false;
  if (const std::string* s = claim->AsString(); s != nullptr) return AnyString(patterns, *s);
  if (const ClaimValue::List* list = claim->AsList(); list != nullptr) {
    for (const ClaimValue& item : *list) {
      if (item.AsString() != nullptr && AnyString(patterns, *item.AsString())) return true;
    }
  }
  return false;
}

// Whether the request's attribute matches one of the field's values (ignoring negation).
bool AnyValueMatches(const Field& f, const View& v) {
  const Request& r = v.req;
  switch (f.attr) {
    case Attr::kSourcePrincipal:
      return v.has_principal && AnyString(f.strings, v.principal);
    case Attr::kSourceNamespace:
      return v.peer.has_value() && AnyString(f.strings, v.peer->namespace_name);
    case Attr::kSourceServiceAccount:
      if (!v.peer.has_value()) return false;
      for (const auto& sa : f.service_accounts) {
        if (sa.namespace_name == v.peer->namespace_name && sa.name == v.peer->service_account) {
          return true;
        }
      }
      return false;
    case Attr::kSourceIp:
      return AnyCidr(f.cidrs, r.source_ip);
    case Attr::kRemoteIp:
      return AnyCidr(f.cidrs, v.remote_ip);
    case Attr::kDestinationIp:
      return AnyCidr(f.cidrs, r.destination_ip);
    case Attr::kDestinationPort:
      return std::find(f.ports.begin(), f.ports.end(), r.destination_port) != f.ports.end();
    case Attr::kSni:
      return AnyString(f.strings, r.sni);
    case Attr::kRequestPrincipal:
      if (!v.has_jwt) return false;
      for (const auto& rp : f.request_principals) {
        if (rp.iss.Matches(v.iss) && rp.sub.Matches(v.sub)) return true;
      }
      return false;
    case Attr::kRequestAudiences:
      if (!v.has_jwt) return false;
      for (const std::string& aud : v.audiences) {
        if (AnyString(f.strings, aud)) return true;
      }
      return false;
    case Attr::kRequestPresenter:
      return v.has_jwt && v.presenter.has_value() && AnyString(f.strings, *v.presenter);
    case Attr::kRequestClaim:
      return v.has_jwt && ClaimMatches(f.strings, FindClaim(r.auth->claims, f.claim_path));
    case Attr::kRequestHeader:
      return AnyHeaderValue(f.strings, r.headers.Find(f.header), false);
    case Attr::kHost:
      return !r.host.empty() && AnyHeaderValue(f.strings, &r.host, true);
    case Attr::kMethod:
      return !r.method.empty() && AnyHeaderValue(f.strings, &r.method, false);
    case Attr::kPath:
      if (!v.path.has_value()) return false;
      for (const auto& p : f.paths) {
        if (p.is_template ? p.path_template.Matches(*v.path) : p.pattern.Matches(*v.path)) {
          return true;
        }
      }
      return false;
  }
  return false;
}

std::string OrUnknown(const std::optional<IpAddress>& ip) {
  return ip.has_value() ? ip->ToString() : "(unknown)";
}

// The request's value of the field's attribute, for explanations.
std::string DescribeActual(const Field& f, const View& v) {
  const Request& r = v.req;
  switch (f.attr) {
    case Attr::kSourcePrincipal:
      if (v.has_principal) return absl::StrCat(f.label, " ", Quote(v.principal));
      if (r.source_principal.empty()) return absl::StrCat(f.label, " (none: plaintext)");
      return absl::StrCat(f.label, " ", Quote(r.source_principal), " (not a spiffe:// ID)");
    case Attr::kSourceNamespace:
      if (v.peer.has_value()) return absl::StrCat(f.label, " ", Quote(v.peer->namespace_name));
      return absl::StrCat(
          f.label, r.source_principal.empty() ? " (none: plaintext)" : " (none: not a SPIFFE ID)");
    case Attr::kSourceServiceAccount:
      if (v.peer.has_value()) {
        return absl::StrCat(
            f.label, " ",
            Quote(absl::StrCat(v.peer->namespace_name, "/", v.peer->service_account)));
      }
      return absl::StrCat(
          f.label, r.source_principal.empty() ? " (none: plaintext)" : " (none: not a SPIFFE ID)");
    case Attr::kSourceIp:
      return absl::StrCat(f.label, " ", OrUnknown(r.source_ip));
    case Attr::kRemoteIp:
      return absl::StrCat(f.label, " ", OrUnknown(v.remote_ip));
    case Attr::kDestinationIp:
      return absl::StrCat(f.label, " ", OrUnknown(r.destination_ip));
    case Attr::kDestinationPort:
      return absl::StrCat(f.label, " ", r.destination_port);
    case Attr::kSni:
      return r.sni.empty() ? absl::StrCat(f.label, " (none)")
                           : absl::StrCat(f.label, " ", Quote(r.sni));
    case Attr::kRequestPrincipal:
      return v.has_jwt ? absl::StrCat(f.label, " ", Quote(absl::StrCat(v.iss, "/", v.sub)))
                       : absl::StrCat(f.label, " (none: no JWT)");
    case Attr::kRequestAudiences:
      return v.has_jwt ? absl::StrCat(f.label, " ", QuoteList(v.audiences))
                       : absl::StrCat(f.label, " (none: no JWT)");
    case Attr::kRequestPresenter:
      if (!v.has_jwt) return absl::StrCat(f.label, " (none: no JWT)");
      return v.presenter.has_value() ? absl::StrCat(f.label, " ", Quote(*v.presenter))
                                     : absl::StrCat(f.label, " (absent)");
    case Attr::kRequestClaim: {
      if (!v.has_jwt) return absl::StrCat(f.label, " (none: no JWT)");
      const ClaimValue* c = FindClaim(r.auth->claims, f.claim_path);
      return absl::StrCat(f.label, " ", c == nullptr ? "(absent)" : c->ToString());
    }
    case Attr::kRequestHeader: {
      const std::string* h = r.headers.Find(f.header);
      return absl::StrCat(f.label, " ", h == nullptr ? "(absent)" : Quote(*h));
    }
    case Attr::kHost:
      return absl::StrCat(f.label, " ", Quote(r.host));
    case Attr::kMethod:
      return absl::StrCat(f.label, " ", Quote(r.method));
    case Attr::kPath:
      return absl::StrCat(f.label, " ", v.path.has_value() ? Quote(*v.path) : "(none)");
  }
  return f.label;
}

bool FieldMatches(const Field& f, const View& v, std::string* why) {
  bool any = AnyValueMatches(f, v);
  bool ok = f.negated ? !any : any;
  if (why != nullptr) {
    const char* verb = f.negated ? (ok ? " matched none of " : " matched ")
                                 : (ok ? " matched " : " did not match ");
    *why = absl::StrCat(DescribeActual(f, v), verb, f.name, " ", QuoteList(f.raw));
  }
  return ok;
}

// On success `why` lists what matched; on failure it says what did not.
bool ClauseMatches(const Clause& c, const View& v, std::string* why) {
  const bool l4 = v.layer == Layer::kL4;
  if (l4 && !c.has_l4_field) {
    if (why != nullptr) {
      *why = absl::StrCat(c.path, " uses only HTTP attributes (",
                          absl::StrJoin(c.http_fields, ", "), "), so it never matches at L4");
    }
    return false;
  }
  std::vector<std::string> parts;
  for (const Field& f : c.fields) {
    if (l4 && !internal::IsL4Attr(f.attr)) continue;
    std::string d;
    if (!FieldMatches(f, v, why != nullptr ? &d : nullptr)) {
      if (why != nullptr) *why = absl::StrCat(c.path, ": ", d);
      return false;
    }
    if (why != nullptr) parts.push_back(std::move(d));
  }
  if (why != nullptr) *why = absl::StrJoin(parts, ", ");
  return true;
}

bool RuleMatches(const CompiledRule& rule, Action action, const View& v, std::string* why) {
  const bool l4 = v.layer == Layer::kL4;
  if (l4 && action == Action::kAllow && rule.uses_http) {
    if (why != nullptr) {
      *why = absl::StrCat("it uses HTTP attributes (", absl::StrJoin(rule.http_fields, ", "),
                          "), so the node tunnel (L4) ignores it");
    }
    return false;
  }
  if (rule.from.empty() && rule.to.empty() && rule.when.empty()) {
    if (why != nullptr) *why = "the rule is empty and matches every request";
    return true;
  }
  std::vector<std::string> parts;
  auto one_of = [&](const std::vector<Clause>& clauses, absl::string_view what) {
    if (clauses.empty()) return true;
    std::vector<std::string> failures;
    for (const Clause& c : clauses) {
      std::string d;
      if (ClauseMatches(c, v, why != nullptr ? &d : nullptr)) {
        if (why != nullptr) parts.push_back(std::move(d));
        return true;
      }
      if (why != nullptr) failures.push_back(std::move(d));
    }
    if (why != nullptr) {
      *why = absl::StrCat("no ", what, " entry matched (", absl::StrJoin(failures, "; "), ")");
    }
    return false;
  };
  if (!one_of(rule.from, "from") || !one_of(rule.to, "to")) return false;
  for (const Clause& c : rule.when) {
    std::string d;
    if (!ClauseMatches(c, v, why != nullptr ? &d : nullptr)) {
      if (why != nullptr) *why = std::move(d);
      return false;
    }
    if (why != nullptr) parts.push_back(std::move(d));
  }
  if (why != nullptr) {
    *why = absl::StrJoin(parts, ", ");
    if (l4 && rule.uses_http) {
      absl::StrAppend(
          why, " (at L4 its HTTP fields are ignored: ", absl::StrJoin(rule.http_fields, ", "), ")");
    }
  }
  return true;
}

struct PolicyResult {
  bool matched = false;
  int rule_index = -1;
  std::string why;                 // explain: what matched, or why nothing did
  std::vector<std::string> notes;  // explain: one line per rule evaluated
};

PolicyResult MatchPolicy(const CompiledPolicy& p, const View& v, bool explain) {
  PolicyResult out;
  const internal::CompiledPolicyData& data = p.data();
  if (data.rules.empty()) {
    if (explain) {
      out.why = "it has no rules, so it never matches";
      out.notes.push_back(out.why);
    }
    return out;
  }
  for (size_t i = 0; i < data.rules.size(); ++i) {
    std::string why;
    bool m = RuleMatches(data.rules[i], data.policy.action, v, explain ? &why : nullptr);
    if (explain)
      out.notes.push_back(absl::StrCat("rule ", i, m ? " matched: " : " no match: ", why));
    if (m) {
      out.matched = true;
      out.rule_index = static_cast<int>(i);
      out.why = std::move(why);
      return out;
    }
  }
  if (explain) out.why = absl::StrJoin(out.notes, "; ");
  return out;
}

bool HasHttpRules(const CompiledPolicy& p) {
  for (const CompiledRule& r : p.data().rules) {
    if (r.uses_http) return true;
  }
  return false;
}

// DENY, then ALLOW, over `policies` (already in order).
Verdict DenyThenAllow(const std::vector<const CompiledPolicy*>& policies, const View& v) {
  for (const CompiledPolicy* p : policies) {
    if (p->policy().action != Action::kDeny) continue;
    if (!MatchPolicy(*p, v, false).matched) continue;
    PolicyResult r = MatchPolicy(*p, v, true);
    return {false, DecisionReason::kDenyMatched, p->Key(), r.rule_index,
            absl::StrCat("denied by DENY policy ", p->Key(), " rule ", r.rule_index, ": ", r.why)};
  }
  int allow_count = 0;
  int deny_count = 0;
  bool l4_dropped = false;
  for (const CompiledPolicy* p : policies) {
    if (p->policy().action == Action::kDeny) ++deny_count;
    if (p->policy().action != Action::kAllow) continue;
    ++allow_count;
    if (v.layer == Layer::kL4 && HasHttpRules(*p)) l4_dropped = true;
    if (!MatchPolicy(*p, v, false).matched) continue;
    PolicyResult r = MatchPolicy(*p, v, true);
    return {
        true, DecisionReason::kAllowMatched, p->Key(), r.rule_index,
        absl::StrCat("allowed by ALLOW policy ", p->Key(), " rule ", r.rule_index, ": ", r.why)};
  }
  if (allow_count == 0) {
    const char* why = policies.empty() ? "allowed: no authorization policy applies to this workload"
                      : deny_count == 0
                          ? "allowed: no ALLOW or DENY policy applies to this workload"
                          : "allowed: no DENY policy matched and no ALLOW policy applies to this "
                            "workload";
    return {true, DecisionReason::kDefaultAllow, "", -1, why};
  }
  return {
      false, DecisionReason::kNoAllowMatched, "", -1,
      absl::StrCat("denied: ", allow_count,
                   allow_count == 1 ? " ALLOW policy applies" : " ALLOW policies apply",
                   " to this workload and none matched",
                   l4_dropped ? " (at L4, ALLOW rules that use HTTP attributes are ignored)" : "")};
}

std::string TargetKey(absl::string_view ns, absl::string_view kind, absl::string_view name) {
  return absl::StrCat(ns, "/", kind, "/", name);
}

bool SelectorMatches(const Policy& p, const Workload& w) {
  if (!p.selector.has_value()) return true;
  for (const auto& [key, value] : *p.selector) {
    auto it = w.labels.find(key);
    if (it == w.labels.end() || it->second != value) return false;
  }
  return true;
}

}  // namespace

absl::string_view DecisionReasonName(DecisionReason reason) {
  switch (reason) {
    case DecisionReason::kDefaultAllow:
      return "default_allow";
    case DecisionReason::kAllowMatched:
      return "allow_matched";
    case DecisionReason::kDenyMatched:
      return "deny_matched";
    case DecisionReason::kNoAllowMatched:
      return "no_allow_matched";
    case DecisionReason::kExtAuthzRequired:
      return "ext_authz_required";
    case DecisionReason::kExtAuthzDenied:
      return "ext_authz_denied";
    case DecisionReason::kBadRequest:
      return "bad_request";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::vector<CompiledPolicy> policies,
                                                       EngineOptions options) {
  std::sort(policies.begin(), policies.end(), [](const CompiledPolicy& a, const CompiledPolicy& b) {
    const Policy& x = a.policy();
    const Policy& y = b.policy();
    return std::tie(x.namespace_name, x.name) < std::tie(y.namespace_name, y.name);
  });
  for (size_t i = 1; i < policies.size(); ++i) {
    if (policies[i].Key() == policies[i - 1].Key()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AuthorizationPolicy ", policies[i].Key(), " is defined twice (",
          policies[i - 1].policy().source_file, ", ", policies[i].policy().source_file, ")"));
    }
  }
  return std::unique_ptr<Engine>(new Engine(std::move(policies), std::move(options)));
}

Engine::Engine(std::vector<CompiledPolicy> policies, EngineOptions options)
    : options_(std::move(options)), policies_(std::move(policies)) {
  for (size_t i = 0; i < policies_.size(); ++i) {
    const Policy& p = policies_[i].policy();
    const std::string key = p.Key();
    if (p.target_refs.empty()) {
      by_namespace_[p.namespace_name].push_back(i);
    } else {
      for (const TargetRef& ref : p.target_refs) {
        if (ref.kind == "GatewayClass" && p.namespace_name != options_.root_namespace) {
          warnings_.push_back(absl::StrCat(key,
                                           ": a GatewayClass targetRef only applies from the "
                                           "root namespace ",
                                           options_.root_namespace, "; it is ignored"));
          continue;
        }
        by_target_[TargetKey(p.namespace_name, ref.kind, ref.name)].push_back(i);
      }
      continue;  // not for the node tunnel
    }
    if (p.action == Action::kCustom || p.action == Action::kAudit) {
      warnings_.push_back(absl::StrCat(key, ": ", ActionName(p.action),
                                       " policies are not enforced by the node tunnel (L4); "
                                       "target a waypoint with targetRefs to enforce it at L7"));
      continue;
    }
    std::vector<std::string> http_rules;
    const auto& rules = policies_[i].data().rules;
    for (size_t r = 0; r < rules.size(); ++r) {
      if (!rules[r].uses_http) continue;
      http_rules.push_back(
          absl::StrCat("rules[", r, "] (", absl::StrJoin(rules[r].http_fields, ", "), ")"));
    }
    if (http_rules.empty()) continue;
    if (p.action == Action::kAllow) {
      warnings_.push_back(absl::StrCat(
          key,
          ": the node tunnel (L4) cannot see HTTP attributes; these ALLOW rules are dropped "
          "there and never allow a connection: ",
          absl::StrJoin(http_rules, ", ")));
    } else {
      warnings_.push_back(absl::StrCat(
          key,
          ": the node tunnel (L4) cannot see HTTP attributes; these DENY rules are enforced "
          "there with only their L4 fields, and a from/to/when entry made only of HTTP "
          "attributes never matches: ",
          absl::StrJoin(http_rules, ", ")));
    }
  }
  for (auto& [ns, list] : by_target_) {
    std::sort(list.begin(), list.end());
    list.erase(std::unique(list.begin(), list.end()), list.end());
  }
}

std::vector<const CompiledPolicy*> Engine::ApplicablePolicies(const Workload& target,
                                                              Layer layer) const {
  std::vector<size_t> indexes;
  auto add = [&indexes](const std::map<std::string, std::vector<size_t>>& index,
                        const std::string& key) {
    auto it = index.find(key);
    if (it != index.end()) indexes.insert(indexes.end(), it->second.begin(), it->second.end());
  };
  if (layer == Layer::kL7 && target.waypoint.has_value()) {
    const WaypointRef& w = *target.waypoint;
    add(by_target_, TargetKey(w.namespace_name, "Gateway", w.name));
    add(by_target_, TargetKey(options_.root_namespace, "GatewayClass", kWaypointGatewayClass));
    for (const ServiceRef& s : w.services) {
      add(by_target_, TargetKey(s.namespace_name, "Service", s.name));
      add(by_target_, TargetKey(s.namespace_name, "ServiceEntry", s.name));
    }
  } else {
    add(by_namespace_, target.namespace_name);
    if (target.namespace_name != options_.root_namespace) {
      add(by_namespace_, options_.root_namespace);
    }
  }
  std::sort(indexes.begin(), indexes.end());
  indexes.erase(std::unique(indexes.begin(), indexes.end()), indexes.end());

  std::vector<const CompiledPolicy*> out;
  const bool waypoint = layer == Layer::kL7 && target.waypoint.has_value();
  for (size_t i : indexes) {
    const Policy& p = policies_[i].policy();
    if (!waypoint && !SelectorMatches(p, target)) continue;
    if (layer == Layer::kL4 && p.action != Action::kAllow && p.action != Action::kDeny) continue;
    out.push_back(&policies_[i]);
  }
  return out;
}

Decision Engine::Evaluate(const Workload& target, const Request& request) const {
  return Run(target, request, false);
}

Decision Engine::Explain(const Workload& target, const Request& request) const {
  return Run(target, request, true);
}

Decision Engine::Run(const Workload& target, const Request& request, bool trace) const {
  Decision d;
  std::optional<std::string> path;
  if (request.layer == Layer::kL7) {
    absl::StatusOr<std::string> normalized =
        NormalizePath(request.path, options_.path_normalization);
    if (!normalized.ok()) {
      d.allowed = false;
      d.reason = DecisionReason::kBadRequest;
      d.explanation = absl::StrCat("denied: ", normalized.status().message());
      return d;
    }
    path = *std::move(normalized);
  }
  const View v = MakeView(request, std::move(path));

  std::vector<const CompiledPolicy*> applicable = ApplicablePolicies(target, request.layer);
  std::vector<const CompiledPolicy*> enforced;
  bool any_dry_run = false;
  for (const CompiledPolicy* p : applicable) {
    if (p->policy().dry_run) {
      any_dry_run = true;
    } else {
      enforced.push_back(p);
    }
  }

  const Verdict verdict = DenyThenAllow(enforced, v);
  const CompiledPolicy* custom = nullptr;
  for (const CompiledPolicy* p : enforced) {
    if (p->policy().action == Action::kCustom && MatchPolicy(*p, v, false).matched) {
      custom = p;
      break;
    }
  }
  if (custom != nullptr) {
    PolicyResult r = MatchPolicy(*custom, v, true);
    d.allowed = false;
    d.reason = DecisionReason::kExtAuthzRequired;
    d.policy = custom->Key();
    d.rule_index = r.rule_index;
    d.ext_authz =
        ExtAuthzRequirement{custom->policy().provider, custom->Key(), r.rule_index, verdict};
    d.explanation =
        absl::StrCat("CUSTOM policy ", custom->Key(), " rule ", r.rule_index, " matched (", r.why,
                     "): ext_authz provider ", Quote(custom->policy().provider),
                     " decides; if it allows: ", verdict.explanation);
  } else {
    d.allowed = verdict.allowed;
    d.reason = verdict.reason;
    d.policy = verdict.policy;
    d.rule_index = verdict.rule_index;
    d.explanation = verdict.explanation;
  }

  for (const CompiledPolicy* p : enforced) {
    if (p->policy().action != Action::kAudit) continue;
    PolicyResult r = MatchPolicy(*p, v, true);
    if (r.matched) d.audits.push_back({p->Key(), Action::kAudit, r.rule_index, r.why});
  }

  if (any_dry_run) {
    for (const CompiledPolicy* p : applicable) {
      if (!p->policy().dry_run) continue;
      PolicyResult r = MatchPolicy(*p, v, true);
      const Action action = p->policy().action;
      std::string what;
      if (!r.matched) {
        what = absl::StrCat(ActionName(action), " policy ", p->Key(),
                            " (dry run) did not match: ", r.why);
      } else {
        const char* effect = action == Action::kDeny    ? "would deny"
                             : action == Action::kAllow ? "would allow"
                             : action == Action::kAudit ? "would audit"
                                                        : "would call ext_authz";
        what = absl::StrCat(ActionName(action), " policy ", p->Key(), " (dry run) rule ",
                            r.rule_index, " ", effect, ": ", r.why);
      }
      d.dry_run.push_back({p->Key(), action, r.matched, r.rule_index, std::move(what)});
    }
    d.dry_run_allowed = DenyThenAllow(applicable, v).allowed;
  }

  if (trace) {
    for (const CompiledPolicy* p : applicable) {
      PolicyResult r = MatchPolicy(*p, v, true);
      d.trace.push_back({p->Key(), p->policy().action, p->policy().dry_run, r.matched, r.rule_index,
                         std::move(r.notes)});
    }
  }
  return d;
}

}  // namespace ambit::authz
