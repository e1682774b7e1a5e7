#include "agent/config/directory_watcher.h"

#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "agent/config/directory_source.h"
#include "agent/config/source.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/common/temp_dir.h"

namespace ambit::config {
namespace {

using ::ambit::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr int kTimeoutMs = 2000;

// True when fd becomes readable within the timeout.
bool WaitReadable(int fd, int timeout_ms = kTimeoutMs) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN) != 0;
}

std::string Pod(const std::string& name) {
  return "apiVersion: v1\nkind: Pod\nmetadata: {name: " + name + "}\n";
}

std::unique_ptr<DirectoryWatcher> Watch(const TempDir& dir) {
  absl::StatusOr<std::unique_ptr<DirectoryWatcher>> watcher = DirectoryWatcher::Create(dir.path());
  EXPECT_TRUE(watcher.ok()) << watcher.status();
  return watcher.ok() ? std::move(*watcher) : nullptr;
}

TEST(DirectoryWatcherTest, QuietDirectoryHasNothingToDrain) {
  TempDir dir;
  auto watcher = Watch(dir);
  ASSERT_NE(watcher, nullptr);
  EXPECT_GE(watcher->fd(), 0);
  EXPECT_FALSE(WaitReadable(watcher->fd(), 0));
  EXPECT_FALSE(watcher->Drain());  // non-blocking even with nothing pending
}

TEST(DirectoryWatcherTest, FiresOnInPlaceWrite) {
  TempDir dir;
  dir.Write("pods.yaml", Pod("a"));
  auto watcher = Watch(dir);
  ASSERT_NE(watcher, nullptr);
  dir.Write("pods.yaml", Pod("b"));
  ASSERT_TRUE(WaitReadable(watcher->fd()));
  EXPECT_TRUE(watcher->Drain());
  EXPECT_FALSE(watcher->Drain());  // everything was consumed
}

TEST(DirectoryWatcherTest, FiresOnNewFile) {
  TempDir dir;
  auto watcher = Watch(dir);
  ASSERT_NE(watcher, nullptr);
  dir.Write("new.yml", Pod("a"));
  ASSERT_TRUE(WaitReadable(watcher->fd()));
  EXPECT_TRUE(watcher->Drain());
}

TEST(DirectoryWatcherTest, FiresOnRenameIntoPlace) {
  TempDir dir;
  dir.Write("pods.yaml", Pod("a"));
  auto watcher = Watch(dir);
  ASSERT_NE(watcher, nullptr);
  // The temporary file alone is no reason to reload...
  dir.Write(".tmp-pods.yaml", Pod("b"));
  ASSERT_TRUE(WaitReadable(watcher->fd()));
  EXPECT_FALSE(watcher->Drain());
  // ...the rename over the real name is.
  ASSERT_EQ(std::rename(dir.PathOf(".tmp-pods.yaml").c_str(), dir.PathOf("pods.yaml").c_str()), 0);
  ASSERT_TRUE(WaitReadable(watcher->fd()));
  EXPECT_TRUE(watcher->Drain());
}

TEST(DirectoryWatcherTest, FiresOnRenameAway) {
  TempDir dir;
  dir.Write("pods.yaml", Pod("a"));
  auto watcher = Watch(dir);
  ASSERT_NE(watcher, nullptr);
  ASSERT_EQ(std::rename(dir.PathOf("pods.yaml").c_str(), dir.PathOf("pods.yaml.off").c_str()), 0);
  ASSERT_TRUE(WaitReadable(watcher->fd()));
  EXPECT_TRUE(watcher->Drain());
}

TEST(DirectoryWatcherTest, FiresOnDelete) {
  TempDir dir;
  dir.Write("pods.yaml", Pod("a"));
  auto watcher = Watch(dir);
  ASSERT_NE(watcher, nullptr);
  dir.Remove("pods.yaml");
  ASSERT_TRUE(WaitReadable(watcher->fd()));
  EXPECT_TRUE(watcher->Drain());
}

TEST(DirectoryWatcherTest, FiresOnPermissionChange) {
  TempDir dir;
  dir.Write("pods.yaml", Pod("a"));
  auto watcher = Watch(dir);
  ASSERT_NE(watcher, nullptr);
  ASSERT_EQ(::chmod(dir.PathOf("pods.yaml").c_str(), 0600), 0);
  ASSERT_TRUE(WaitReadable(watcher->fd()));
  EXPECT_TRUE(watcher->Drain());
}

