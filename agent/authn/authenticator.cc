#include "agent/authn/authenticator.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "agent/authn/jwt_cache.h"

namespace ambit::authn {

struct Authenticator::Provider {
  const RequestAuthentication* policy = nullptr;
  int index = 0;  // in policy->jwt_rules
  const JwtRule* rule = nullptr;
  std::vector<TokenLocation> locations;
  std::shared_ptr<const Jwks> inline_keys;  // null: rule->jwks_uri
};

namespace {

constexpr absl::string_view kBase64UrlPlusDot =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=";

// Claims Istio always splits on spaces (OAuth scopes and permissions).
constexpr absl::string_view kSpaceDelimited[] = {"scope", "scp", "permission"};

std::vector<TokenLocation> Locations(const JwtRule& rule) {
  std::vector<TokenLocation> out;
  if (rule.from_headers.empty() && rule.from_params.empty() && rule.from_cookies.empty()) {
    out.push_back({TokenLocation::Kind::kHeader, "authorization", "Bearer "});
    out.push_back({TokenLocation::Kind::kParam, "access_token", ""});
    return out;
  }
  for (const HeaderLocation& h : rule.from_headers) {
    out.push_back({TokenLocation::Kind::kHeader, absl::AsciiStrToLower(h.name), h.prefix});
  }
  for (const std::string& p : rule.from_params) {
    out.push_back({TokenLocation::Kind::kParam, p, ""});
  }
  for (const std::string& c : rule.from_cookies) {
    out.push_back({TokenLocation::Kind::kCookie, c, ""});
  }
  return out;
}

// Envoy's extractJWT: after the prefix, the token is the first run of base64url characters and
// dots; without a prefix, the whole value.
std::optional<std::string> FromHeaderValue(absl::string_view value, absl::string_view prefix) {
  if (prefix.empty()) return value.empty() ? std::nullopt : std::optional<std::string>(value);
  const size_t at = value.find(prefix);
  if (at == absl::string_view::npos) return std::nullopt;
  const size_t start = value.find_first_of(kBase64UrlPlusDot, at + prefix.size());
  if (start == absl::string_view::npos) return std::nullopt;
  size_t end = value.find_first_not_of(kBase64UrlPlusDot, start);
  if (end == absl::string_view::npos) end = value.size();
  return std::string(value.substr(start, end - start));
}

std::optional<std::string> QueryParam(absl::string_view path, absl::string_view name) {
  const size_t q = path.find('?');
  if (q == absl::string_view::npos) return std::nullopt;
  absl::string_view query = path.substr(q + 1);
  if (const size_t hash = query.find('#'); hash != absl::string_view::npos) {
    query = query.substr(0, hash);
  }
  for (absl::string_view pair : absl::StrSplit(query, '&')) {
    const size_t eq = pair.find('=');
    const absl::string_view key = pair.substr(0, eq);
    if (key != name) continue;
    if (eq == absl::string_view::npos) return std::string();
    return std::string(pair.substr(eq + 1));
  }
  return std::nullopt;
}

std::optional<std::string> Cookie(const authz::HeaderMap& headers, absl::string_view name) {
  const std::string* cookie = headers.Find("cookie");
  if (cookie == nullptr) return std::nullopt;
  // Repeated cookie headers were merged with ","; both separators end a pair.
  for (absl::string_view pair : absl::StrSplit(*cookie, absl::ByAnyChar(";,"))) {
    pair = absl::StripAsciiWhitespace(pair);
    const size_t eq = pair.find('=');
    if (eq == absl::string_view::npos || pair.substr(0, eq) != name) continue;
    absl::string_view value = pair.substr(eq + 1);
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    return std::string(value);
  }
  return std::nullopt;
}

std::optional<std::string> Extract(const authz::Request& request, const TokenLocation& loc) {
  switch (loc.kind) {
    case TokenLocation::Kind::kHeader: {
      const std::string* value = request.headers.Find(loc.name);
      if (value == nullptr) return std::nullopt;
      return FromHeaderValue(*value, loc.prefix);
    }
    case TokenLocation::Kind::kParam:
      return QueryParam(request.path, loc.name);
    case TokenLocation::Kind::kCookie:
      return Cookie(request.headers, loc.name);
  }
  return std::nullopt;
}

bool IsCorsPreflight(const authz::Request& request) {
  if (request.method != "OPTIONS") return false;
  const std::string* origin = request.headers.Find("origin");
  const std::string* method = request.headers.Find("access-control-request-method");
  return origin != nullptr && !origin->empty() && method != nullptr && !method->empty();
}

bool SelectorMatches(const std::map<std::string, std::string>& selector,
                     const std::map<std::string, std::string>& labels) {
  for (const auto& [k, v] : selector) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v) return false;
  }
  return true;
}

