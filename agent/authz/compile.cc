#include "agent/authz/compile.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "agent/authz/internal/compiled.h"
#include "agent/common/status.h"

namespace ambit::authz {
namespace {

using internal::Attr;
using internal::Clause;
using internal::CompiledRule;
using internal::Field;
using internal::PathPattern;
using internal::PathTemplate;
using internal::RequestPrincipalPattern;
using internal::ServiceAccountPattern;
using internal::StringPattern;

absl::Status Invalid(absl::string_view path, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", message));
}

absl::StatusOr<uint16_t> ParsePort(absl::string_view path, absl::string_view text) {
  // Like istiod: a decimal number in [0, 65535], nothing else (no sign, no spaces).
  uint32_t port = 0;
  bool ok = !text.empty() && text.size() <= 5;
  for (char c : text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) ok = false;
    port = port * 10 + static_cast<uint32_t>(c - '0');
  }
  if (!ok || port > 65535) {
    return Invalid(path, absl::StrCat("'", text, "' is not a valid port (0-65535)"));
  }
  return static_cast<uint16_t>(port);
}

absl::StatusOr<PathPattern> ParsePath(absl::string_view path, absl::string_view text) {
  PathPattern out;
  if (!absl::StrContains(text, "{*}") && !absl::StrContains(text, "{**}")) {
    out.pattern = StringPattern::Parse(text);
    return out;
  }
  auto bad = [&](absl::string_view why) {
    return Invalid(path, absl::StrCat("'", text, "' is not a valid path template: ", why));
  };
  out.is_template = true;
  std::string literal;
  bool after_text_glob = false;
  auto flush = [&] {
    if (!literal.empty()) {
      out.path_template.tokens.push_back({PathTemplate::Token::Kind::kLiteral, literal});
      literal.clear();
    }
  };
  bool first = true;
  for (absl::string_view segment : absl::StrSplit(text, '/')) {
    if (!first) literal.push_back('/');
    first = false;
    if (segment == "{*}" || segment == "{**}") {
      if (after_text_glob) return bad("{**} must be the last operator");
      flush();
      bool text_glob = segment == "{**}";
      out.path_template.tokens.push_back({text_glob ? PathTemplate::Token::Kind::kTextGlob
                                                    : PathTemplate::Token::Kind::kSegmentGlob,
                                          ""});
      after_text_glob = after_text_glob || text_glob;
    } else if (segment.find_first_of("*{}") != absl::string_view::npos) {
      return bad("'*', '{' and '}' may only appear as a whole path segment {*} or {**}");
    } else {
      literal.append(segment.data(), segment.size());
    }
  }
  flush();
  return out;
}

// Istio's split of "<iss>/<sub>" at the last '/', with the wildcard applying to the half it is on.
RequestPrincipalPattern ParseRequestPrincipal(absl::string_view value) {
  const StringPattern any{StringPattern::Kind::kPresence, ""};
  size_t slash = value.rfind('/');
  bool found = slash != absl::string_view::npos;
  absl::string_view iss = found ? value.substr(0, slash) : value;
  absl::string_view sub = found ? value.substr(slash + 1) : absl::string_view();
  using K = StringPattern::Kind;
  if (value == "*") return {any, any};
  if (absl::StartsWith(value, "*")) {
    if (!found) return {any, {K::kSuffix, std::string(value.substr(1))}};
    return {iss == "*" ? any : StringPattern{K::kSuffix, std::string(iss.substr(1))},
            {K::kExact, std::string(sub)}};
  }
  if (absl::EndsWith(value, "*")) {
    if (!found) return {{K::kPrefix, std::string(value.substr(0, value.size() - 1))}, any};
    return {
        {K::kExact, std::string(iss)},
        sub == "*" ? any : StringPattern{K::kPrefix, std::string(sub.substr(0, sub.size() - 1))}};
  }
  return {{K::kExact, std::string(iss)}, {K::kExact, std::string(sub)}};
}

absl::StatusOr<ServiceAccountPattern> ParseServiceAccount(absl::string_view path,
                                                          absl::string_view text,
                                                          absl::string_view policy_namespace) {
  if (absl::StrContains(text, "*")) {
    return Invalid(path,
                   absl::StrCat("'", text, "': wildcards are not allowed in serviceAccounts"));
  }
  std::vector<absl::string_view> parts = absl::StrSplit(text, '/');
  if (parts.size() == 1)
    return ServiceAccountPattern{std::string(policy_namespace), std::string(text)};
  if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) {
    return Invalid(
        path, absl::StrCat("'", text, "' is not <namespace>/<serviceaccount> or <serviceaccount>"));
  }
  return ServiceAccountPattern{std::string(parts[0]), std::string(parts[1])};
}

