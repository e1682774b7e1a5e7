#pragma once

// The Kubernetes API server as a configuration source, merged with the configuration directory
// (which holds mesh.yaml, from the ConfigMap).
//
// One background thread per watched resource (WatchedResources()) lists it (pages of
// `page_size`, `limit`/`continue`), then watches from the list's resourceVersion with bookmarks;
// a watch that ends is started again from the last resourceVersion seen, a 410 Gone (or an ERROR
// event with reason Expired) means a fresh list, and failures (connection, 429, 5xx) wait an
// exponential back-off with jitter, never less than the server's Retry-After. A custom resource
// the server does not serve (404) counts as empty and is listed again every minute.
//
// Each object goes through config::ParseKubeYaml on its own, as a file's documents do, with the
// same errors (named "apiserver: AuthorizationPolicy ns/name: field ...") and the same last-good
// rule. Poll() returns nothing until every resource's first list arrived (Pending() says which is
// missing), then the merged configuration whenever it changed. After that, a lost API server
// leaves the last configuration in force.
//
// Thread-safety: fd(), Poll(), Current(), Pending() and Stats() are for one owner thread; the
// resource threads share only per-resource state under its mutex. The destructor cancels the
// requests in flight and joins the threads.

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/common/unique_fd.h"
#include "agent/config/directory_loader.h"
#include "agent/config/directory_watcher.h"
#include "agent/config/source.h"
#include "agent/kube/client.h"
#include "agent/kube/watch.h"

namespace ambit::kube {

class KubeApiSource final : public config::ConfigSource {
 public:
  struct Options {
    std::string config_dir;  // also read, merged before the API server's objects
    int page_size = 500;     // list `limit`
    // A watch's timeoutSeconds (randomised between half and all of it, so that many agents do
    // not all re-watch at once).
    absl::Duration watch_timeout = absl::Minutes(5);
    absl::Duration request_timeout = absl::Seconds(60);  // one list page
    absl::Duration backoff_initial = absl::Milliseconds(200);
    absl::Duration backoff_max = absl::Seconds(30);
    // How often a custom resource the server does not serve is looked for again.
    absl::Duration absent_recheck = absl::Minutes(1);
    std::vector<Resource> resources = WatchedResources();
  };

  static absl::StatusOr<std::unique_ptr<KubeApiSource>> Create(std::unique_ptr<KubeClient> client,
                                                               Options options);
  ~KubeApiSource() override;

  int fd() const override { return epoll_.get(); }
  std::optional<config::LoadResult> Poll() override;
  config::LoadResult Current() override;
  std::vector<std::string> Pending() const override;
  std::vector<config::SourceResourceStats> Stats() const override;

 private:
  struct Reflector;

  KubeApiSource(std::unique_ptr<KubeClient> client, Options options,
                std::unique_ptr<config::DirectoryWatcher> watcher, UniqueFd epoll, UniqueFd event);
  void Run(Reflector& r);
  // One full list into r's store; sets *rv. `retry_after` is set from a 429/5xx answer.
  absl::Status List(Reflector& r, std::string* rv, std::optional<absl::Duration>* retry_after);
  // How a watch ended.
  enum class WatchEnd { kClosed, kExpired, kFailed };
  // *events counts the events and bookmarks it delivered.
  WatchEnd WatchOnce(Reflector& r, std::string* rv, std::optional<absl::Duration>* retry_after,
                     absl::Status* error, uint64_t* events);
  // Sleeps up to d; false when the source is being destroyed.
  bool Sleep(absl::Duration d);
  void Notify();
  config::LoadResult Load();

  std::unique_ptr<KubeClient> client_;
  const Options options_;
  config::DirectoryLoader loader_;
  std::unique_ptr<config::DirectoryWatcher> watcher_;
  UniqueFd epoll_;  // what fd() returns: readable when event_ or the watcher's fd is
  UniqueFd event_;  // an eventfd the resource threads write
  std::vector<std::unique_ptr<Reflector>> reflectors_;
  std::vector<std::thread> threads_;
  Cancellation cancel_;
  absl::Mutex stop_mu_;
  bool stopping_ ABSL_GUARDED_BY(stop_mu_) = false;
  // What the owner last received, by its stamp (not a copy of a large cluster).
  std::optional<config::DirectoryLoader::ResultStamp> last_;
};

}  // namespace ambit::kube
