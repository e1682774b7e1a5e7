#include "agent/authz/engine.h"

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
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

// The peer's namespace and service account, pointing into Request::source_principal.
struct PeerView {
  absl::string_view namespace_name;
  absl::string_view service_account;
};

// ParseSpiffeId (request.h) without allocating: spiffe://<td>/ns/<ns>/sa/<sa>, nothing else.
std::optional<PeerView> ParsePeer(absl::string_view uri) {
  if (!absl::ConsumePrefix(&uri, "spiffe://")) return std::nullopt;
  absl::string_view parts[5];
  size_t n = 0;
  while (true) {
    if (n == 5) return std::nullopt;  // a sixth part follows
    const size_t slash = uri.find('/');
    if (slash == absl::string_view::npos) {
      parts[n++] = uri;
      break;
    }
    parts[n++] = uri.substr(0, slash);
    uri.remove_prefix(slash + 1);
  }
  if (n != 5 || parts[1] != "ns" || parts[3] != "sa" || parts[0].empty() || parts[2].empty() ||
      parts[4].empty()) {
    return std::nullopt;
  }
  return PeerView{parts[2], parts[4]};
}

// The request's attributes as policies see them, computed once per evaluation. Views into the
// request: a decision on a connection copies none of its strings.
struct View {
  View(const Request& r, Layer l) : req(r), layer(l) {}

  const Request& req;
  Layer layer;
  bool has_principal = false;
  absl::string_view principal;  // without "spiffe://"
  // The principal up to its first '/': Istio's trust-domain matchers need that '/'.
  std::optional<absl::string_view> trust_domain;
  std::optional<PeerView> peer;
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
    v.principal = principal;
    if (size_t slash = principal.find('/'); slash != absl::string_view::npos) {
      v.trust_domain = principal.substr(0, slash);
    }
  }
  v.peer = ParsePeer(r.source_principal);
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
    // Exact values (most principals and namespaces) compared here: no call per value.
    if (p.kind == StringPattern::Kind::kExact && !ignore_case) {
      if (value == p.text) return true;
    } else if (p.Matches(value, ignore_case)) {
      return true;
    }
  }
  return false;
}

void AppendQuoteList(std::string* out, const std::vector<std::string>& values) {
  out->push_back('[');
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out->append(", ");
    out->push_back('"');
    out->append(values[i]);
    out->push_back('"');
  }
  out->push_back(']');
}

uint64_t BigEndianWord(const uint8_t* p) {
  uint64_t w;
  std::memcpy(&w, p, sizeof(w));
  return std::endian::native == std::endian::big ? w : __builtin_bswap64(w);
}

bool AnyCidr(const std::vector<Cidr>& cidrs, const std::optional<IpAddress>& ip) {
  if (!ip.has_value()) return false;
  for (const Cidr& c : cidrs) {
    if (c.Contains(*ip)) return true;
  }
  return false;
}

