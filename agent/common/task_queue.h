#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <deque>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "agent/common/unique_fd.h"

namespace ambit {

// Hands work to an event-loop thread: any thread Posts, the owner polls fd() and calls Drain().
// Thread-safe.
class TaskQueue {
 public:
  TaskQueue() : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  int fd() const { return fd_.get(); }
  void Post(std::function<void()> fn) {
    {
      absl::MutexLock lock(&mu_);
      tasks_.push_back(std::move(fn));
    }
    uint64_t one = 1;
    (void)!write(fd_.get(), &one, sizeof one);
  }
  // Runs everything posted so far, on the calling (owner) thread.
  void Drain() {
    uint64_t n;
    (void)!read(fd_.get(), &n, sizeof n);
    std::deque<std::function<void()>> tasks;
    {
      absl::MutexLock lock(&mu_);
      tasks.swap(tasks_);
    }
    for (auto& t : tasks) t();
  }

 private:
  UniqueFd fd_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
};

// One background thread running posted jobs in order, for blocking work (a remote CA call) that
// must stay off an event loop. Thread-safe; the destructor finishes queued jobs and joins.
class BackgroundThread {
 public:
  BackgroundThread() : thread_([this] { Run(); }) {}
  ~BackgroundThread() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
  }
  void Post(std::function<void()> fn) {
    absl::MutexLock lock(&mu_);
    jobs_.push_back(std::move(fn));
  }

 private:
  void Run() {
    while (true) {
      std::function<void()> job;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](BackgroundThread* t)
                 ABSL_NO_THREAD_SAFETY_ANALYSIS { return t->stop_ || !t->jobs_.empty(); },
            this));
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace ambit
