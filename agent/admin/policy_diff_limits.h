#pragma once

// The admin API's bounds on a PolicyDiff request (ambitctl policy diff), shared by the CLI, which
// refuses to send more, and ambitd, which refuses to take more. Well under gRPC's 4 MiB message
// limit, so a directory too large gets this message rather than gRPC's.

#include <cstddef>

namespace ambit::admin {

inline constexpr size_t kMaxPolicyDiffBytes = 3 << 20;
inline constexpr int kMaxPolicyDiffFiles = 1000;

}  // namespace ambit::admin