// istiod's CheckTrustDomainValues: exact, "prefix*", "*suffix" or "*". A '/' is refused in
// conditions too (istiod checks it only in trustDomains): no trust domain holds one, and the
// matcher istiod generates would then compare path segments, not the trust domain.
absl::Status CheckTrustDomain(absl::string_view path, absl::string_view text) {
  const size_t stars = std::count(text.begin(), text.end(), '*');
  if (stars > 1) {
    return Invalid(path, absl::StrCat("'", text, "': at most one wildcard '*' is allowed"));
  }
  if (stars == 1 && text != "*" && !absl::StartsWith(text, "*") && !absl::EndsWith(text, "*")) {
    return Invalid(path, absl::StrCat("'", text,
                                      "': a wildcard '*' is only allowed at the start or end "
                                      "of a trust domain"));
  }
  if (absl::StrContains(text, "/")) {
    return Invalid(path, absl::StrCat("'", text, "': a trust domain must not contain '/'"));
  }
  return absl::OkStatus();
}

bool IsIpAttr(Attr attr) {
  return attr == Attr::kSourceIp || attr == Attr::kRemoteIp || attr == Attr::kDestinationIp;
}

// istiod's bounds on serviceAccounts and source.serviceAccount (the CRD's MaxItems and
// MaxLength): configuration size stays bounded.
constexpr size_t kMaxServiceAccounts = 16;
constexpr size_t kMaxServiceAccountLength = 320;

// Parses `values` (found at `path`) into a field of attribute `attr`. Empty lists are not fields:
// the caller skips them.
absl::StatusOr<Field> BuildField(Attr attr, bool negated, absl::string_view name, std::string label,
                                 const std::vector<std::string>& values, absl::string_view path,
                                 absl::string_view policy_namespace, bool is_condition) {
  if (attr == Attr::kSourceServiceAccount && values.size() > kMaxServiceAccounts) {
    return Invalid(path, absl::StrCat("has ", values.size(), " values; istiod allows at most ",
                                      kMaxServiceAccounts));
  }
  Field f;
  f.attr = attr;
  f.negated = negated;
  f.name = std::string(name);
  f.label = std::move(label);
  f.raw = values;
  for (size_t i = 0; i < values.size(); ++i) {
    const std::string& v = values[i];
    std::string vpath = absl::StrCat(path, "[", i, "]");
    if (v.empty()) return Invalid(vpath, "empty value is not allowed");
    if (IsIpAttr(attr)) {
      auto cidr = Cidr::Parse(v);
      if (!cidr.ok()) {
        return Invalid(vpath, absl::StrCat("'", v, "' is not a valid ",
                                           is_condition ? "IP address or CIDR" : "CIDR"));
      }
      f.cidrs.push_back(*cidr);
    } else if (attr == Attr::kDestinationPort) {
      AMBIT_ASSIGN_OR_RETURN(uint16_t port, ParsePort(vpath, v));
      f.ports.push_back(port);
    } else if (attr == Attr::kPath) {
      AMBIT_ASSIGN_OR_RETURN(PathPattern p, ParsePath(vpath, v));
      f.paths.push_back(std::move(p));
    } else if (attr == Attr::kRequestPrincipal) {
      f.request_principals.push_back(ParseRequestPrincipal(v));
    } else if (attr == Attr::kSourceTrustDomain) {
      AMBIT_RETURN_IF_ERROR(CheckTrustDomain(vpath, v));
      f.strings.push_back(StringPattern::Parse(v));
    } else if (attr == Attr::kSourceServiceAccount) {
      if (v.size() > kMaxServiceAccountLength) {
        return Invalid(vpath, absl::StrCat("is longer than ", kMaxServiceAccountLength,
                                           " characters (istiod's limit)"));
      }
      AMBIT_ASSIGN_OR_RETURN(ServiceAccountPattern sa,
                             ParseServiceAccount(vpath, v, policy_namespace));
      f.service_accounts.push_back(std::move(sa));
    } else {
      f.strings.push_back(StringPattern::Parse(v));
    }
  }
  return f;
}

void AddField(Clause& clause, Field field) {
  if (internal::IsL4Attr(field.attr)) {
    clause.has_l4_field = true;
  } else {
    clause.http_fields.push_back(field.name == "values" || field.name == "notValues" ? field.label
                                                                                     : field.name);
  }
  clause.fields.push_back(std::move(field));
}

