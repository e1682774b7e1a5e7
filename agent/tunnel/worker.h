#pragma once

#include <sys/epoll.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agent/common/unique_fd.h"
#include "agent/tunnel/mesh_snapshot.h"
#include "agent/tunnel/pod_table.h"

namespace ambit::tunnel {

class Connection;

// Something registered in a worker's epoll set.
class EventHandler {
 public:
  virtual ~EventHandler() = default;
  virtual void OnEvents(uint32_t events) = 0;
};

// One data-plane thread with its own epoll loop. Every connection lives on exactly one worker and
// is touched only by it; the only cross-thread entry is Post(), used for configuration changes.
class Worker {
 public:
  static absl::StatusOr<std::unique_ptr<Worker>> Create(int index,
                                                        std::shared_ptr<const DataPlaneSettings>);
  ~Worker();

  void Start();
  // Asks the loop to finish; Join() waits for it.
  void Stop();
  void Join();

  // Runs fn on the worker's thread. Thread-safe.
  void Post(std::function<void(Worker&)> fn);

  // Worker-thread only.
  void AddPod(std::shared_ptr<const Pod> pod);
  void SetSnapshot(std::shared_ptr<const MeshSnapshot> snapshot) { snapshot_ = std::move(snapshot); }
  // Never null: an empty snapshot until the first configuration arrives.
  const std::shared_ptr<const MeshSnapshot>& snapshot() const { return snapshot_; }
  void RemovePod(const std::string& uid);
  absl::Status Watch(int fd, uint32_t events, EventHandler* handler);
  void Unwatch(int fd);
  // Deletes the connection after the current batch of events.
  void Retire(Connection* conn);
  const DataPlaneSettings& settings() const { return *settings_; }
  int index() const { return index_; }
  size_t connection_count() const { return connections_.size(); }
  void Adopt(std::unique_ptr<Connection> conn);

 private:
  class ListenerHandler;
  Worker(int index, std::shared_ptr<const DataPlaneSettings> settings, UniqueFd epoll,
         UniqueFd wake);
  void Run();
  void DrainTasks();

  const int index_;
  std::shared_ptr<const DataPlaneSettings> settings_;
  std::shared_ptr<const MeshSnapshot> snapshot_ = std::make_shared<const MeshSnapshot>();
  UniqueFd epoll_;
  UniqueFd wake_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  std::deque<std::function<void(Worker&)>> tasks_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, std::vector<std::unique_ptr<ListenerHandler>>> listeners_;
  std::unordered_map<Connection*, std::unique_ptr<Connection>> connections_;
  std::vector<Connection*> retired_;
  // Listener handlers removed mid-batch; freed after it, as events may still name them.
  std::vector<std::unique_ptr<ListenerHandler>> retired_listeners_;
};

}  // namespace ambit::tunnel
