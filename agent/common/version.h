#pragma once

// The release every ambit binary reports (`ambitd --version`, `ambitctl version`, the admin API,
// the agent hand-off): the project version from CMake, then `+` and `git describe` of the source
// tree at configure time when it is a git checkout ("0.1.0+3fc2dc8", "0.1.0+3fc2dc8-dirty").
// Only version.cc sees the definition, so a new commit recompiles one file.

#include "absl/strings/string_view.h"

namespace ambit {

absl::string_view Version();

}  // namespace ambit