struct FieldSpec {
  const char* name;
  Attr attr;
  bool negated;
  const char* label;
  const std::vector<std::string>* values;
};

absl::StatusOr<Clause> BuildClause(std::string clause_path, absl::string_view field_prefix,
                                   const std::vector<FieldSpec>& specs,
                                   absl::string_view policy_namespace) {
  Clause clause;
  clause.path = std::move(clause_path);
  for (const FieldSpec& spec : specs) {
    if (spec.values->empty()) continue;
    AMBIT_ASSIGN_OR_RETURN(
        Field f, BuildField(spec.attr, spec.negated, spec.name, spec.label, *spec.values,
                            absl::StrCat(field_prefix, ".", spec.name), policy_namespace, false));
    AddField(clause, std::move(f));
  }
  if (clause.fields.empty()) return Invalid(field_prefix, "must not be empty");
  return clause;
}

absl::StatusOr<Clause> BuildSource(const Source& s, absl::string_view rule_path, size_t j,
                                   absl::string_view policy_namespace) {
  std::string prefix = absl::StrCat(rule_path, ".from[", j, "].source");
  if (!(s.service_accounts.empty() && s.not_service_accounts.empty()) &&
      !(s.principals.empty() && s.not_principals.empty() && s.namespaces.empty() &&
        s.not_namespaces.empty())) {
    return Invalid(prefix,
                   "serviceAccounts/notServiceAccounts cannot be combined with principals or "
                   "namespaces");
  }
  std::vector<FieldSpec> specs = {
      {"principals", Attr::kSourcePrincipal, false, "source.principal", &s.principals},
      {"notPrincipals", Attr::kSourcePrincipal, true, "source.principal", &s.not_principals},
      {"requestPrincipals", Attr::kRequestPrincipal, false, "request.auth.principal",
       &s.request_principals},
      {"notRequestPrincipals", Attr::kRequestPrincipal, true, "request.auth.principal",
       &s.not_request_principals},
      {"namespaces", Attr::kSourceNamespace, false, "source.namespace", &s.namespaces},
      {"notNamespaces", Attr::kSourceNamespace, true, "source.namespace", &s.not_namespaces},
      {"serviceAccounts", Attr::kSourceServiceAccount, false, "source.serviceAccount",
       &s.service_accounts},
      {"notServiceAccounts", Attr::kSourceServiceAccount, true, "source.serviceAccount",
       &s.not_service_accounts},
      {"ipBlocks", Attr::kSourceIp, false, "source.ip", &s.ip_blocks},
      {"notIpBlocks", Attr::kSourceIp, true, "source.ip", &s.not_ip_blocks},
      {"remoteIpBlocks", Attr::kRemoteIp, false, "remote.ip", &s.remote_ip_blocks},
      {"notRemoteIpBlocks", Attr::kRemoteIp, true, "remote.ip", &s.not_remote_ip_blocks},
      {"trustDomains", Attr::kSourceTrustDomain, false, "source.trustDomain", &s.trust_domains},
      {"notTrustDomains", Attr::kSourceTrustDomain, true, "source.trustDomain",
       &s.not_trust_domains},
  };
  return BuildClause(absl::StrCat("from[", j, "]"), prefix, specs, policy_namespace);
}

absl::StatusOr<Clause> BuildOperation(const Operation& o, absl::string_view rule_path, size_t j,
                                      absl::string_view policy_namespace) {
  std::vector<FieldSpec> specs = {
      {"hosts", Attr::kHost, false, "request.host", &o.hosts},
      {"notHosts", Attr::kHost, true, "request.host", &o.not_hosts},
      {"ports", Attr::kDestinationPort, false, "destination.port", &o.ports},
      {"notPorts", Attr::kDestinationPort, true, "destination.port", &o.not_ports},
      {"methods", Attr::kMethod, false, "request.method", &o.methods},
      {"notMethods", Attr::kMethod, true, "request.method", &o.not_methods},
      {"paths", Attr::kPath, false, "request.path", &o.paths},
      {"notPaths", Attr::kPath, true, "request.path", &o.not_paths},
  };
  return BuildClause(absl::StrCat("to[", j, "]"), absl::StrCat(rule_path, ".to[", j, "].operation"),
                     specs, policy_namespace);
}

