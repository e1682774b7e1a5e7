#pragma once

#include <vector>

#include "agent/config/error.h"
#include "agent/config/security_config.h"
#include "agent/state/model.h"

namespace ambit::config {

// A complete configuration and what was wrong with its sources. `state` is always usable: bad
// objects are left out (or kept at their last good version), never half-applied.
struct LoadResult {
  state::ClusterState state;
  SecurityConfig security;          // PeerAuthentication (see security_config.h)
  std::vector<ConfigError> errors;  // errors and warnings, in file order

  // True when some entry in errors is an error rather than a warning.
  bool HasErrors() const;

  friend bool operator==(const LoadResult&, const LoadResult&) = default;
};

}  // namespace ambit::config
