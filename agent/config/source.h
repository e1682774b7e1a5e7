#pragma once

// Where the cluster configuration comes from. The embedded default is a directory of YAML files
// (DirectorySource); later sources (the Kubernetes API, CNI) implement the same interface.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/config/load_result.h"

namespace ambit::config {

// How one resource a remote source lists and watches is doing (for metrics and readiness).
struct SourceResourceStats {
  std::string resource;         // "pods"
  bool synced = false;          // its first full list arrived
  uint64_t lists = 0;           // full lists completed (the first, then each relist)
  uint64_t watch_restarts = 0;  // watches that ended and were started again
  uint64_t errors = 0;          // failed requests, broken streams, undecodable events
  absl::Time last_sync = absl::InfinitePast();  // the last list, event or bookmark received
};

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
  // Why the source has no complete configuration yet, one line per reason (empty: it has one).
  // Until then Poll() returns nothing and the owner should apply nothing: a partial view would
  // remove whatever it lacks.
  virtual std::vector<std::string> Pending() const { return {}; }
  // Per-resource counters of a remote source; empty for a local one.
  virtual std::vector<SourceResourceStats> Stats() const { return {}; }
};

// A DirectorySource (directory_source.h) on dir. Fails if dir cannot be watched (missing, not a
// directory, inotify limits).
absl::StatusOr<std::unique_ptr<ConfigSource>> MakeDirectorySource(const std::string& dir);

}  // namespace ambit::config