// The claims authz sees: the payload with space-delimited string claims split into lists.
authz::ClaimValue SplitClaims(const authz::ClaimValue& claims, const JwtRule& rule) {
  const authz::ClaimValue::Object* object = claims.AsObject();
  if (object == nullptr) return claims;
  authz::ClaimValue::Object out = *object;
  auto split = [&out](absl::string_view name) {
    auto it = out.find(std::string(name));
    if (it == out.end()) return;
    const std::string* text = it->second.AsString();
    if (text == nullptr) return;
    authz::ClaimValue::List parts;
    for (absl::string_view p : absl::StrSplit(*text, ' ', absl::SkipEmpty())) {
      parts.push_back(authz::ClaimValue::String(std::string(p)));
    }
    it->second = authz::ClaimValue::ListOf(std::move(parts));
  };
  for (absl::string_view name : kSpaceDelimited) split(name);
  for (const std::string& name : rule.space_delimited_claims) split(name);
  return authz::ClaimValue::ObjectOf(std::move(out));
}

// outputClaimToHeaders: a string as is, a number or bool as JSON text, a list or object as
// base64 of its JSON (Envoy's encoding); nullopt when the claim is absent or null.
std::optional<std::string> ClaimHeaderValue(const authz::ClaimValue& claims,
                                            absl::string_view path) {
  const authz::ClaimValue* at = &claims;
  for (absl::string_view part : absl::StrSplit(path, '.')) {
    at = at->Find(part);
    if (at == nullptr) return std::nullopt;
  }
  switch (at->kind()) {
    case authz::ClaimValue::Kind::kString:
      return *at->AsString();
    case authz::ClaimValue::Kind::kNumber:
    case authz::ClaimValue::Kind::kBool:
      return at->ToString();
    case authz::ClaimValue::Kind::kList:
    case authz::ClaimValue::Kind::kObject:
      return absl::Base64Escape(at->ToString());
    case authz::ClaimValue::Kind::kNull:
      return std::nullopt;
  }
  return std::nullopt;
}

// Removes a query parameter's value is not done (Envoy leaves query and cookies alone); only a
// header location can be removed from the request.
void AddMutations(const JwtRule& rule, const TokenLocation& loc, const Jwt& jwt,
                  std::vector<HeaderMutation>* out) {
  if (!rule.forward_original_token && loc.kind == TokenLocation::Kind::kHeader) {
    out->push_back({HeaderMutation::Op::kRemove, loc.name, ""});
  }
  if (!rule.output_payload_to_header.empty()) {
    out->push_back({HeaderMutation::Op::kSet, absl::AsciiStrToLower(rule.output_payload_to_header),
                    jwt.payload_b64});
  }
  for (const ClaimToHeader& c : rule.output_claim_to_headers) {
    if (std::optional<std::string> value = ClaimHeaderValue(jwt.claims, c.claim)) {
      out->push_back({HeaderMutation::Op::kSet, absl::AsciiStrToLower(c.header), *value});
    }
  }
}

}  // namespace

std::string TokenLocation::ToString() const {
  switch (kind) {
    case Kind::kHeader:
      return prefix.empty() ? absl::StrCat("header ", name)
                            : absl::StrCat("header ", name, " (prefix \"", prefix, "\")");
    case Kind::kParam:
      return absl::StrCat("query parameter ", name);
    case Kind::kCookie:
      return absl::StrCat("cookie ", name);
  }
  return name;
}