// "[a][b]" -> {"a", "b"}.
absl::StatusOr<std::vector<std::string>> ParseBrackets(absl::string_view path,
                                                       absl::string_view key,
                                                       absl::string_view rest) {
  std::vector<std::string> names;
  while (!rest.empty()) {
    size_t close = rest.find(']');
    if (rest[0] != '[' || close == absl::string_view::npos || close == 1 ||
        rest.substr(1, close - 1).find('[') != absl::string_view::npos) {
      return Invalid(path, absl::StrCat("'", key,
                                        "' is malformed: expected [name] after the "
                                        "attribute, e.g. request.headers[x-token]"));
    }
    names.emplace_back(rest.substr(1, close - 1));
    rest.remove_prefix(close + 1);
  }
  if (names.empty()) {
    return Invalid(path, absl::StrCat("'", key, "' is missing the [name] part"));
  }
  return names;
}

struct ConditionKey {
  Attr attr;
  std::string header;
  std::vector<std::string> claims;
};

absl::StatusOr<ConditionKey> ParseConditionKey(absl::string_view path, absl::string_view key) {
  static constexpr struct {
    const char* key;
    Attr attr;
  } kExact[] = {
      {"source.ip", Attr::kSourceIp},
      {"remote.ip", Attr::kRemoteIp},
      {"source.namespace", Attr::kSourceNamespace},
      {"source.principal", Attr::kSourcePrincipal},
      {"source.serviceAccount", Attr::kSourceServiceAccount},
      {"source.trustDomain", Attr::kSourceTrustDomain},
      {"request.auth.principal", Attr::kRequestPrincipal},
      {"request.auth.audiences", Attr::kRequestAudiences},
      {"request.auth.presenter", Attr::kRequestPresenter},
      {"destination.ip", Attr::kDestinationIp},
      {"destination.port", Attr::kDestinationPort},
      {"connection.sni", Attr::kSni},
  };
  for (const auto& e : kExact) {
    if (key == e.key) return ConditionKey{e.attr, "", {}};
  }
  absl::string_view rest = key;
  if (absl::ConsumePrefix(&rest, "request.headers")) {
    AMBIT_ASSIGN_OR_RETURN(std::vector<std::string> names, ParseBrackets(path, key, rest));
    if (names.size() != 1) {
      return Invalid(path, absl::StrCat("'", key, "' names more than one header"));
    }
    return ConditionKey{Attr::kRequestHeader, absl::AsciiStrToLower(names[0]), {}};
  }
  if (absl::ConsumePrefix(&rest, "request.auth.claims")) {
    AMBIT_ASSIGN_OR_RETURN(std::vector<std::string> names, ParseBrackets(path, key, rest));
    return ConditionKey{Attr::kRequestClaim, "", std::move(names)};
  }
  if (absl::StartsWith(key, "experimental.envoy.filters.")) {
    return Invalid(path, absl::StrCat("'", key, "' (Envoy filter metadata) is not supported"));
  }
  return Invalid(path, absl::StrCat("unknown attribute '", key,
                                    "'; see https://istio.io/latest/docs/reference/config/"
                                    "security/conditions/"));
}

absl::StatusOr<Clause> BuildCondition(const Condition& c, absl::string_view rule_path, size_t k,
                                      absl::string_view policy_namespace) {
  std::string prefix = absl::StrCat(rule_path, ".when[", k, "]");
  if (c.key.empty()) return Invalid(absl::StrCat(prefix, ".key"), "must not be empty");
  AMBIT_ASSIGN_OR_RETURN(ConditionKey key, ParseConditionKey(absl::StrCat(prefix, ".key"), c.key));
  if (c.values.empty() && c.not_values.empty()) {
    return Invalid(prefix,
                   absl::StrCat("at least one of values or notValues must be set for key ", c.key));
  }
  Clause clause;
  clause.path = absl::StrCat("when[", k, "]");
  for (bool negated : {false, true}) {
    const std::vector<std::string>& values = negated ? c.not_values : c.values;
    if (values.empty()) continue;
    const char* name = negated ? "notValues" : "values";
    AMBIT_ASSIGN_OR_RETURN(
        Field f, BuildField(key.attr, negated, name, c.key, values, absl::StrCat(prefix, ".", name),
                            policy_namespace, true));
    f.header = key.header;
    f.claim_path = key.claims;
    AddField(clause, std::move(f));
  }
  return clause;
}

