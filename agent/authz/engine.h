#pragma once

// The authorization engine: Istio's AuthorizationPolicy semantics over compiled policies, with no
// I/O. One Engine is built per configuration snapshot and is immutable afterwards, so it is
// thread-safe: any number of threads may call Evaluate concurrently.
//
// Which policies apply (Istio and ztunnel):
//   L4 (the node tunnel): policies without targetRefs whose action is ALLOW or DENY, in the
//     mesh root namespace (all workloads) or the workload's namespace, whose selector (if any)
//     is a subset of the workload's labels. CUSTOM, AUDIT and targetRefs policies are not
//     enforced by the tunnel (reported by LoadWarnings).
//   L7 at a waypoint (Workload::waypoint set): only targetRefs attach: Gateway (the waypoint),
//     GatewayClass istio-waypoint (root namespace only), Service / ServiceEntry (the services
//     the request addresses); selector policies are ignored. Every action applies.
//   L7 without a waypoint (a sidecar-style HTTP proxy): as L4 for attachment, every action.
// Order: CUSTOM (ext_authz, see ext_authz.h), then DENY, then ALLOW. No ALLOW policy: allow. With
// ALLOW policies, one must match. A policy without rules never matches; `rules: [{}]` always does.
// AUDIT never changes the decision. Dry-run policies are evaluated and reported, never enforced.
//
// L4 reduction (as istiod converts policies for ztunnel): an ALLOW rule that uses any HTTP
// attribute is dropped (it can never allow); a DENY rule keeps its L4 fields, and a from/to/when
// entry made only of HTTP attributes never matches. The L4 attributes are principals, namespaces,
// serviceAccounts, trustDomains, ipBlocks, ports and the conditions source.ip, source.namespace,
// source.principal, source.serviceAccount, source.trustDomain, destination.ip, destination.port
// (all with their not* forms).

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/authz/compile.h"
#include "agent/authz/model.h"
#include "agent/authz/path.h"
#include "agent/authz/request.h"
#include "agent/authz/trust_domain.h"

namespace ambit::authz {

struct EngineOptions {
  std::string root_namespace = "istio-system";                      // MeshConfig rootNamespace
  PathNormalization path_normalization = PathNormalization::kBase;  // MeshConfig pathNormalization
  // MeshConfig trustDomain and trustDomainAliases: Create migrates every policy's principals and
  // trust domains through it, as istiod does (trust_domain.h).
  TrustDomainBundle trust_domains = {};
};

struct ServiceRef {
  std::string name;
  std::string namespace_name;
};

// The waypoint enforcing an L7 request and the services (or ServiceEntries) it addresses.
struct WaypointRef {
  std::string name;  // the waypoint's Gateway
  std::string namespace_name;
  std::vector<ServiceRef> services;
};

// The destination workload.
struct Workload {
  std::string namespace_name;
  std::map<std::string, std::string> labels;
  std::optional<WaypointRef> waypoint;  // set: the decision is made at that waypoint (L7)
};

enum class DecisionReason {
  kDefaultAllow,      // no ALLOW policy applies and no DENY matched
  kAllowMatched,      // an ALLOW policy matched
  kDenyMatched,       // a DENY policy matched
  kNoAllowMatched,    // ALLOW policies apply and none matched
  kExtAuthzRequired,  // a CUSTOM policy matched: the provider decides (see ext_authz.h)
  kExtAuthzDenied,    // the provider denied (or failed): ResolveExtAuthz
  kBadRequest,        // the request is rejected before authorization (path with %00)
};

// "default_allow", "allow_matched", "deny_matched", ...
absl::string_view DecisionReasonName(DecisionReason reason);

// The outcome of DENY and ALLOW evaluation.
struct Verdict {
  bool allowed = true;
  DecisionReason reason = DecisionReason::kDefaultAllow;
  std::string policy;  // "namespace/name" that decided; empty for default allow / none matched
  int rule_index = -1;
  std::string explanation;
};

// A matched CUSTOM policy: the request goes to `provider`; if it allows, `if_allowed` applies.
struct ExtAuthzRequirement {
  std::string provider;
  std::string policy;
  int rule_index = -1;
  Verdict if_allowed;
};

struct PolicyMatch {
  std::string policy;
  Action action = Action::kAllow;
  int rule_index = -1;
  std::string explanation;
};

// What a dry-run policy would have done.
struct DryRunResult {
  std::string policy;
  Action action = Action::kAllow;
  bool matched = false;
  int rule_index = -1;
  std::string explanation;
};

// One applicable policy in a traced evaluation, for `ambitctl policy check`.
struct PolicyTrace {
  std::string policy;
  Action action = Action::kAllow;
  bool dry_run = false;
  bool matched = false;
  int rule_index = -1;
  std::vector<std::string> notes;  // per rule: why it matched or not
};

struct Decision {
  bool allowed = true;
  DecisionReason reason = DecisionReason::kDefaultAllow;
  std::string policy;  // "namespace/name" that decided, empty when none did
  int rule_index = -1;
  // One sentence, e.g. `denied by DENY policy foo/bar rule 0: source.namespace "x" matched
  // namespaces ["x"]`.
  std::string explanation;
  std::optional<ExtAuthzRequirement> ext_authz;  // reason == kExtAuthzRequired
  std::vector<PolicyMatch> audits;               // matched AUDIT policies (L7)
  std::vector<DryRunResult> dry_run;             // every applicable dry-run policy
  // Set when a dry-run policy applies: the decision had the dry-run policies been enforced (with
  // the enforced ones; CUSTOM dry-run policies are reported but not part of it).
  std::optional<bool> dry_run_allowed;
  std::vector<PolicyTrace> trace;  // Explain() only
};

class Engine {
 public:
  // Fails on two policies with the same namespace/name. Policies are migrated through
  // options.trust_domains first (a migrated policy is compiled again).
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::vector<CompiledPolicy> policies,
                                                        EngineOptions options = {});

  // request.layer selects L4 or L7 semantics.
  Decision Evaluate(const Workload& target, const Request& request) const;
  // As Evaluate, plus a trace of every applicable policy.
  Decision Explain(const Workload& target, const Request& request) const;

  // Once per policy, sorted: what the node tunnel (L4) will not enforce as written.
  const std::vector<std::string>& LoadWarnings() const { return warnings_; }

  // The policies that apply to `target` at `layer` (dry-run included), in evaluation order.
  std::vector<const CompiledPolicy*> ApplicablePolicies(const Workload& target, Layer layer) const;

  const EngineOptions& options() const { return options_; }

 private:
  // engine.cc: per-namespace candidate lists and precompiled matchers, built once in the
  // constructor from the members below and read-only afterwards.
  struct Index;

  Engine(std::vector<CompiledPolicy> policies, EngineOptions options);
  Decision Run(const Workload& target, const Request& request, bool trace) const;

  EngineOptions options_;
  std::vector<CompiledPolicy> policies_;  // sorted by namespace/name
  // Policies without targetRefs, by namespace (indexes into policies_, ascending).
  std::map<std::string, std::vector<size_t>> by_namespace_;
  // Policies with targetRefs, by "<namespace>/<kind>/<name>".
  std::map<std::string, std::vector<size_t>> by_target_;
  std::vector<std::string> warnings_;
  std::shared_ptr<const Index> index_;
};

}  // namespace ambit::authz
