#include "agent/config/lint.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "agent/state/waypoint.h"

namespace ambit::config {
namespace {

constexpr absl::string_view kAmbitPrefix = "ambit.dev/";
constexpr std::string_view kDataplaneModeLabel = state::kDataplaneModeLabel;

// Keys read from Namespaces' labels.
const std::set<std::string, std::less<>>& KnownNamespaceLabels() {
  static const auto* keys = new std::set<std::string, std::less<>>{
      std::string(kDataplaneModeLabel), state::kUseWaypointLabel,
      state::kUseWaypointNamespaceLabel};
  return *keys;
}

// Istio keys with a meaning in ambient mode that ambit does not give them, and what happens
// instead.
struct Unhonoured {
  absl::string_view key;
  absl::string_view only_value;  // warn only for this value; empty: any value
  absl::string_view instead;
};
constexpr Unhonoured kUnhonouredAnnotations[] = {
    {"ambient.istio.io/bypass-inbound-capture", "",
     "ambit captures the pod's inbound traffic all the same (PeerAuthentication and "
     "AuthorizationPolicy apply to it)"},
    {"ambient.istio.io/dns-capture", "true",
     "ambit has no DNS proxy: name look-ups are not captured (with istio-cni's DNS capture on, "
     "they fail; see README, Running ambit with istio-cni)"},
};

// Levenshtein distance, cut off above `limit` (only "is it a near miss" matters). Hand-written:
// none of ambit's libraries (abseil included) offers one, and it is a dozen lines.
size_t EditDistance(absl::string_view a, absl::string_view b, size_t limit) {
  if (a.size() > b.size() + limit || b.size() > a.size() + limit) return limit + 1;
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    size_t best = row[0];
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
      best = std::min(best, row[j]);
    }
    if (best > limit) return limit + 1;
  }
  return row[b.size()];
}

// The ambit and Istio keys a near miss is measured against (unprefixed ones such as "app" are
// left out: every short label would be a near miss of one).
const std::vector<std::string>& TypoTargets() {
  static const auto* keys = [] {
    auto* v = new std::vector<std::string>;
    for (const auto& k : KnownPodAnnotations()) v->push_back(k);
    for (const auto& k : KnownPodLabels()) {
      if (absl::StrContains(k, "istio.io/")) v->push_back(k);
    }
    return v;
  }();
  return *keys;
}

std::string NearMiss(absl::string_view key) {
  const std::string lower = absl::AsciiStrToLower(key);
  // A known name under a wrong ambit or Istio domain ("ambit.io/netns") is a miss too.
  const size_t slash = lower.rfind('/');
  if (slash != std::string::npos) {
    const absl::string_view domain = absl::string_view(lower).substr(0, slash);
    const absl::string_view name = absl::string_view(lower).substr(slash);
    for (const std::string& target : TypoTargets()) {
      if (absl::EndsWith(target, name) &&
          (absl::StrContains(domain, "ambit") || absl::StrContains(domain, "istio"))) {
        return target;
      }
    }
  }
  std::string best;
  size_t best_distance = 3;
  for (const std::string& target : TypoTargets()) {
    const size_t d = EditDistance(lower, target, 2);
    if (d < best_distance) {
      best_distance = d;
      best = target;
    }
  }
  return best;
}

struct Place {
  absl::string_view field;  // "metadata.labels"
  const std::set<std::string, std::less<>>& known;
  const std::set<std::string, std::less<>>& other_known;  // read from the other map
  absl::string_view other_field;
};

void CheckKeys(const std::map<std::string, std::string>& keys, const Place& place,
               const std::string& file, const std::string& object, std::vector<ConfigError>* out) {
  auto warn = [&](const std::string& key, std::string message) {
    out->push_back({file, object, absl::StrCat(place.field, "[", key, "]"), std::move(message),
                    /*warning=*/true});
  };
  for (const auto& [key, value] : keys) {
    if (place.known.contains(key)) {
      if (key == kDataplaneModeLabel && value != "ambient" && value != "none") {
        warn(key, absl::StrCat("'", value,
                               "' is neither ambient nor none; ambit (as Istio) treats it as "
                               "not ambient"));
      }
      continue;
    }
    if (place.other_known.contains(key)) {
      warn(key, absl::StrCat("ambit reads this key from ", place.other_field, ", not from ",
                             place.field, "; here it is ignored"));
      continue;
    }
    bool unhonoured = false;
    for (const Unhonoured& u : kUnhonouredAnnotations) {
      if (key != u.key) continue;
      unhonoured = true;
      if (u.only_value.empty() || value == u.only_value) {
        warn(key, absl::StrCat("Istio's key is not honoured: ", u.instead));
      }
    }
    if (unhonoured) continue;
    if (const std::string near = NearMiss(key); !near.empty()) {
      warn(key, absl::StrCat("not a key ambit reads; did you mean ", near, "? (ignored)"));
      continue;
    }
    if (absl::StartsWith(key, kAmbitPrefix)) {
      warn(key, absl::StrCat("not a key ambit reads (it reads ",
                             absl::StrJoin(KnownPodAnnotations(), " and "),
                             " from Pod annotations); ignored"));
    }
  }
}

