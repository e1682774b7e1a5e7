#pragma once

// Istio's AuthorizationPolicy (security.istio.io/v1 and v1beta1) as plain value types. Strings are
// kept exactly as written in the resource; nothing here is parsed or validated. `Compile` (see
// compile.h) validates a Policy and prepares its parsed form. The config layer fills these structs
// from YAML; the engine never sees YAML or Protobuf. Thread-compatible value types. Rule members
// default to {} so a designated initializer names only what it sets: Source{.namespaces = {"a"}}.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace ambit::authz {

// The annotation that turns a policy into a dry run: evaluated and reported, never enforced.
inline constexpr absl::string_view kDryRunAnnotation = "istio.io/dry-run";
// The GatewayClass a root-namespace policy targets to apply to every waypoint.
inline constexpr absl::string_view kWaypointGatewayClass = "istio-waypoint";

enum class Action { kAllow, kDeny, kAudit, kCustom };

// "ALLOW", "DENY", "AUDIT", "CUSTOM".
absl::string_view ActionName(Action action);

// rules[].from[].source. Fields are ANDed; the values of one field are ORed.
struct Source {
  std::vector<std::string> principals = {};
  std::vector<std::string> not_principals = {};
  std::vector<std::string> request_principals = {};
  std::vector<std::string> not_request_principals = {};
  std::vector<std::string> namespaces = {};
  std::vector<std::string> not_namespaces = {};
  std::vector<std::string> service_accounts = {};  // "<namespace>/<name>" or "<name>"
  std::vector<std::string> not_service_accounts = {};
  std::vector<std::string> ip_blocks = {};
  std::vector<std::string> not_ip_blocks = {};
  std::vector<std::string> remote_ip_blocks = {};
  std::vector<std::string> not_remote_ip_blocks = {};
  // The trust domain of the peer's SPIFFE ID: exact, "prefix*", "*suffix" or "*" (presence); a
  // wildcard stays within the trust-domain segment.
  std::vector<std::string> trust_domains = {};
  std::vector<std::string> not_trust_domains = {};

  friend bool operator==(const Source&, const Source&) = default;
};

// rules[].to[].operation. Fields are ANDed; the values of one field are ORed.
struct Operation {
  std::vector<std::string> hosts = {};
  std::vector<std::string> not_hosts = {};
  std::vector<std::string> ports = {};
  std::vector<std::string> not_ports = {};
  std::vector<std::string> methods = {};
  std::vector<std::string> not_methods = {};
  std::vector<std::string> paths = {};
  std::vector<std::string> not_paths = {};

  friend bool operator==(const Operation&, const Operation&) = default;
};

// rules[].when[]: one attribute from Istio's "Authorization Policy Conditions" table.
struct Condition {
  std::string key = {};
  std::vector<std::string> values = {};
  std::vector<std::string> not_values = {};

  friend bool operator==(const Condition&, const Condition&) = default;
};

// A rule matches when one `from` entry, one `to` entry and every `when` condition match; an
// absent list matches anything, so an empty rule (`rules: [{}]`) matches every request.
struct Rule {
  std::vector<Source> from = {};     // rules[].from[].source
  std::vector<Operation> to = {};    // rules[].to[].operation
  std::vector<Condition> when = {};  // rules[].when[]

  friend bool operator==(const Rule&, const Rule&) = default;
};

// spec.targetRefs[] (and the older spec.targetRef).
struct TargetRef {
  std::string group = {};  // "gateway.networking.k8s.io", "" (core) or "networking.istio.io"
  std::string kind = {};   // Gateway, GatewayClass, Service, ServiceEntry
  std::string name = {};

  friend bool operator==(const TargetRef&, const TargetRef&) = default;
};

struct Policy {
  std::string name;            // metadata.name
  std::string namespace_name;  // metadata.namespace
  Action action = Action::kAllow;
  std::string provider;  // spec.provider.name, CUSTOM only
  // CUSTOM only: the mesh config defines no ext_authz provider of that name. istiod then turns
  // the policy's rules into DENY rules, so the engine denies what they match (at L4 with a DENY
  // rule's L4 part) instead of skipping the policy, which would fail open.
  bool provider_undefined = false;
  // spec.selector.matchLabels; nullopt when there is no selector. `selector: {}` is an empty map.
  std::optional<std::map<std::string, std::string>> selector;
  std::vector<TargetRef> target_refs;
  // nullopt (or empty): the policy never matches. `rules: [{}]`: it matches every request.
  std::optional<std::vector<Rule>> rules;
  bool dry_run = false;     // annotation istio.io/dry-run: "true"
  std::string source_file;  // where the config layer found it, for messages

  // "namespace/name".
  std::string Key() const;
  friend bool operator==(const Policy&, const Policy&) = default;
};

}  // namespace ambit::authz
