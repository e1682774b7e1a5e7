#include "agent/config/directory_source.h"

#include "agent/common/status.h"

namespace ambit::config {

absl::StatusOr<std::unique_ptr<DirectorySource>> DirectorySource::Create(const std::string& dir) {
  // Watch first: a change between the first load and the watch would otherwise go unseen.
  AMBIT_ASSIGN_OR_RETURN(std::unique_ptr<DirectoryWatcher> watcher, DirectoryWatcher::Create(dir));
  return std::unique_ptr<DirectorySource>(
      new DirectorySource(DirectoryLoader(dir), std::move(watcher)));
}

std::optional<LoadResult> DirectorySource::Poll() {
  if (!watcher_->Drain()) return std::nullopt;
  LoadResult result = loader_.Load();
  auto stamp = loader_.StampOf(result);
  if (last_ && *last_ == stamp) return std::nullopt;
  last_ = std::move(stamp);
  return result;
}

LoadResult DirectorySource::Current() {
  watcher_->Drain();  // this load covers whatever was pending
  LoadResult result = loader_.Load();
  last_ = loader_.StampOf(result);
  return result;
}

absl::StatusOr<std::unique_ptr<ConfigSource>> MakeDirectorySource(const std::string& dir) {
  AMBIT_ASSIGN_OR_RETURN(std::unique_ptr<DirectorySource> source, DirectorySource::Create(dir));
  return std::unique_ptr<ConfigSource>(std::move(source));
}

}  // namespace ambit::config