void LintPods(const state::ClusterState& state, std::string_view node_name,
              std::vector<ConfigError>* out) {
  static const std::set<std::string, std::less<>> kNone;
  const Place labels{"metadata.labels", KnownPodLabels(), KnownPodAnnotations(),
                     "metadata.annotations"};
  const Place annotations{"metadata.annotations", KnownPodAnnotations(), KnownPodLabels(),
                          "metadata.labels"};
  const Place ns_labels{"metadata.labels", KnownNamespaceLabels(), kNone, ""};
  const Place ns_annotations{"metadata.annotations", kNone, KnownNamespaceLabels(),
                             "metadata.labels"};
  for (const auto& [name, ns] : state.namespaces) {
    const std::string object = absl::StrCat("Namespace ", name);
    CheckKeys(ns.labels, ns_labels, ns.source_file, object, out);
    CheckKeys(ns.annotations, ns_annotations, ns.source_file, object, out);
  }
  if (node_name.empty()) return;
  for (const auto& [key, pod] : state.pods) {
    if (pod.node_name != node_name) continue;
    const std::string object = absl::StrCat("Pod ", key);
    CheckKeys(pod.labels, labels, pod.source_file, object, out);
    CheckKeys(pod.annotations, annotations, pod.source_file, object, out);
    if (pod.ips.empty() && state::InMesh(pod, state)) {
      out->push_back(
          {pod.source_file, object, "status.podIPs",
           pod.netns_path.empty()
               ? std::string("has no address (status.podIPs and status.podIP are missing or "
                             "empty): its network namespace is found by IP, so it cannot be "
                             "enrolled until the pod lists its IPs")
               : std::string("has no address (status.podIPs and status.podIP are missing or "
                             "empty): it is enrolled, but no peer can address it and no policy "
                             "can name its address until the pod lists its IPs"),
           /*warning=*/true});
    }
  }
}

// "cluster.local/ns/backend/sa/api" -> "backend/api"; "" when it is not of that form.
std::string PrincipalWorkload(absl::string_view principal) {
  std::vector<absl::string_view> parts = absl::StrSplit(principal, '/');
  if (parts.size() != 5 || parts[1] != "ns" || parts[3] != "sa") return "";
  return absl::StrCat(parts[2], "/", parts[4]);
}

}  // namespace