TEST(DirectoryWatcherTest, FiresOnConfigMapDataSwap) {
  TempDir dir;
  ASSERT_EQ(::mkdir(dir.PathOf("..v1").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(dir.PathOf("..v2").c_str(), 0755), 0);
  ASSERT_EQ(::symlink("..v1", dir.PathOf("..data").c_str()), 0);
  auto watcher = Watch(dir);
  ASSERT_NE(watcher, nullptr);
  // What Kubernetes' atomic writer does: a new symlink renamed over ..data.
  ASSERT_EQ(::symlink("..v2", dir.PathOf("..data_tmp").c_str()), 0);
  ASSERT_EQ(std::rename(dir.PathOf("..data_tmp").c_str(), dir.PathOf("..data").c_str()), 0);
  ASSERT_TRUE(WaitReadable(watcher->fd()));
  EXPECT_TRUE(watcher->Drain());
}

TEST(DirectoryWatcherTest, IgnoresOtherFiles) {
  TempDir dir;
  auto watcher = Watch(dir);
  ASSERT_NE(watcher, nullptr);
  dir.Write("notes.txt", "hello");
  dir.Write("pods.yaml~", Pod("a"));
  dir.Write(".#pods.yaml", Pod("a"));
  ASSERT_TRUE(WaitReadable(watcher->fd()));
  EXPECT_FALSE(watcher->Drain());
}

TEST(DirectoryWatcherTest, FiresWhenTheDirectoryGoesAway) {
  TempDir dir;
  ASSERT_EQ(::mkdir(dir.PathOf("conf").c_str(), 0755), 0);
  auto watcher = DirectoryWatcher::Create(dir.PathOf("conf"));
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  ASSERT_EQ(::rmdir(dir.PathOf("conf").c_str()), 0);
  ASSERT_TRUE(WaitReadable((*watcher)->fd()));
  EXPECT_TRUE((*watcher)->Drain());
}

TEST(DirectoryWatcherTest, CreateFailsForMissingDirectoryOrFile) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<DirectoryWatcher>> missing =
      DirectoryWatcher::Create(dir.PathOf("nope"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  dir.Write("file.yaml", "");
  EXPECT_FALSE(DirectoryWatcher::Create(dir.PathOf("file.yaml")).ok());
}

TEST(DirectorySourceTest, CurrentLoadsAndPollReportsChanges) {
  TempDir dir;
  dir.Write("pods.yaml", Pod("a"));
  absl::StatusOr<std::unique_ptr<ConfigSource>> source = MakeDirectorySource(dir.path());
  ASSERT_TRUE(source.ok()) << source.status();
  ConfigSource& src = **source;
  ASSERT_GE(src.fd(), 0);

  LoadResult first = src.Current();
  EXPECT_THAT(first.errors, IsEmpty());
  EXPECT_EQ(first.state.pods.size(), 1u);
  EXPECT_EQ(src.Poll(), std::nullopt);

  dir.WriteAtomically("pods.yaml", Pod("a") + "---\n" + Pod("b"));
  ASSERT_TRUE(WaitReadable(src.fd()));
  std::optional<LoadResult> next = src.Poll();
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->state.pods.size(), 2u);

  // Rewriting the same content is a change on disk but not in the configuration.
  dir.Write("pods.yaml", Pod("a") + "---\n" + Pod("b"));
  ASSERT_TRUE(WaitReadable(src.fd()));
  EXPECT_EQ(src.Poll(), std::nullopt);

  dir.Remove("pods.yaml");
  ASSERT_TRUE(WaitReadable(src.fd()));
  next = src.Poll();
  ASSERT_TRUE(next.has_value());
  EXPECT_THAT(next->state.pods, IsEmpty());
}

TEST(DirectorySourceTest, ErrorsAreReportedThroughPoll) {
  TempDir dir;
  auto source = DirectorySource::Create(dir.path());
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_THAT((*source)->Current().errors, IsEmpty());
  dir.Write("pods.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\n");
  ASSERT_TRUE(WaitReadable((*source)->fd()));
  std::optional<LoadResult> next = (*source)->Poll();
  ASSERT_TRUE(next.has_value());
  ASSERT_EQ(next->errors.size(), 1u);
  EXPECT_EQ(next->errors[0].field, "metadata.name");
}

TEST(DirectorySourceTest, CreateFailsForMissingDirectory) {
  TempDir dir;
  EXPECT_FALSE(MakeDirectorySource(dir.PathOf("nope")).ok());
}

}  // namespace
}  // namespace ambit::config
