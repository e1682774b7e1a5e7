#include "agent/config/load_result.h"

#include <algorithm>

namespace ambit::config {

bool LoadResult::HasErrors() const {
  return std::any_of(errors.begin(), errors.end(), [](const ConfigError& e) { return !e.warning; });
}

}  // namespace ambit::config