std::vector<PolicyFinding> LintPolicyFindings(const state::ClusterState& state,
                                              const SecurityConfig& security) {
  std::vector<PolicyFinding> out;
  const std::string& root = state.mesh.root_namespace;
  std::set<std::string, std::less<>> namespaces, accounts;  // accounts: "namespace/sa"
  for (const auto& [name, ns] : state.namespaces) namespaces.insert(name);
  for (const auto& [key, svc] : state.services) namespaces.insert(svc.namespace_name);
  for (const auto& [key, pod] : state.pods) {
    namespaces.insert(pod.namespace_name);
    accounts.insert(absl::StrCat(pod.namespace_name, "/", pod.service_account));
  }
  auto add = [&](const std::string& file, const std::string& object, std::string field,
                 const char* kind, std::string message) {
    out.push_back({{file, object, std::move(field), std::move(message), /*warning=*/true}, kind});
  };
  auto check_namespace = [&](const std::string& ns, const std::string& file,
                             const std::string& object) {
    if (ns == root || namespaces.contains(ns)) return;
    add(file, object, "metadata.namespace", kUnknownNamespace,
        absl::StrCat("namespace ", ns,
                     " has no Namespace object, pod or service in the configuration: the "
                     "policy applies to nothing (a misspelled namespace?)"));
  };
  for (const auto& [key, pa] : security.peer_authentications) {
    check_namespace(pa.namespace_name, pa.source_file, absl::StrCat("PeerAuthentication ", key));
  }
  for (const auto& entry : security.authorization_policies) {
    // Not a structured binding: clang 14 (the fuzz build) cannot capture one in a lambda.
    const std::string& key = entry.first;
    const authz::Policy& p = entry.second;
    const std::string object = absl::StrCat("AuthorizationPolicy ", key);
    check_namespace(p.namespace_name, p.source_file, object);
    if (!p.rules.has_value()) continue;
    for (size_t r = 0; r < p.rules->size(); ++r) {
      const authz::Rule& rule = (*p.rules)[r];
      for (size_t f = 0; f < rule.from.size(); ++f) {
        const authz::Source& s = rule.from[f];
        const std::string field = absl::StrCat("spec.rules[", r, "].from[", f, "].source.");
        auto warn = [&](absl::string_view list, size_t i, const char* kind, std::string message) {
          add(p.source_file, object, absl::StrCat(field, list, "[", i, "]"), kind,
              std::move(message));
        };
        // Each list and its negation: a value that matches nothing makes a notX condition
        // always true, which is as likely a mistake. Wildcards ("*", "prefix*", "*suffix") are
        // left alone: they may match workloads to come.
        const std::pair<const char*, const std::vector<std::string>*> principals[] = {
            {"principals", &s.principals}, {"notPrincipals", &s.not_principals}};
        for (const auto& [list, values] : principals) {
          for (size_t i = 0; i < values->size(); ++i) {
            const std::string& principal = (*values)[i];
            if (absl::StartsWith(principal, "spiffe://")) {
              warn(list, i, kSpiffePrefix,
                   absl::StrCat("'", principal,
                                "' starts with spiffe://, which Istio principals never do "
                                "(write '",
                                principal.substr(9), "'): it never matches"));
              continue;
            }
            if (absl::StrContains(principal, '*')) continue;
            const std::string workload = PrincipalWorkload(principal);
            if (workload.empty() || accounts.contains(workload)) continue;
            warn(list, i, kUnknownServiceAccount,
                 absl::StrCat("'", principal,
                              "': no known workload has this identity (no pod in namespace ",
                              workload.substr(0, workload.find('/')), " runs as service account ",
                              workload.substr(workload.find('/') + 1), ")"));
          }
        }
        const std::pair<const char*, const std::vector<std::string>*> nss[] = {
            {"namespaces", &s.namespaces}, {"notNamespaces", &s.not_namespaces}};
        for (const auto& [list, values] : nss) {
          for (size_t i = 0; i < values->size(); ++i) {
            const std::string& ns = (*values)[i];
            if (absl::StrContains(ns, '*') || namespaces.contains(ns)) continue;
            warn(list, i, kUnknownNamespace,
                 absl::StrCat("'", ns,
                              "': no Namespace object, pod or service in the "
                              "configuration has this namespace"));
          }
        }
        const std::pair<const char*, const std::vector<std::string>*> sas[] = {
            {"serviceAccounts", &s.service_accounts},
            {"notServiceAccounts", &s.not_service_accounts}};
        for (const auto& [list, values] : sas) {
          for (size_t i = 0; i < values->size(); ++i) {
            const std::string& sa = (*values)[i];
            if (absl::StrContains(sa, '*')) continue;
            const std::string account =
                absl::StrContains(sa, '/') ? sa : absl::StrCat(p.namespace_name, "/", sa);
            if (accounts.contains(account)) continue;
            warn(list, i, kUnknownServiceAccount,
                 absl::StrCat("'", sa, "': no known workload runs as service account ", account));
          }
        }
      }
    }
  }
  return out;
}

const std::set<std::string, std::less<>>& KnownPodLabels() {
  static const auto* keys = new std::set<std::string, std::less<>>{
      std::string(kDataplaneModeLabel),
      state::kUseWaypointLabel,
      state::kUseWaypointNamespaceLabel,
      state::kGatewayNameLabel,
      "service.istio.io/canonical-name",
      "service.istio.io/canonical-revision",
      "app",
      "version",
      "app.kubernetes.io/name",
      "app.kubernetes.io/version",
  };
  return *keys;
}

const std::set<std::string, std::less<>>& KnownPodAnnotations() {
  static const auto* keys = new std::set<std::string, std::less<>>{
      std::string(state::kNetnsAnnotation), state::kWaypointBypassAnnotation};
  return *keys;
}

bool LintFlagsPodAnnotation(const std::string& key, const std::string& value) {
  const Place annotations{"metadata.annotations", KnownPodAnnotations(), KnownPodLabels(),
                          "metadata.labels"};
  std::vector<ConfigError> found;
  CheckKeys({{key, value}}, annotations, "", "", &found);
  return !found.empty();
}

std::map<std::string, std::vector<std::string>> Findings::ByObject(
    const std::vector<ConfigError>& errors) {
  std::map<std::string, std::vector<std::string>> out;
  for (const ConfigError& e : errors) {
    out[e.object].push_back(e.field.empty() ? e.message
                                            : absl::StrCat("field ", e.field, ": ", e.message));
  }
  return out;
}

Findings Lint(const state::ClusterState& state, const SecurityConfig& security,
              std::string_view node_name) {
  Findings f;
  LintPods(state, node_name, &f.workloads);
  for (PolicyFinding& finding : LintPolicyFindings(state, security)) {
    f.policies.push_back(std::move(finding.error));
  }
  return f;
}

}  // namespace ambit::config
