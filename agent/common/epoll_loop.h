#pragma once

// EventLoop on Linux epoll, with a monotonic-clock timer heap and a deferred-work list.
//
// Thread-safety: single-threaded (the thread calling Run/RunOnce), except Stop(), which any
// thread may call.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/common/event_loop.h"
#include "agent/common/unique_fd.h"

namespace ambit {

class EpollLoop final : public EventLoop {
 public:
  static absl::StatusOr<std::unique_ptr<EpollLoop>> Create();
  ~EpollLoop() override;
  EpollLoop(const EpollLoop&) = delete;
  EpollLoop& operator=(const EpollLoop&) = delete;

  absl::Status Watch(int fd, uint32_t events, EventHandler* h) override;
  absl::Status Modify(int fd, uint32_t events, EventHandler* h) override;
  void Unwatch(int fd) override;
  void Defer(std::function<void()> fn) override;
  void RunAfter(absl::Duration d, std::function<void()> fn) override;

  // Waits up to `timeout` (less if a timer is due sooner, zero if work is deferred) for events,
  // dispatches them, then runs due timers, then deferred work. Returns false once Stop() was
  // called (the stop request is consumed), true otherwise.
  bool RunOnce(absl::Duration timeout);
  // RunOnce until Stop().
  void Run();
  // Makes Run() return (or the current / next RunOnce return false). Thread-safe.
  void Stop();

  size_t watched() const { return handlers_.size(); }

 private:
  struct Watched {
    EventHandler* handler;
    uint32_t generation;
  };
  struct Timer {
    absl::Duration due;  // on the monotonic clock
    uint64_t seq;        // FIFO among equal deadlines
    std::function<void()> fn;
  };
  struct TimerLater {
    bool operator()(const Timer& a, const Timer& b) const {
      return a.due != b.due ? a.due > b.due : a.seq > b.seq;
    }
  };

  EpollLoop(UniqueFd epoll, UniqueFd wake) : epoll_(std::move(epoll)), wake_(std::move(wake)) {}
  static absl::Duration MonotonicNow();
  void RunTimers();
  void RunDeferred();

  UniqueFd epoll_;
  UniqueFd wake_;  // eventfd written by Stop()
  std::atomic<bool> stop_{false};
  // fd -> handler. The generation travels in epoll_event.data so a stale event for a closed and
  // re-watched fd number is not delivered to the new handler.
  std::unordered_map<int, Watched> handlers_;
  uint32_t next_generation_ = 1;
  std::vector<Timer> timers_;  // a heap under TimerLater
  uint64_t next_timer_seq_ = 0;
  std::vector<std::function<void()>> deferred_;
};

}  // namespace ambit