Authenticator::Authenticator(std::vector<RequestAuthentication> policies,
                             std::vector<Provider> providers, AuthenticatorOptions options,
                             const SignatureVerifier* verifier, const JwksProvider* remote)
    : policies_(std::move(policies)),
      providers_(std::move(providers)),
      options_(std::move(options)),
      verifier_(verifier),
      remote_(remote) {}

Authenticator::~Authenticator() = default;

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(
    std::vector<RequestAuthentication> policies, AuthenticatorOptions options,
    const SignatureVerifier* verifier, const JwksProvider* remote) {
  if (verifier == nullptr) return absl::InvalidArgumentError("a SignatureVerifier is required");
  std::sort(policies.begin(), policies.end(),
            [](const RequestAuthentication& a, const RequestAuthentication& b) {
              return a.Key() < b.Key();
            });
  std::vector<Provider> providers;
  for (const RequestAuthentication& p : policies) {
    for (size_t i = 0; i < p.jwt_rules.size(); ++i) {
      const JwtRule& rule = p.jwt_rules[i];
      Provider provider;
      provider.policy = &p;  // fixed up below, once policies_ is in place
      provider.index = static_cast<int>(i);
      provider.rule = &rule;
      provider.locations = Locations(rule);
      if (!rule.jwks.empty()) {
        absl::StatusOr<Jwks> keys = ParseJwks(rule.jwks);
        if (!keys.ok()) {
          return absl::InvalidArgumentError(absl::StrCat("RequestAuthentication ", p.Key(),
                                                         ": jwtRules[", i, "].jwks ",
                                                         keys.status().message()));
        }
        provider.inline_keys = std::make_shared<const Jwks>(*std::move(keys));
      }
      providers.push_back(std::move(provider));
    }
  }
  auto out = std::unique_ptr<Authenticator>(new Authenticator(
      std::move(policies), std::move(providers), std::move(options), verifier, remote));
  // Point the providers at the policies the Authenticator owns (vector moves keep elements).
  size_t next = 0;
  for (const RequestAuthentication& p : out->policies_) {
    for (size_t i = 0; i < p.jwt_rules.size(); ++i, ++next) {
      out->providers_[next].policy = &p;
      out->providers_[next].rule = &p.jwt_rules[i];
    }
  }
  return out;
}

std::vector<const Authenticator::Provider*> Authenticator::Applicable(
    const authz::Workload& target) const {
  std::vector<const Provider*> out;
  for (const Provider& provider : providers_) {
    const RequestAuthentication& p = *provider.policy;
    bool applies = false;
    if (target.waypoint) {
      for (const authz::TargetRef& ref : p.target_refs) {
        if (ref.kind == "Gateway") {
          applies |= p.namespace_name == target.waypoint->namespace_name &&
                     ref.name == target.waypoint->name;
        } else if (ref.kind == "GatewayClass") {
          applies |= p.namespace_name == options_.root_namespace &&
                     ref.name == authz::kWaypointGatewayClass;
        } else if (ref.kind == "Service" || ref.kind == "ServiceEntry") {
          for (const authz::ServiceRef& s : target.waypoint->services) {
            applies |= s.namespace_name == p.namespace_name && s.name == ref.name;
          }
        }
      }
    } else if (p.target_refs.empty() && (p.namespace_name == options_.root_namespace ||
                                         p.namespace_name == target.namespace_name)) {
      // A root-namespace policy with a selector applies in every namespace, as in Istio.
      applies = !p.selector || SelectorMatches(*p.selector, target.labels);
    }
    if (applies) out.push_back(&provider);
  }
  return out;
}

std::vector<std::string> Authenticator::ApplicablePolicies(const authz::Workload& target) const {
  std::vector<std::string> keys;
  for (const Provider* p : Applicable(target)) {
    const std::string key = p->policy->Key();
    if (keys.empty() || keys.back() != key) keys.push_back(key);
  }
  return keys;
}

