#pragma once

// Where the cluster configuration comes from. The embedded default is a directory of YAML files
// (DirectorySource); later sources (the Kubernetes API, CNI) implement the same interface.

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "agent/config/load_result.h"

namespace ambit::config {

// Thread-compatible: driven by its owner's event loop, one thread at a time.
class ConfigSource {
 public:
  virtual ~ConfigSource() = default;

  // Poll this for readability; -1 if the source has nothing to poll (call Poll() periodically).
  virtual int fd() const = 0;
  // Consumes pending notifications; a new full result if the configuration (or its errors)
  // changed since the last result this source returned, else nullopt.
  virtual std::optional<LoadResult> Poll() = 0;
  // A full load now.
  virtual LoadResult Current() = 0;
};

// A DirectorySource (directory_source.h) on dir. Fails if dir cannot be watched (missing, not a
// directory, inotify limits).
absl::StatusOr<std::unique_ptr<ConfigSource>> MakeDirectorySource(const std::string& dir);

}  // namespace ambit::config
