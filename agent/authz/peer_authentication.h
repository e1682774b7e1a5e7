#pragma once

// Istio's PeerAuthentication (security.istio.io/v1 and v1beta1) as a plain value type, and the
// resolution of the effective mTLS mode for a workload port. Pure: no I/O, no YAML, no Protobuf;
// the config layer fills PeerAuthentication from YAML and validates it as istiod does.
// Thread-safe: value types and pure functions.
//
// Resolution follows istiod (pilot/pkg/security/authn ComposePeerAuthentication, and the Istio
// PeerAuthentication reference):
//  - Three levels. Mesh-wide: a policy in the root namespace without a selector. Namespace-wide: a
//    policy in the workload's namespace without a selector. Workload: a policy in the workload's
//    namespace whose selector.matchLabels are a subset of the workload's labels. The narrowest
//    level that sets a mode wins.
//  - `selector: {}` (no matchLabels) counts as no selector, as in istiod.
//  - A policy with a selector in the root namespace is ignored: istiod never applies it (the
//    reference notes "PeerAuthentication policies with workload selectors are ignored when
//    deployed in the root namespace"; an older proto comment claimed the opposite).
//  - UNSET inherits from the next level up; with nothing set the mode is PERMISSIVE ("Inherit from
//    parent, if has one. Otherwise treated as PERMISSIVE").
//  - portLevelMtls is honoured only from the workload-level policy that applies ("These only
//    apply when a workload selector is specified"; istiod rejects it without one). A port entry
//    set to UNSET inherits the workload's resolved mode. The port is the workload's (container)
//    port, not a Service port.
//  - When several policies of one level apply, the oldest (metadata.creationTimestamp) wins; on
//    equal timestamps istiod's order is by name, then namespace.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace ambit::authz {

// Istio's PeerAuthentication.MutualTLS.Mode.
enum class MtlsMode { kUnset, kStrict, kPermissive, kDisable };

// "UNSET", "STRICT", "PERMISSIVE", "DISABLE".
absl::string_view MtlsModeName(MtlsMode mode);
// The inverse of MtlsModeName; exact, case-sensitive (the CRD's enum). nullopt for anything else.
std::optional<MtlsMode> ParseMtlsMode(absl::string_view name);

struct PeerAuthentication {
  std::string name;            // metadata.name
  std::string namespace_name;  // metadata.namespace
  std::string source_file;     // where the config layer found it, for messages
  // spec.selector.matchLabels. Empty: namespace-wide (mesh-wide in the root namespace), also
  // when has_selector is true (`selector: {}`), as in istiod.
  std::map<std::string, std::string> selector;
  bool has_selector = false;                // spec.selector is present
  MtlsMode mode = MtlsMode::kUnset;         // spec.mtls.mode
  std::map<uint32_t, MtlsMode> port_level;  // spec.portLevelMtls: workload port -> mode
  // metadata.creationTimestamp; the oldest policy of a level wins. InfinitePast when absent (as
  // Go's zero time, which sorts before every real timestamp).
  absl::Time creation_time = absl::InfinitePast();

  // "namespace/name".
  std::string Key() const;
  // True for a workload-level policy: matchLabels present. (Whether it counts also depends on the
  // namespace: see ResolveMtlsMode.)
  bool IsWorkloadLevel() const { return !selector.empty(); }

  friend bool operator==(const PeerAuthentication&, const PeerAuthentication&) = default;
};

struct PeerAuthnDecision {
  MtlsMode mode = MtlsMode::kPermissive;  // never kUnset
  std::string policy;                     // "ns/name" of the deciding policy; "" for the default
  std::string reason;                     // one line for logs and the admin API

  friend bool operator==(const PeerAuthnDecision&, const PeerAuthnDecision&) = default;
};

// The effective mTLS mode for connections to port of a workload in workload_namespace with
// labels, under policies (any order, any namespaces; policies that do not apply are skipped).
// Linear in the number of policies: a hot path should keep the decision per workload and port.
PeerAuthnDecision ResolveMtlsMode(const std::vector<PeerAuthentication>& policies,
                                  absl::string_view root_namespace,
                                  absl::string_view workload_namespace,
                                  const std::map<std::string, std::string>& labels, uint32_t port);

}  // namespace ambit::authz
