#pragma once

// An EventLoop for unit tests of objects that defer work and arm timers: nothing is watched;
// deferred functions run when the test says, timers fire when the test moves the FakeClock.

#include <deque>
#include <functional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/common/event_loop.h"

namespace ambit::testing {

class FakeEventLoop final : public EventLoop {
 public:
  explicit FakeEventLoop(FakeClock* clock) : clock_(clock) {}

  absl::Status Watch(int, uint32_t, EventHandler*) override { return absl::OkStatus(); }
  absl::Status Modify(int, uint32_t, EventHandler*) override { return absl::OkStatus(); }
  void Unwatch(int) override {}
  void Defer(std::function<void()> fn) override { deferred_.push_back(std::move(fn)); }
  void RunAfter(absl::Duration d, std::function<void()> fn) override {
    timers_.push_back({clock_->Now() + d, std::move(fn)});
  }

  // Runs deferred functions (and those they defer), at most `limit`.
  void RunDeferred(int limit = 10000) {
    for (int i = 0; i < limit && !deferred_.empty(); ++i) {
      std::function<void()> fn = std::move(deferred_.front());
      deferred_.pop_front();
      fn();
    }
  }
  // Moves the clock, fires the timers now due, then runs what they deferred.
  void Advance(absl::Duration d) {
    clock_->Advance(d);
    std::vector<Timer> due;
    for (auto it = timers_.begin(); it != timers_.end();) {
      if (it->at <= clock_->Now()) {
        due.push_back(std::move(*it));
        it = timers_.erase(it);
      } else {
        ++it;
      }
    }
    for (Timer& t : due) t.fn();
    RunDeferred();
  }
  size_t pending_timers() const { return timers_.size(); }

 private:
  struct Timer {
    absl::Time at;
    std::function<void()> fn;
  };
  FakeClock* clock_;
  std::deque<std::function<void()>> deferred_;
  std::vector<Timer> timers_;
};

}  // namespace ambit::testing