authz::HeaderMap Authenticator::ApplyMutations(const authz::HeaderMap& headers,
                                               const std::vector<HeaderMutation>& mutations) {
  authz::HeaderMap::Entries entries = headers.entries();
  for (const HeaderMutation& m : mutations) {
    if (m.op == HeaderMutation::Op::kRemove) {
      entries.erase(m.name);
    } else {
      entries[m.name] = m.value;
    }
  }
  authz::HeaderMap out;
  for (const auto& [name, value] : entries) out.Add(name, value);
  return out;
}

namespace {

// A token found at a location, and the providers that read that location.
struct FoundToken {
  TokenLocation location;
  std::string token;
};

}  // namespace

AuthnResult Authenticator::Authenticate(const authz::Workload& target,
                                        const authz::Request& request, absl::Time now,
                                        VerifiedJwtCache* cache) const {
  AuthnResult result;
  const std::vector<const Provider*> providers = Applicable(target);
  for (const Provider* p : providers) {
    const std::string key = p->policy->Key();
    if (result.policies.empty() || result.policies.back() != key) result.policies.push_back(key);
  }
  if (providers.empty()) {
    result.reason = "no RequestAuthentication applies";
    return result;
  }
  // The headers the rules write (outputPayloadToHeader, outputClaimToHeaders) are never taken
  // from the client, whatever the token: a request without one would otherwise carry a forged
  // claim (x-jwt-group: admins) to an application that trusts the waypoint to have set it.
  for (const Provider* p : providers) {
    if (!p->rule->output_payload_to_header.empty()) {
      result.header_mutations.push_back({HeaderMutation::Op::kRemove,
                                         absl::AsciiStrToLower(p->rule->output_payload_to_header),
                                         ""});
    }
    for (const ClaimToHeader& c : p->rule->output_claim_to_headers) {
      result.header_mutations.push_back(
          {HeaderMutation::Op::kRemove, absl::AsciiStrToLower(c.header), ""});
    }
  }
  if (IsCorsPreflight(request)) {
    result.cors_preflight = true;
    result.reason = "CORS preflight request: JWT authentication is skipped";
    return result;
  }
  const int64_t now_s = absl::ToUnixSeconds(now);

  // Verifies one token under one provider, in Envoy's order of checks. A token the cache saw
  // verify under the provider's current key set skips the parse and the signature; the rule's
  // and the clock's checks run again either way (jwt_cache.h).
  auto verify = [&](const Provider& provider, const FoundToken& found,
                    std::shared_ptr<const Jwt>* out, TokenCheck* check) -> JwtStatus {
    check->location = found.location;
    check->policy = provider.policy->Key();
    check->rule = provider.index;
    std::shared_ptr<const Jwks> keys = provider.inline_keys;
    if (keys == nullptr && remote_ != nullptr) keys = remote_->Get(provider.rule->jwks_uri);
    const VerifiedJwtCache::Entry* cached =
        cache != nullptr && keys != nullptr ? cache->Find(found.token, keys.get(), now_s) : nullptr;
    std::shared_ptr<const Jwt> jwt;
    if (cached != nullptr) {
      jwt = cached->jwt;
    } else {
      auto parsed = std::make_shared<Jwt>();
      if (JwtStatus s = ParseJwt(found.token, parsed.get()); s != JwtStatus::kOk) return s;
      jwt = std::move(parsed);
    }
    *out = jwt;
    check->issuer = jwt->iss;
    if (jwt->iss != provider.rule->issuer) return JwtStatus::kUnknownIssuer;
    if (JwtStatus s = CheckTime(*jwt, now_s); s != JwtStatus::kOk) return s;
    if (!AudienceAllowed(*jwt, provider.rule->audiences)) return JwtStatus::kAudienceNotAllowed;
    if (keys == nullptr) {
      check->detail = absl::StrCat("no key set from ", provider.rule->jwks_uri, " yet");
      return JwtStatus::kJwksFetchFail;
    }
    if (cached != nullptr) {
      check->detail = cached->detail;
      return JwtStatus::kOk;
    }
    bool matched = false;
    for (const Jwk& key : keys->keys) {
      if (!jwt->kid.empty() && !key.kid.empty() && key.kid != jwt->kid) continue;
      if (!key.alg.empty() && key.alg != AlgorithmName(jwt->alg)) continue;
      matched = true;
      if (verifier_->Verify(key, jwt->alg, jwt->signing_input, jwt->signature)) {
        check->detail = key.kid.empty() ? "signature verified"
                                        : absl::StrCat("signature verified with kid ", key.kid);
        if (cache != nullptr) cache->Insert(jwt, keys, check->detail, now_s);
        return JwtStatus::kOk;
      }
    }
    return matched ? JwtStatus::kVerificationFail : JwtStatus::kJwksKidAlgMismatch;
  };

  struct ChildOutcome {
    JwtStatus status = JwtStatus::kMissing;
    std::vector<TokenCheck> checks;
    std::vector<std::pair<const Provider*, std::shared_ptr<const Jwt>>> verified;
  };

  // One child of the requirement per provider: the tokens at its own locations, all valid under
  // it.
  std::vector<ChildOutcome> children;
  for (const Provider* provider : providers) {
    ChildOutcome child;
    for (const TokenLocation& loc : provider->locations) {
      std::optional<std::string> token = Extract(request, loc);
      if (!token) continue;
      std::shared_ptr<const Jwt> jwt;
      TokenCheck check;
      const JwtStatus s = verify(*provider, {loc, *token}, &jwt, &check);
      check.status = s;
      child.checks.push_back(check);
      if (s != JwtStatus::kOk) {
        child.status = s;
        break;
      }
      child.status = JwtStatus::kOk;
      child.verified.emplace_back(provider, std::move(jwt));
    }
    children.push_back(std::move(child));
  }
  const ChildOutcome* winner = nullptr;
  for (const ChildOutcome& c : children) {
    if (c.status == JwtStatus::kOk) {
      winner = &c;
      break;
    }
  }
  // allow_missing: every token at any location, each under the provider of its issuer among
  // those reading that location; no token at all passes. Only needed when no provider's own
  // child passed: the first child that passes decides, and its checks are the explanation.
  ChildOutcome allow_missing;
  if (winner == nullptr) {
    std::vector<FoundToken> all;
    for (const Provider* provider : providers) {
      for (const TokenLocation& loc : provider->locations) {
        if (std::any_of(all.begin(), all.end(),
                        [&loc](const FoundToken& f) { return f.location == loc; })) {
          continue;
        }
        if (std::optional<std::string> token = Extract(request, loc)) all.push_back({loc, *token});
      }
    }
    allow_missing.status = JwtStatus::kOk;
    for (const FoundToken& found : all) {
      // Which provider: the issuer decides, so the token is parsed (or found parsed) first.
      std::shared_ptr<const Jwt> probe =
          cache != nullptr ? cache->FindParsed(found.token, now_s) : nullptr;
      JwtStatus parsed = JwtStatus::kOk;
      if (probe == nullptr) {
        auto fresh = std::make_shared<Jwt>();
        parsed = ParseJwt(found.token, fresh.get());
        probe = std::move(fresh);
      }
      const Provider* chosen = nullptr;
      if (parsed == JwtStatus::kOk) {
        for (const Provider* provider : providers) {
          if (provider->rule->issuer == probe->iss &&
              std::find(provider->locations.begin(), provider->locations.end(), found.location) !=
                  provider->locations.end()) {
            chosen = provider;
            break;
          }
        }
      }
      TokenCheck check;
      check.location = found.location;
      JwtStatus s = parsed;
      std::shared_ptr<const Jwt> jwt;
      if (parsed == JwtStatus::kOk && chosen == nullptr) {
        check.issuer = probe->iss;
        s = JwtStatus::kUnknownIssuer;
      } else if (chosen != nullptr) {
        s = verify(*chosen, found, &jwt, &check);
      }
      check.status = s;
      allow_missing.checks.push_back(check);
      if (s != JwtStatus::kOk) {
        allow_missing.status = s;
        break;
      }
      allow_missing.verified.emplace_back(chosen, std::move(jwt));
    }
    if (allow_missing.status == JwtStatus::kOk) winner = &allow_missing;
  }

  // Explanations show every token once: the allow_missing pass looked at all of them.
  result.checks = allow_missing.checks;
  if (winner != nullptr) {
    if (winner->verified.empty()) {
      result.reason =
          "no token in any location the rules read: the request continues "
          "unauthenticated (no request principal)";
      return result;
    }
    result.checks = winner->checks;
    // The output headers were removed above; the valid tokens set them.
    for (size_t i = 0; i < winner->verified.size(); ++i) {
      const auto& [provider, jwt] = winner->verified[i];
      AddMutations(*provider->rule, winner->checks[i].location, *jwt, &result.header_mutations);
    }
    const auto& [provider, jwt_ptr] = winner->verified.front();
    const Jwt& jwt = *jwt_ptr;
    authz::JwtAuth auth;
    auth.principal = absl::StrCat(jwt.iss, "/", jwt.sub);
    auth.audiences = jwt.audiences;
    if (const authz::ClaimValue* azp = jwt.claims.Find("azp"); azp && azp->AsString()) {
      auth.presenter = *azp->AsString();
    }
    auth.claims = SplitClaims(jwt.claims, *provider->rule);
    result.auth = std::move(auth);
    result.reason = absl::StrCat("valid token from ", winner->checks.front().location.ToString(),
                                 " (RequestAuthentication ", provider->policy->Key(), " jwtRules[",
                                 provider->index, "], issuer ", provider->rule->issuer,
                                 "): principal ", result.auth->principal);
    return result;
  }

  // Rejected. The status: a real failure beats "not for this provider" (unknown issuer), which
  // beats "missing"; among real failures the allow_missing pass (every token) speaks last.
  JwtStatus status = JwtStatus::kMissing;
  const TokenCheck* decisive = nullptr;
  auto consider = [&status, &decisive](const ChildOutcome& c) {
    if (c.status == JwtStatus::kMissing || c.checks.empty()) return;
    const bool unknown = c.status == JwtStatus::kUnknownIssuer;
    if (unknown && status != JwtStatus::kMissing && status != JwtStatus::kUnknownIssuer) return;
    status = c.status;
    decisive = &c.checks.back();
  };
  for (const ChildOutcome& c : children) consider(c);
  consider(allow_missing);
  if (decisive != nullptr) {
    // Show the checks of the pass that decided, ending with the decisive token.
    for (const ChildOutcome& c : children) {
      if (!c.checks.empty() && &c.checks.back() == decisive) result.checks = c.checks;
    }
  }
  result.allowed = false;
  result.status = status;
  result.http_status = status == JwtStatus::kAudienceNotAllowed ? 403 : 401;
  result.body = std::string(StatusText(status));
  std::string path = request.path.substr(0, request.path.find_first_of("?#"));
  result.www_authenticate =
      absl::StrCat("Bearer realm=\"", options_.scheme, "://", request.host, path, "\"");
  if (status != JwtStatus::kMissing)
    absl::StrAppend(&result.www_authenticate, ", error=\"invalid_token\"");
  if (decisive != nullptr) {
    result.reason = absl::StrCat("token from ", decisive->location.ToString());
    if (!decisive->policy.empty()) {
      absl::StrAppend(&result.reason, " checked by RequestAuthentication ", decisive->policy,
                      " jwtRules[", decisive->rule, "]");
    } else if (!decisive->issuer.empty()) {
      absl::StrAppend(&result.reason, " has issuer ", decisive->issuer,
                      ", which no rule reading that location accepts");
    }
    absl::StrAppend(&result.reason, ": ", result.body);
    if (!decisive->detail.empty()) absl::StrAppend(&result.reason, " (", decisive->detail, ")");
  } else {
    result.reason = result.body;
  }
  return result;
}

}  // namespace ambit::authn
