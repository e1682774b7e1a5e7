#pragma once

// Request-path normalization before `paths`/`notPaths` are matched, as Istio's MeshConfig
// `pathNormalization` defines it (https://istio.io/latest/docs/reference/config/security/
// normalization/). Pure functions, thread-safe.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ambit::authz {

enum class PathNormalization {
  kNone,                   // only the query and fragment are dropped
  kBase,                   // Istio's default: %HH of unreserved characters, '\' -> '/', ./..
  kMergeSlashes,           // kBase, then "//" -> "/"
  kDecodeAndMergeSlashes,  // also %2F -> '/' and %5C -> '\' first, then kMergeSlashes
};

// The path authorization sees: everything from '?' or '#' on is dropped, then `mode` applies. A
// path containing %00 is an error (Istio rejects such a request with HTTP 400).
absl::StatusOr<std::string> NormalizePath(absl::string_view raw, PathNormalization mode);

}  // namespace ambit::authz
