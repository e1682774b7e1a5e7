#pragma once

// What one configuration load changed against the one before, for the log line that says what
// was applied: objects added, changed and removed, by kind and namespace/name. Pure; thread-
// compatible.

#include <cstddef>
#include <string>

#include "agent/config/security_config.h"
#include "agent/state/model.h"

namespace ambit::config {

struct ChangeSummary {
  size_t added = 0, changed = 0, removed = 0;
  // "added Pod backend/api, Namespace backend; changed AuthorizationPolicy backend/api-callers;
  // removed ..." naming at most `cap` objects in all, then "and N more"; "no object changed"
  // when nothing did.
  std::string text;
};

ChangeSummary SummarizeChanges(const state::ClusterState& before,
                               const SecurityConfig& before_security,
                               const state::ClusterState& after,
                               const SecurityConfig& after_security, size_t cap = 10);

}  // namespace ambit::config
