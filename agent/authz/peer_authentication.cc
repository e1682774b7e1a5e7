#include "agent/authz/peer_authentication.h"

#include <tuple>

#include "absl/strings/str_cat.h"

namespace ambit::authz {
namespace {

// istiod sorts PeerAuthentications by creation time, then name, then namespace, and keeps the
// first of each level (pilot/pkg/model sortConfigByCreationTime, ComposePeerAuthentication).
bool Older(const PeerAuthentication& a, const PeerAuthentication& b) {
  return std::tie(a.creation_time, a.name, a.namespace_name) <
         std::tie(b.creation_time, b.name, b.namespace_name);
}

void KeepOldest(const PeerAuthentication*& chosen, const PeerAuthentication& candidate) {
  if (chosen == nullptr || Older(candidate, *chosen)) chosen = &candidate;
}

bool SelectorMatches(const std::map<std::string, std::string>& selector,
                     const std::map<std::string, std::string>& labels) {
  for (const auto& [key, value] : selector) {
    auto it = labels.find(key);
    if (it == labels.end() || it->second != value) return false;
  }
  return true;
}

}  // namespace

absl::string_view MtlsModeName(MtlsMode mode) {
  switch (mode) {
    case MtlsMode::kUnset:
      return "UNSET";
    case MtlsMode::kStrict:
      return "STRICT";
    case MtlsMode::kPermissive:
      return "PERMISSIVE";
    case MtlsMode::kDisable:
      return "DISABLE";
  }
  return "UNKNOWN";
}

std::optional<MtlsMode> ParseMtlsMode(absl::string_view name) {
  for (MtlsMode mode :
       {MtlsMode::kUnset, MtlsMode::kStrict, MtlsMode::kPermissive, MtlsMode::kDisable}) {
    if (name == MtlsModeName(mode)) return mode;
  }
  return std::nullopt;
}

std::string PeerAuthentication::Key() const { return absl::StrCat(namespace_name, "/", name); }

PeerAuthnDecision ResolveMtlsMode(const std::vector<PeerAuthentication>& policies,
                                  absl::string_view root_namespace,
                                  absl::string_view workload_namespace,
                                  const std::map<std::string, std::string>& labels, uint32_t port) {
  const PeerAuthentication* mesh = nullptr;
  const PeerAuthentication* ns = nullptr;
  const PeerAuthentication* workload = nullptr;
  for (const PeerAuthentication& p : policies) {
    if (p.IsWorkloadLevel()) {
      // istiod skips selector policies in the root namespace, even for root-namespace workloads.
      if (p.namespace_name == root_namespace || p.namespace_name != workload_namespace) continue;
      if (SelectorMatches(p.selector, labels)) KeepOldest(workload, p);
    } else if (p.namespace_name == root_namespace) {
      KeepOldest(mesh, p);  // also the namespace level of a workload in the root namespace
    } else if (p.namespace_name == workload_namespace) {
      KeepOldest(ns, p);
    }
  }

  PeerAuthnDecision d;
  d.mode = MtlsMode::kPermissive;
  d.reason = "no PeerAuthentication sets a mode: PERMISSIVE (Istio's default)";
  // Each level that sets a mode overrides the one above it; UNSET inherits.
  auto apply = [&d](const PeerAuthentication* p, absl::string_view level) {
    if (p == nullptr) return;
    if (p->mode == MtlsMode::kUnset) {
      absl::StrAppend(&d.reason, "; ", level, " policy ", p->Key(), " is UNSET and inherits");
      return;
    }
    d.mode = p->mode;
    d.policy = p->Key();
    d.reason = absl::StrCat(level, " policy ", d.policy, ": ", MtlsModeName(p->mode));
  };
  apply(mesh, "mesh-wide");
  apply(ns, "namespace");
  apply(workload, "workload");

  if (workload != nullptr) {
    if (auto it = workload->port_level.find(port); it != workload->port_level.end()) {
      if (it->second == MtlsMode::kUnset) {
        absl::StrAppend(&d.reason, "; port ", port, " of ", workload->Key(),
                        " is UNSET and inherits");
      } else {
        d.mode = it->second;
        d.policy = workload->Key();
        d.reason = absl::StrCat("workload policy ", d.policy, ", port ", port, ": ",
                                MtlsModeName(it->second));
      }
    }
  }
  return d;
}

}  // namespace ambit::authz
