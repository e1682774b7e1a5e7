#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/authz/engine.h"
#include "agent/config/error.h"
#include "agent/config/security_config.h"
#include "agent/state/model.h"

namespace ambit::config {

// A complete configuration and what was wrong with its sources. `state` is always usable: bad
// objects are left out (or kept at their last good version), never half-applied.
struct LoadResult {
  state::ClusterState state;
  SecurityConfig security;          // PeerAuthentication, AuthorizationPolicy
  std::vector<ConfigError> errors;  // errors and warnings, in file order

  // True when some entry in errors is an error rather than a warning.
  bool HasErrors() const;

  friend bool operator==(const LoadResult&, const LoadResult&) = default;
};

// The engine options the mesh config sets: rootNamespace, pathNormalization, trustDomain and
// trustDomainAliases.
authz::EngineOptions AuthzEngineOptions(const state::MeshConfig& mesh);

// An authorization engine for the AuthorizationPolicies of `result`, under its mesh config.
// Immutable and thread-safe once built (see authz/engine.h).
absl::StatusOr<std::unique_ptr<authz::Engine>> BuildAuthzEngine(const LoadResult& result);

}  // namespace ambit::config
