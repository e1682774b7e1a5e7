#pragma once

// meshConfig trustDomain and trustDomainAliases as istiod applies them to AuthorizationPolicy
// (pilot/pkg/security/trustdomain): during a trust-domain migration a principal written with the
// mesh's trust domain, an alias, or "cluster.local" (which always stands for the local trust
// domain) matches the same identity in every trust domain of the bundle, and a trustDomains value
// naming one of them matches all of them. No I/O; thread-compatible value types.

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "agent/authz/model.h"

namespace ambit::authz {

// Istio's stand-in for the local trust domain in policies.
inline constexpr absl::string_view kClusterLocalTrustDomain = "cluster.local";

struct TrustDomainBundle {
  // The mesh's trust domain first, then its aliases (meshConfig order).
  std::vector<std::string> trust_domains = {std::string(kClusterLocalTrustDomain)};

  static TrustDomainBundle Of(absl::string_view trust_domain,
                              const std::vector<std::string>& aliases);

  // istiod's ReplaceTrustDomainAliases: each "<td>/ns/<ns>/sa/<sa>" whose <td> is in the bundle
  // (a wildcard on either side counts) or is cluster.local becomes one principal per trust
  // domain of the bundle; "*/ns/..." and values of another shape stay as written.
  std::vector<std::string> ExpandPrincipals(const std::vector<std::string>& principals) const;
  // istiod's ExpandTrustDomainAliases: a value equal to a trust domain of the bundle becomes all
  // of them; duplicates are dropped, first occurrence kept.
  std::vector<std::string> ExpandTrustDomains(const std::vector<std::string>& values) const;

  // The policy with principals, notPrincipals, trustDomains, notTrustDomains and the conditions
  // source.principal and source.trustDomain expanded as above (istiod's MigrateTrustDomain).
  Policy Migrate(const Policy& policy) const;

  friend bool operator==(const TrustDomainBundle&, const TrustDomainBundle&) = default;
};

}  // namespace ambit::authz