absl::StatusOr<CompiledRule> BuildRule(const Rule& rule, size_t i,
                                       absl::string_view policy_namespace) {
  std::string rule_path = absl::StrCat("rules[", i, "]");
  CompiledRule out;
  auto note_http = [&out](const Clause& c) {
    for (const std::string& f : c.http_fields) {
      std::string name = absl::StrCat(c.path, ".", f);
      out.http_fields.push_back(std::move(name));
      out.uses_http = true;
    }
  };
  for (size_t j = 0; j < rule.from.size(); ++j) {
    AMBIT_ASSIGN_OR_RETURN(Clause c, BuildSource(rule.from[j], rule_path, j, policy_namespace));
    note_http(c);
    out.from.push_back(std::move(c));
  }
  for (size_t j = 0; j < rule.to.size(); ++j) {
    AMBIT_ASSIGN_OR_RETURN(Clause c, BuildOperation(rule.to[j], rule_path, j, policy_namespace));
    note_http(c);
    out.to.push_back(std::move(c));
  }
  for (size_t k = 0; k < rule.when.size(); ++k) {
    AMBIT_ASSIGN_OR_RETURN(Clause c, BuildCondition(rule.when[k], rule_path, k, policy_namespace));
    note_http(c);
    out.when.push_back(std::move(c));
  }
  return out;
}

absl::Status ValidateTargetRef(const TargetRef& ref, size_t i) {
  std::string path = absl::StrCat("targetRefs[", i, "]");
  if (ref.kind.empty()) return Invalid(absl::StrCat(path, ".kind"), "must not be empty");
  if (ref.name.empty()) return Invalid(absl::StrCat(path, ".name"), "must not be empty");
  const bool gateway_api = ref.group == "gateway.networking.k8s.io";
  if (gateway_api && ref.kind == "Gateway") return absl::OkStatus();
  if (gateway_api && ref.kind == "GatewayClass") {
    if (ref.name != kWaypointGatewayClass) {
      return Invalid(absl::StrCat(path, ".name"),
                     absl::StrCat("'", ref.name, "': only GatewayClass '", kWaypointGatewayClass,
                                  "' can be targeted"));
    }
    return absl::OkStatus();
  }
  if ((ref.group.empty() || ref.group == "core") && ref.kind == "Service") return absl::OkStatus();
  if (ref.group == "networking.istio.io" && ref.kind == "ServiceEntry") return absl::OkStatus();
  return Invalid(path,
                 absl::StrCat("unsupported target '", ref.group, "/", ref.kind,
                              "'; supported: gateway.networking.k8s.io Gateway and "
                              "GatewayClass, core Service, networking.istio.io ServiceEntry"));
}

}  // namespace

const Policy& CompiledPolicy::policy() const { return data_->policy; }

absl::StatusOr<CompiledPolicy> Compile(const Policy& policy) {
  if (policy.name.empty()) return Invalid("metadata.name", "must not be empty");
  if (policy.namespace_name.empty()) return Invalid("metadata.namespace", "must not be empty");
  if (policy.selector.has_value() && !policy.target_refs.empty()) {
    return Invalid("spec", "selector and targetRefs cannot both be set");
  }
  if (policy.selector.has_value()) {
    for (const auto& [key, value] : *policy.selector) {
      if (key.empty()) return Invalid("selector.matchLabels", "label keys must not be empty");
      if (absl::StrContains(key, "*") || absl::StrContains(value, "*")) {
        return Invalid(absl::StrCat("selector.matchLabels[", key, "]"),
                       "wildcards are not supported in selectors");
      }
    }
  }
  for (size_t i = 0; i < policy.target_refs.size(); ++i) {
    AMBIT_RETURN_IF_ERROR(ValidateTargetRef(policy.target_refs[i], i));
  }
  if (policy.action == Action::kCustom && policy.provider.empty()) {
    return Invalid("provider.name", "must be set when action is CUSTOM");
  }
  if (policy.action != Action::kCustom && !policy.provider.empty()) {
    return Invalid("provider", absl::StrCat("only allowed with action CUSTOM, not ",
                                            ActionName(policy.action)));
  }
  if (policy.provider_undefined && policy.action != Action::kCustom) {
    return Invalid("provider", "only a CUSTOM policy can name an undefined provider");
  }
  auto data = std::make_shared<internal::CompiledPolicyData>();
  data->policy = policy;
  if (policy.rules.has_value()) {
    for (size_t i = 0; i < policy.rules->size(); ++i) {
      AMBIT_ASSIGN_OR_RETURN(CompiledRule rule,
                             BuildRule((*policy.rules)[i], i, policy.namespace_name));
      data->rules.push_back(std::move(rule));
    }
  }
  return CompiledPolicy(std::move(data));
}

}  // namespace ambit::authz
