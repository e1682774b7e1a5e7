#include "agent/authz/trust_domain.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace ambit::authz {
namespace {

// istiod's prefixMatch / suffixMatch: `pattern` ends (starts) with '*' and `a` has the rest as
// prefix (suffix).
bool PrefixMatch(absl::string_view a, absl::string_view pattern) {
  return absl::ConsumeSuffix(&pattern, "*") && absl::StartsWith(a, pattern);
}
bool SuffixMatch(absl::string_view a, absl::string_view pattern) {
  return absl::ConsumePrefix(&pattern, "*") && absl::EndsWith(a, pattern);
}

// istiod's stringMatch: equal, "*" in the list, or a wildcard on either side.
bool StringMatch(absl::string_view a, const std::vector<std::string>& list) {
  for (const std::string& s : list) {
    if (a == s || s == "*" || PrefixMatch(a, s) || PrefixMatch(s, a) || SuffixMatch(a, s) ||
        SuffixMatch(s, a)) {
      return true;
    }
  }
  return false;
}

void AppendUnique(std::vector<std::string>* out, std::string value) {
  if (std::find(out->begin(), out->end(), value) == out->end()) out->push_back(std::move(value));
}

}  // namespace

TrustDomainBundle TrustDomainBundle::Of(absl::string_view trust_domain,
                                        const std::vector<std::string>& aliases) {
  TrustDomainBundle b;
  b.trust_domains = {std::string(trust_domain)};
  b.trust_domains.insert(b.trust_domains.end(), aliases.begin(), aliases.end());
  return b;
}

std::vector<std::string> TrustDomainBundle::ExpandPrincipals(
    const std::vector<std::string>& principals) const {
  std::vector<std::string> out;
  for (const std::string& principal : principals) {
    std::vector<absl::string_view> parts = absl::StrSplit(principal, '/');
    // Only "<td>/ns/<ns>/sa/<sa>" (five parts, as istiod counts them) names a trust domain; "*"
    // there does not enforce one.
    if (parts.size() != 5 || parts[0] == "*") {
      out.push_back(principal);
      continue;
    }
    const absl::string_view td = parts[0];
    if (!StringMatch(td, trust_domains) && td != kClusterLocalTrustDomain) {
      out.push_back(principal);  // another mesh's identity: kept as written
      continue;
    }
    const absl::string_view rest = absl::string_view(principal).substr(td.size());
    std::vector<std::string> expanded;
    for (const std::string& bundle_td : trust_domains) {
      // A "*suffix" trust domain matching this one is kept as written (it covers both already).
      AppendUnique(&expanded,
                   SuffixMatch(bundle_td, td) ? principal : absl::StrCat(bundle_td, rest));
    }
    out.insert(out.end(), expanded.begin(), expanded.end());
  }
  return out;
}

std::vector<std::string> TrustDomainBundle::ExpandTrustDomains(
    const std::vector<std::string>& values) const {
  std::vector<std::string> out;
  for (const std::string& v : values) {
    if (std::find(trust_domains.begin(), trust_domains.end(), v) != trust_domains.end()) {
      for (const std::string& td : trust_domains) AppendUnique(&out, td);
    } else {
      AppendUnique(&out, v);
    }
  }
  return out;
}

Policy TrustDomainBundle::Migrate(const Policy& policy) const {
  Policy out = policy;
  if (!out.rules.has_value()) return out;
  for (Rule& rule : *out.rules) {
    for (Source& s : rule.from) {
      s.principals = ExpandPrincipals(s.principals);
      s.not_principals = ExpandPrincipals(s.not_principals);
      s.trust_domains = ExpandTrustDomains(s.trust_domains);
      s.not_trust_domains = ExpandTrustDomains(s.not_trust_domains);
    }
    for (Condition& c : rule.when) {
      if (c.key == "source.principal") {
        c.values = ExpandPrincipals(c.values);
        c.not_values = ExpandPrincipals(c.not_values);
      } else if (c.key == "source.trustDomain") {
        c.values = ExpandTrustDomains(c.values);
        c.not_values = ExpandTrustDomains(c.not_values);
      }
    }
  }
  return out;
}

}  // namespace ambit::authz
