#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "agent/config/directory_loader.h"
#include "agent/config/directory_watcher.h"
#include "agent/config/source.h"

namespace ambit::config {

// A directory of YAML files (DirectoryLoader), reloaded when inotify (DirectoryWatcher) reports a
// change. Thread-compatible.
class DirectorySource final : public ConfigSource {
 public:
  static absl::StatusOr<std::unique_ptr<DirectorySource>> Create(const std::string& dir);

  int fd() const override { return watcher_->fd(); }
  std::optional<LoadResult> Poll() override;
  LoadResult Current() override;

 private:
  DirectorySource(DirectoryLoader loader, std::unique_ptr<DirectoryWatcher> watcher)
      : loader_(std::move(loader)), watcher_(std::move(watcher)) {}

  DirectoryLoader loader_;
  std::unique_ptr<DirectoryWatcher> watcher_;
  // What the owner last received, by its stamp (not a copy of a large cluster).
  std::optional<DirectoryLoader::ResultStamp> last_;
};

}  // namespace ambit::config
