#pragma once

// The main of both data-plane processes (ambit-tunnel, ambit-waypoint): the same flags, the same
// shell (agent/tunnel/control.h). `customize` (may be empty) adjusts the options after the common
// flags are read; an error it returns is a usage error.

#include <functional>

#include "absl/status/status.h"
#include "agent/tunnel/control.h"

namespace ambit {

int DataPlaneMain(int argc, char** argv, const char* name, const char* usage,
                  const std::function<absl::Status(tunnel::TunnelOptions&)>& customize);

}  // namespace ambit