// internal::IsL4Attr as a table, read once per field on the hot path.
bool IsL4(Attr attr) {
  static constexpr size_t kAttrs = static_cast<size_t>(Attr::kPath) + 1;
  static const std::array<bool, kAttrs> kTable = [] {
    std::array<bool, kAttrs> t{};
    for (size_t i = 0; i < kAttrs; ++i) t[i] = internal::IsL4Attr(static_cast<Attr>(i));
    return t;
  }();
  return kTable[static_cast<size_t>(attr)];
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
    case Attr::kSourceTrustDomain:
      // istiod's matchers: "*" is any spiffe:// principal; the others read the segment between
      // "spiffe://" and the next '/', so a wildcard never crosses it.
      for (const StringPattern& p : f.strings) {
        if (p.kind == StringPattern::Kind::kPresence
                ? v.has_principal
                : v.trust_domain.has_value() && !v.trust_domain->empty() &&
                      p.Matches(*v.trust_domain)) {
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
    case Attr::kSourceTrustDomain:
      if (v.trust_domain.has_value()) return absl::StrCat(f.label, " ", Quote(*v.trust_domain));
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

// DescribeActual appended to `out`, without temporaries for the attributes a connection has.
// Plain appends: for a few short pieces they cost a fraction of StrAppend's.
void AppendActual(std::string* out, const Field& f, const View& v) {
  const Request& r = v.req;
  auto quoted = [out, &f](absl::string_view value) {
    out->append(f.label);
    out->append(" \"");
    out->append(value.data(), value.size());
    out->push_back('"');
  };
  switch (f.attr) {
    case Attr::kSourcePrincipal:
      if (v.has_principal) return quoted(v.principal);
      break;
    case Attr::kSourceNamespace:
      if (v.peer.has_value()) return quoted(v.peer->namespace_name);
      break;
    case Attr::kDestinationPort: {
      char digits[8];
      const auto [end, ec] = std::to_chars(digits, digits + sizeof(digits), r.destination_port);
      out->append(f.label);
      out->push_back(' ');
      out->append(digits, end);
      return;
    }
    case Attr::kHost:
      return quoted(r.host);
    case Attr::kMethod:
      return quoted(r.method);
    case Attr::kPath:
      if (v.path.has_value()) return quoted(*v.path);
      break;
    default:
      break;
  }
  out->append(DescribeActual(f, v));
}

bool FieldMatches(const Field& f, const View& v) {
  bool any = AnyValueMatches(f, v);
  return f.negated ? !any : any;
}

// Appends why field `f` matched (`ok`) or not.
void AppendField(std::string* out, const Field& f, const View& v, bool ok) {
  const char* verb =
      f.negated ? (ok ? " matched none of " : " matched ") : (ok ? " matched " : " did not match ");
  AppendActual(out, f, v);
  out->append(verb);
  out->append(f.name);
  out->push_back(' ');
  AppendQuoteList(out, f.raw);
}

// The explaining matchers append to `out`: on success what matched, on failure why not. Text
// appended before the call is kept, so an explanation is built in one buffer.
bool ClauseMatches(const Clause& c, const View& v, std::string* out) {
  const bool l4 = v.layer == Layer::kL4;
  if (l4 && !c.has_l4_field) {
    absl::StrAppend(out, c.path, " uses only HTTP attributes (", absl::StrJoin(c.http_fields, ", "),
                    "), so it never matches at L4");
    return false;
  }
  const size_t start = out->size();
  bool first = true;
  for (const Field& f : c.fields) {
    if (l4 && !IsL4(f.attr)) continue;
    const bool ok = FieldMatches(f, v);
    if (!ok) {
      out->resize(start);  // on failure only the failing field is described
      absl::StrAppend(out, c.path, ": ");
      AppendField(out, f, v, false);
      return false;
    }
    if (!first) out->append(", ");
    AppendField(out, f, v, true);
    first = false;
  }
  return true;
}

bool RuleMatches(const CompiledRule& rule, Action action, const View& v, std::string* out) {
  const bool l4 = v.layer == Layer::kL4;
  if (l4 && action == Action::kAllow && rule.uses_http) {
    absl::StrAppend(out, "it uses HTTP attributes (", absl::StrJoin(rule.http_fields, ", "),
                    "), so the node tunnel (L4) ignores it");
    return false;
  }
  if (rule.from.empty() && rule.to.empty() && rule.when.empty()) {
    out->append("the rule is empty and matches every request");
    return true;
  }
  // What matched is appended part by part, joined with ", "; a failure replaces it all.
  const size_t start = out->size();
  bool first_part = true;
  auto one_of = [&](const std::vector<Clause>& clauses, absl::string_view what) {
    if (clauses.empty()) return true;
    std::string failures;  // joined with "; "
    for (size_t i = 0; i < clauses.size(); ++i) {
      const size_t before = out->size();
      if (!first_part) out->append(", ");
      const size_t clause_start = out->size();
      if (ClauseMatches(clauses[i], v, out)) {
        first_part = false;
        return true;
      }
      if (i > 0) failures.append("; ");
      failures.append(*out, clause_start);
      out->resize(before);
    }
    out->resize(start);
    absl::StrAppend(out, "no ", what, " entry matched (", failures, ")");
    return false;
  };
  if (!one_of(rule.from, "from") || !one_of(rule.to, "to")) return false;
  for (const Clause& c : rule.when) {
    if (!first_part) out->append(", ");
    const size_t clause_start = out->size();
    if (!ClauseMatches(c, v, out)) {
      out->erase(start, clause_start - start);  // only the failing condition is described
      return false;
    }
    first_part = false;
  }
  if (l4 && rule.uses_http) {
    absl::StrAppend(
        out, " (at L4 its HTTP fields are ignored: ", absl::StrJoin(rule.http_fields, ", "), ")");
  }
  return true;
}

struct PolicyResult {
  bool matched = false;
  int rule_index = -1;
  std::string why;                 // what matched, or why nothing did
  std::vector<std::string> notes;  // one line per rule evaluated
};

// Every rule up to the first that matches, explained (dry-run reports and Explain's trace).
PolicyResult ExplainPolicy(const CompiledPolicy& p, const View& v) {
  PolicyResult out;
  const internal::CompiledPolicyData& data = p.data();
  if (data.rules.empty()) {
    out.why = "it has no rules, so it never matches";
    out.notes.push_back(out.why);
    return out;
  }
  for (size_t i = 0; i < data.rules.size(); ++i) {
    std::string why;
    bool m = RuleMatches(data.rules[i], data.policy.action, v, &why);
    out.notes.push_back(absl::StrCat("rule ", i, m ? " matched: " : " no match: ", why));
    if (m) {
      out.matched = true;
      out.rule_index = static_cast<int>(i);
      out.why = std::move(why);
      return out;
    }
  }
  out.why = absl::StrJoin(out.notes, "; ");
  return out;
}

bool HasHttpRules(const CompiledPolicy& p) {
  for (const CompiledRule& r : p.data().rules) {
    if (r.uses_http) return true;
  }
  return false;
}

// ---- Precompiled matchers ----------------------------------------------------------------------
// RuleMatches without explanations, with the L4 reduction decided once per snapshot: rules that
// can never match at a layer are gone, clauses keep only the fields that layer reads, CIDRs have
// their masks ready (Cidr::Contains as two masked 64-bit compares). RuleMatches stays the
// reference: it explains the rule these pick, and Explain's trace uses it alone.

struct FastCidr {
  bool v4 = false;
  uint64_t high = 0;  // the base, masked
  uint64_t low = 0;
  uint64_t high_mask = 0;
  uint64_t low_mask = 0;
};

FastCidr MakeFastCidr(const Cidr& c) {
  FastCidr f;
  f.v4 = c.base.is_v4();
  const int bits = std::clamp(c.prefix_len, 0, 128);
  f.high_mask = bits >= 64 ? ~uint64_t{0} : bits == 0 ? 0 : ~uint64_t{0} << (64 - bits);
  f.low_mask = bits >= 128 ? ~uint64_t{0} : bits <= 64 ? 0 : ~uint64_t{0} << (128 - bits);
  f.high = BigEndianWord(c.base.bytes().data()) & f.high_mask;
  f.low = BigEndianWord(c.base.bytes().data() + 8) & f.low_mask;
  return f;
}

// An address split the way FastCidr compares it, once per decision.
struct FastIp {
  bool present = false;
  bool v4 = false;
  uint64_t high = 0;
  uint64_t low = 0;
};

FastIp MakeFastIp(const std::optional<IpAddress>& ip) {
  FastIp f;
  if (!ip.has_value()) return f;
  f.present = true;
  f.v4 = ip->is_v4();
  f.high = BigEndianWord(ip->bytes().data());
  f.low = BigEndianWord(ip->bytes().data() + 8);
  return f;
}

bool AnyFastCidr(const std::vector<FastCidr>& cidrs, const FastIp& ip) {
  if (!ip.present) return false;
  for (const FastCidr& c : cidrs) {
    if (c.v4 == ip.v4 && (ip.high & c.high_mask) == c.high && (ip.low & c.low_mask) == c.low) {
      return true;
    }
  }
  return false;
}

struct FastField {
  const Field* field = nullptr;
  std::vector<FastCidr> cidrs;  // source.ip, remote.ip, destination.ip
};

struct FastClause {
  std::vector<FastField> fields;  // all must match
};

struct FastRule {
  int index = 0;                 // in the policy's rules
  std::vector<FastClause> from;  // one must match (if any)
  std::vector<FastClause> to;    // one must match (if any)
  std::vector<FastClause> when;  // all must match
};

// The request as the precompiled matchers read it.
struct FastView {
  const View& view;
  FastIp source_ip;
  FastIp remote_ip;
  FastIp destination_ip;
};

FastView MakeFastView(const View& v) {
  return {v, MakeFastIp(v.req.source_ip), MakeFastIp(v.remote_ip),
          MakeFastIp(v.req.destination_ip)};
}

bool FastFieldMatches(const FastField& f, const FastView& fv) {
  bool any;
  switch (f.field->attr) {
    case Attr::kSourceIp:
      any = AnyFastCidr(f.cidrs, fv.source_ip);
      break;
    case Attr::kRemoteIp:
      any = AnyFastCidr(f.cidrs, fv.remote_ip);
      break;
    case Attr::kDestinationIp:
      any = AnyFastCidr(f.cidrs, fv.destination_ip);
      break;
    default:
      any = AnyValueMatches(*f.field, fv.view);
      break;
  }
  return f.field->negated ? !any : any;
}

bool FastClauseMatches(const FastClause& c, const FastView& fv) {
  for (const FastField& f : c.fields) {
    if (!FastFieldMatches(f, fv)) return false;
  }
  return true;
}

bool FastRuleMatches(const FastRule& r, const FastView& fv) {
  auto one_of = [&fv](const std::vector<FastClause>& clauses) {
    if (clauses.empty()) return true;
    for (const FastClause& c : clauses) {
      if (FastClauseMatches(c, fv)) return true;
    }
    return false;
  };
  if (!one_of(r.from) || !one_of(r.to)) return false;
  for (const FastClause& c : r.when) {
    if (!FastClauseMatches(c, fv)) return false;
  }
  return true;
}

// A clause as ClauseMatches evaluates it at `layer`; nullopt when it never matches there.
std::optional<FastClause> CompileClause(const Clause& c, Layer layer) {
  const bool l4 = layer == Layer::kL4;
  if (l4 && !c.has_l4_field) return std::nullopt;
  FastClause out;
  for (const Field& f : c.fields) {
    if (l4 && !IsL4(f.attr)) continue;
    FastField fast;
    fast.field = &f;
    for (const Cidr& cidr : f.cidrs) fast.cidrs.push_back(MakeFastCidr(cidr));
    out.fields.push_back(std::move(fast));
  }
  return out;
}

// The rules of `p` that can match at `layer`, as RuleMatches evaluates them there.
std::vector<FastRule> CompileRules(const CompiledPolicy& p, Layer layer) {
  std::vector<FastRule> out;
  const internal::CompiledPolicyData& data = p.data();
  for (size_t i = 0; i < data.rules.size(); ++i) {
    const CompiledRule& rule = data.rules[i];
    if (layer == Layer::kL4 && data.policy.action == Action::kAllow && rule.uses_http) continue;
    FastRule fast;
    fast.index = static_cast<int>(i);
    // One of `from` (and of `to`) must match: clauses that never do are dropped, and a list left
    // empty that was not empty means the rule never matches. Every `when` must match.
    bool possible = true;
    auto one_of = [&](const std::vector<Clause>& clauses, std::vector<FastClause>* dst) {
      for (const Clause& c : clauses) {
        if (std::optional<FastClause> fc = CompileClause(c, layer)) dst->push_back(*std::move(fc));
      }
      if (!clauses.empty() && dst->empty()) possible = false;
    };
    one_of(rule.from, &fast.from);
    one_of(rule.to, &fast.to);
    for (const Clause& c : rule.when) {
      std::optional<FastClause> fc = CompileClause(c, layer);
      if (!fc.has_value()) {
        possible = false;
        break;
      }
      fast.when.push_back(*std::move(fc));
    }
    if (possible) out.push_back(std::move(fast));
  }
  return out;
}

// One policy and what a decision reads about it. It holds its own reference to the compiled
// policy (the FastFields point into it), so an Index never points into an Engine.
struct PolicyEntry {
  CompiledPolicy policy;
  std::string key;  // "namespace/name"
  Action action = Action::kAllow;
  bool dry_run = false;
  bool http_rules = false;  // some rule uses HTTP attributes
  std::vector<FastRule> l4_rules;
  std::vector<FastRule> l7_rules;
};

PolicyEntry MakePolicyEntry(const CompiledPolicy& c) {
  const Policy& p = c.policy();
  return PolicyEntry{.policy = c,
                     .key = p.Key(),
                     // What istiod builds for it: its rules as DENY rules.
                     .action = p.provider_undefined ? Action::kDeny : p.action,
                     .dry_run = p.dry_run,
                     .http_rules = HasHttpRules(c),
                     .l4_rules = CompileRules(c, Layer::kL4),
                     .l7_rules = CompileRules(c, Layer::kL7)};
}

// MatchPolicy without explanations: the index of the first matching rule, -1 when none does.
int FirstMatchingRule(const PolicyEntry& p, const FastView& fv) {
  for (const FastRule& r : fv.view.layer == Layer::kL4 ? p.l4_rules : p.l7_rules) {
    if (FastRuleMatches(r, fv)) return r.index;
  }
  return -1;
}

// What ExplainPolicy(p, v).why says when rule `rule` is the first that matches, appended to
// `out`: only that rule is explained, so an allowed or denied connection pays for one
// explanation, built in one buffer.
void AppendMatchedRule(std::string* out, const PolicyEntry& p, int rule, const View& v) {
  RuleMatches(p.policy.data().rules[rule], p.action, v, out);
}

std::string ExplainMatchedRule(const PolicyEntry& p, int rule, const View& v) {
  std::string why;
  AppendMatchedRule(&why, p, rule, v);
  return why;
}

// "<what> <key> rule <rule>: <why it matched>".
std::string Matched(absl::string_view what, const PolicyEntry& p, int rule, const View& v) {
  std::string out;
  out.reserve(256);
  absl::StrAppend(&out, what, p.key, " rule ", rule, ": ");
  AppendMatchedRule(&out, p, rule, v);
  return out;
}

using Applicable = absl::InlinedVector<const PolicyEntry*, 32>;  // in evaluation order

// Which kinds of policy are among the applicable ones, so a decision skips the passes it needs
// not make.
struct ApplicableKinds {
  bool dry_run = false;
  bool custom = false;  // enforced CUSTOM
  bool audit = false;   // enforced AUDIT
};

ApplicableKinds KindsOf(const Applicable& policies) {
  ApplicableKinds k;
  for (const PolicyEntry* p : policies) {
    if (p->dry_run) {
      k.dry_run = true;
    } else if (p->action == Action::kCustom) {
      k.custom = true;
    } else if (p->action == Action::kAudit) {
      k.audit = true;
    }
  }
  return k;
}

// DENY, then ALLOW, over `policies`; dry-run ones only with `with_dry_run`.
Verdict DenyThenAllow(const Applicable& policies, bool with_dry_run, const FastView& fv) {
  const View& v = fv.view;
  for (const PolicyEntry* p : policies) {
    if (p->action != Action::kDeny || (p->dry_run && !with_dry_run)) continue;
    const int rule = FirstMatchingRule(*p, fv);
    if (rule < 0) continue;
    if (p->policy.policy().provider_undefined) {
      return {
          false, DecisionReason::kDenyMatched, p->key, rule,
          Matched(absl::StrCat("denied (ext_authz provider ", Quote(p->policy.policy().provider),
                               " is not defined in extensionProviders, so its rules deny) by "
                               "CUSTOM policy "),
                  *p, rule, v)};
    }
    return {false, DecisionReason::kDenyMatched, p->key, rule,
            Matched("denied by DENY policy ", *p, rule, v)};
  }
  int count = 0;
  int allow_count = 0;
  int deny_count = 0;
  bool l4_dropped = false;
  for (const PolicyEntry* p : policies) {
    if (p->dry_run && !with_dry_run) continue;
    ++count;
    if (p->action == Action::kDeny) ++deny_count;
    if (p->action != Action::kAllow) continue;
    ++allow_count;
    if (v.layer == Layer::kL4 && p->http_rules) l4_dropped = true;
    const int rule = FirstMatchingRule(*p, fv);
    if (rule < 0) continue;
    return {true, DecisionReason::kAllowMatched, p->key, rule,
            Matched("allowed by ALLOW policy ", *p, rule, v)};
  }
  if (allow_count == 0) {
    const char* why = count == 0 ? "allowed: no authorization policy applies to this workload"
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

// matchLabels (non-empty), its keys numbered per namespace: NamespaceIndex::label_keys.
using Selector = std::vector<std::pair<size_t, std::string>>;

// The workload's value of each label key the namespace's selectors use (null: no such label),
// looked up once per decision rather than once per selector. A pod has a handful of labels, so a
// scan beats the tree's string comparisons.
void ResolveLabels(const std::vector<std::string>& keys, const Workload& w,
                   absl::InlinedVector<const std::string*, 8>* values) {
  constexpr size_t kScanLimit = 8;
  values->assign(keys.size(), nullptr);
  for (size_t i = 0; i < keys.size(); ++i) {
    if (w.labels.size() <= kScanLimit) {
      for (const auto& [k, v] : w.labels) {
        if (k == keys[i]) {
          (*values)[i] = &v;
          break;
        }
      }
    } else if (auto it = w.labels.find(keys[i]); it != w.labels.end()) {
      (*values)[i] = &it->second;
    }
  }
}

// Every pair is among the workload's labels.
bool SelectorMatches(const Selector& selector,
                     const absl::InlinedVector<const std::string*, 8>& values) {
  for (const auto& [key, value] : selector) {
    if (values[key] == nullptr || *values[key] != value) return false;
  }
  return true;
}

// A policy without targetRefs that applies in a namespace when its selector matches.
struct Candidate {
  const PolicyEntry* entry = nullptr;
  int32_t selector = -1;  // into NamespaceIndex::selectors; -1: none (or matchLabels: {})
};

// The candidates for workloads of one namespace: its own policies and the root namespace's,
// merged in evaluation order, so a decision neither looks up two lists nor sorts. Each distinct
// matchLabels is tested once per decision, however many policies share it.
struct NamespaceIndex {
  std::vector<Candidate> candidates;     // L7 (without a waypoint): every action
  std::vector<Candidate> l4_candidates;  // L4: ALLOW and DENY only
  std::vector<Selector> selectors;
  std::vector<std::string> label_keys;  // every key the selectors use
};

}  // namespace

// Built once per snapshot from the engine's policies; read-only afterwards.
struct Engine::Index {
  std::vector<PolicyEntry> entries;  // parallel to policies_
  // For every namespace of by_namespace_; workloads of any other namespace use root_only.
  std::unordered_map<std::string, NamespaceIndex> namespaces;
  NamespaceIndex root_only;

  static std::shared_ptr<const Index> Build(const Engine& engine);
  NamespaceIndex BuildNamespace(const Engine& engine, const std::vector<size_t>* own) const;
  void Collect(const Engine& engine, const Workload& target, Layer layer, Applicable* out) const;
};

std::shared_ptr<const Engine::Index> Engine::Index::Build(const Engine& engine) {
  auto index = std::make_shared<Index>();
  index->entries.reserve(engine.policies_.size());
  for (const CompiledPolicy& c : engine.policies_) index->entries.push_back(MakePolicyEntry(c));
  for (const auto& [ns, own] : engine.by_namespace_) {
    index->namespaces.emplace(ns, index->BuildNamespace(engine, &own));
  }
  index->root_only = index->BuildNamespace(engine, nullptr);
  return index;
}

NamespaceIndex Engine::Index::BuildNamespace(const Engine& engine,
                                             const std::vector<size_t>* own) const {
  const std::string& root = engine.options_.root_namespace;
  std::vector<size_t> indexes;
  if (own != nullptr) indexes = *own;
  const bool is_root = own != nullptr && !own->empty() &&
                       engine.policies_[own->front()].policy().namespace_name == root;
  if (!is_root) {
    if (auto it = engine.by_namespace_.find(root); it != engine.by_namespace_.end()) {
      indexes.insert(indexes.end(), it->second.begin(), it->second.end());
    }
  }
  std::sort(indexes.begin(), indexes.end());
  indexes.erase(std::unique(indexes.begin(), indexes.end()), indexes.end());

  NamespaceIndex out;
  std::map<std::map<std::string, std::string>, int32_t> selector_ids;
  std::map<std::string, size_t> key_ids;
  for (size_t i : indexes) {
    const PolicyEntry& e = entries[i];
    Candidate c;
    c.entry = &e;
    const auto& selector = e.policy.policy().selector;
    if (selector.has_value() && !selector->empty()) {
      auto [it, added] =
          selector_ids.emplace(*selector, static_cast<int32_t>(out.selectors.size()));
      if (added) {
        Selector pairs;
        for (const auto& [key, value] : *selector) {
          auto [k, new_key] = key_ids.emplace(key, out.label_keys.size());
          if (new_key) out.label_keys.push_back(key);
          pairs.emplace_back(k->second, value);
        }
        out.selectors.push_back(std::move(pairs));
      }
      c.selector = it->second;
    }
    out.candidates.push_back(c);
    if (e.action == Action::kAllow || e.action == Action::kDeny) out.l4_candidates.push_back(c);
  }
  return out;
}

void Engine::Index::Collect(const Engine& engine, const Workload& target, Layer layer,
                            Applicable* out) const {
  if (layer == Layer::kL7 && target.waypoint.has_value()) {
    std::vector<size_t> indexes;
    auto add = [&](const std::string& key) {
      auto it = engine.by_target_.find(key);
      if (it != engine.by_target_.end()) {
        indexes.insert(indexes.end(), it->second.begin(), it->second.end());
      }
    };
    const WaypointRef& w = *target.waypoint;
    add(TargetKey(w.namespace_name, "Gateway", w.name));
    add(TargetKey(engine.options_.root_namespace, "GatewayClass", kWaypointGatewayClass));
    for (const ServiceRef& s : w.services) {
      add(TargetKey(s.namespace_name, "Service", s.name));
      add(TargetKey(s.namespace_name, "ServiceEntry", s.name));
    }
    std::sort(indexes.begin(), indexes.end());
    indexes.erase(std::unique(indexes.begin(), indexes.end()), indexes.end());
    for (size_t i : indexes) out->push_back(&entries[i]);
    return;
  }

  auto it = namespaces.find(target.namespace_name);
  const NamespaceIndex& index = it != namespaces.end() ? it->second : root_only;
  absl::InlinedVector<const std::string*, 8> labels;
  ResolveLabels(index.label_keys, target, &labels);
  // Bit s of `tested`: selector s has been tested; of `matched`: its result. Selectors past the
  // 64th are tested every time they come up.
  uint64_t tested = 0;
  uint64_t matched = 0;
  for (const Candidate& c : layer == Layer::kL4 ? index.l4_candidates : index.candidates) {
    if (c.selector >= 64) {
      if (!SelectorMatches(index.selectors[c.selector], labels)) continue;
    } else if (c.selector >= 0) {
      const uint64_t bit = uint64_t{1} << c.selector;
      if ((tested & bit) == 0) {
        tested |= bit;
        if (SelectorMatches(index.selectors[c.selector], labels)) matched |= bit;
      }
      if ((matched & bit) == 0) continue;
    }
    out->push_back(c.entry);
  }
}

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
  for (CompiledPolicy& c : policies) {
    Policy migrated = options.trust_domains.Migrate(c.policy());
    if (migrated == c.policy()) continue;
    absl::StatusOr<CompiledPolicy> recompiled = Compile(migrated);
    if (!recompiled.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("AuthorizationPolicy ", c.Key(),
                       " with trustDomainAliases applied: ", recompiled.status().message()));
    }
    c = *std::move(recompiled);
  }
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
    if (p.provider_undefined) {
      warnings_.push_back(absl::StrCat(key, ": ext_authz provider ", Quote(p.provider),
                                       " is not defined in extensionProviders; the policy's rules "
                                       "deny what they match, as istiod does"));
    } else if (p.action == Action::kCustom || p.action == Action::kAudit) {
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

  index_ = Index::Build(*this);
}

std::vector<const CompiledPolicy*> Engine::ApplicablePolicies(const Workload& target,
                                                              Layer layer) const {
  Applicable applicable;
  index_->Collect(*this, target, layer, &applicable);
  std::vector<const CompiledPolicy*> out;
  out.reserve(applicable.size());
  for (const PolicyEntry* e : applicable) out.push_back(&e->policy);
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

  const FastView fv = MakeFastView(v);
  Applicable all;
  index_->Collect(*this, target, request.layer, &all);
  const ApplicableKinds kinds = KindsOf(all);

  Verdict verdict = DenyThenAllow(all, /*with_dry_run=*/false, fv);
  const PolicyEntry* custom = nullptr;
  int custom_rule = -1;
  if (kinds.custom) {
    for (const PolicyEntry* e : all) {
      if (e->dry_run || e->action != Action::kCustom) continue;
      custom_rule = FirstMatchingRule(*e, fv);
      if (custom_rule >= 0) {
        custom = e;
        break;
      }
    }
  }
  if (custom != nullptr) {
    const std::string why = ExplainMatchedRule(*custom, custom_rule, v);
    const std::string& provider = custom->policy.policy().provider;
    d.allowed = false;
    d.reason = DecisionReason::kExtAuthzRequired;
    d.policy = custom->key;
    d.rule_index = custom_rule;
    d.ext_authz = ExtAuthzRequirement{provider, custom->key, custom_rule, verdict};
    d.explanation = absl::StrCat("CUSTOM policy ", custom->key, " rule ", custom_rule, " matched (",
                                 why, "): ext_authz provider ", Quote(provider),
                                 " decides; if it allows: ", verdict.explanation);
  } else {
    d.allowed = verdict.allowed;
    d.reason = verdict.reason;
    d.policy = std::move(verdict.policy);
    d.rule_index = verdict.rule_index;
    d.explanation = std::move(verdict.explanation);
  }

  if (kinds.audit) {
    for (const PolicyEntry* e : all) {
      if (e->dry_run || e->action != Action::kAudit) continue;
      const int rule = FirstMatchingRule(*e, fv);
      if (rule >= 0) {
        d.audits.push_back({e->key, Action::kAudit, rule, ExplainMatchedRule(*e, rule, v)});
      }
    }
  }

  if (kinds.dry_run) {
    for (const PolicyEntry* e : all) {
      if (!e->dry_run) continue;
      PolicyResult r = ExplainPolicy(e->policy, v);
      const Action action = e->action;
      std::string what;
      if (!r.matched) {
        what = absl::StrCat(ActionName(action), " policy ", e->key,
                            " (dry run) did not match: ", r.why);
      } else {
        const char* effect = action == Action::kDeny    ? "would deny"
                             : action == Action::kAllow ? "would allow"
                             : action == Action::kAudit ? "would audit"
                                                        : "would call ext_authz";
        what = absl::StrCat(ActionName(action), " policy ", e->key, " (dry run) rule ",
                            r.rule_index, " ", effect, ": ", r.why);
      }
      d.dry_run.push_back({e->key, action, r.matched, r.rule_index, std::move(what)});
    }
    d.dry_run_allowed = DenyThenAllow(all, /*with_dry_run=*/true, fv).allowed;
  }

  if (trace) {
    for (const PolicyEntry* e : all) {
      PolicyResult r = ExplainPolicy(e->policy, v);
      d.trace.push_back(
          {e->key, e->action, e->dry_run, r.matched, r.rule_index, std::move(r.notes)});
    }
  }
  return d;
}

}  // namespace ambit::authz
