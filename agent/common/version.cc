#include "agent/common/version.h"

#ifndef AMBIT_VERSION
#error "AMBIT_VERSION is defined by agent/common/CMakeLists.txt"
#endif

namespace ambit {

absl::string_view Version() { return AMBIT_VERSION; }

}  // namespace ambit
