#pragma once

// Checks of a loaded configuration for what is valid but probably not what its author meant: a
// pod of this node in the mesh without an address, a label or annotation key that looks like a
// misspelled ambit or Istio key (or sits in the wrong place, or is an Istio key ambit does not act
// on), a policy in a namespace nothing lives in, a policy source naming an identity no known
// workload has. Each finding is a warning (ConfigError::warning) naming file, object and field;
// nothing is left out of the configuration because of one. Pure functions; thread-compatible.

#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "agent/config/error.h"
#include "agent/config/security_config.h"
#include "agent/state/model.h"

namespace ambit::config {

struct Findings {
  std::vector<ConfigError> workloads;  // Pods (of this node) and Namespaces
  std::vector<ConfigError> policies;   // AuthorizationPolicies and PeerAuthentications

  // The messages of `errors` by object ("Pod backend/api" -> ["field ...: ..."]), as the admin
  // views list them next to the object.
  static std::map<std::string, std::vector<std::string>> ByObject(
      const std::vector<ConfigError>& errors);
};

// Pods are checked only when their spec.nodeName is node_name: a peer's labels are its own node's
// business, and a large cluster's peers would cost every load a pass over every label.
Findings Lint(const state::ClusterState& state, const SecurityConfig& security,
              std::string_view node_name);

// The policy half of Lint, each finding with its kind (ambitctl policy diff lists them by kind).
inline constexpr char kUnknownNamespace[] = "unknown-namespace";
inline constexpr char kUnknownServiceAccount[] = "unknown-service-account";
inline constexpr char kSpiffePrefix[] = "spiffe-prefix";
struct PolicyFinding {
  ConfigError error;  // a warning: file, object ("AuthorizationPolicy ns/name"), field, message
  const char* kind;   // one of the above
};
std::vector<PolicyFinding> LintPolicyFindings(const state::ClusterState& state,
                                              const SecurityConfig& security);

// The keys ambit reads, by where it reads them; README "Istio labels and annotations" lists them.
const std::set<std::string, std::less<>>& KnownPodLabels();
const std::set<std::string, std::less<>>& KnownPodAnnotations();

// Whether Lint would say something about this Pod annotation (a misspelled, misplaced or
// unhonoured key): the parser keeps such an annotation where it drops every other one ambit does
// not read, so that Lint still sees it. Rare, so it costs no memory worth counting.
bool LintFlagsPodAnnotation(const std::string& key, const std::string& value);

// Lets each warning be logged once while it lasts rather than on every load: First(text) is true
// for a warning the previous load did not have. EndLoad() closes a load.
class RepeatFilter {
 public:
  bool First(const std::string& text) {
    current_.insert(text);
    return !previous_.contains(text);
  }
  void EndLoad() {
    previous_ = std::move(current_);
    current_.clear();
  }

 private:
  std::set<std::string> previous_, current_;
};

}  // namespace ambit::config
