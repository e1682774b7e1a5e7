#pragma once

// The checks in flight of one ext_authz client, oldest first, with their deadlines. Every check of
// a client has the same timeout, so start order is also deadline order: one loop timer at a time,
// armed for the oldest, serves them all. A timer per check could not be cancelled (EventLoop's
// timers are not) and would stay in the loop for the whole timeout, 600 s by default, with the
// check's memory, whatever the check took.
//
// T holds a public `DeadlineList<T>::Entry deadline_entry`. Thread-compatible: the loop's thread.

#include <algorithm>
#include <functional>
#include <iterator>
#include <list>
#include <memory>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/common/event_loop.h"

namespace ambit::waypoint {

template <typename T>
class DeadlineList {
 public:
  struct Entry {
    absl::Time deadline;
    bool tracked = false;
    typename std::list<std::shared_ptr<T>>::iterator at;
  };

  // `expire` runs from the loop for each check past its deadline, already removed; it ends the
  // check.
  DeadlineList(EventLoop* loop, const Clock* clock, absl::Duration timeout,
               std::function<void(const std::shared_ptr<T>&)> expire)
      : loop_(loop), clock_(clock), timeout_(timeout), expire_(std::move(expire)) {}
  DeadlineList(const DeadlineList&) = delete;
  DeadlineList& operator=(const DeadlineList&) = delete;

  void Add(const std::shared_ptr<T>& item, absl::Time start) {
    Entry& e = item->deadline_entry;
    e.deadline = start + timeout_;
    items_.push_back(item);
    e.at = std::prev(items_.end());
    e.tracked = true;
    Arm();
  }
  void Remove(T* item) {
    Entry& e = item->deadline_entry;
    if (!e.tracked) return;
    e.tracked = false;
    items_.erase(e.at);
  }
  // Everything in flight, oldest first; the list is left empty.
  std::vector<std::shared_ptr<T>> TakeAll() {
    std::vector<std::shared_ptr<T>> out(items_.begin(), items_.end());
    items_.clear();
    for (auto& item : out) item->deadline_entry.tracked = false;
    return out;
  }
  size_t size() const { return items_.size(); }

 private:
  void Arm() {
    if (armed_ || items_.empty()) return;
    armed_ = true;
    const std::shared_ptr<T>& oldest = items_.front();
    const absl::Duration wait =
        std::max(oldest->deadline_entry.deadline - clock_->Now(), absl::ZeroDuration());
    loop_->RunAfter(wait,
                    [this, alive = std::weak_ptr<bool>(alive_), armed = std::weak_ptr<T>(oldest)] {
                      if (alive.lock() == nullptr) return;
                      armed_ = false;
                      // The check the timer was armed for has run out of time by the loop's own
                      // measure, even if the injected clock says otherwise; so has every older one
                      // still here.
                      std::shared_ptr<T> target = armed.lock();
                      const absl::Time now = clock_->Now();
                      while (!items_.empty()) {
                        std::shared_ptr<T> item = items_.front();
                        if (item->deadline_entry.deadline > now &&
                            !(target != nullptr && target->deadline_entry.tracked)) {
                          break;
                        }
                        Remove(item.get());
                        expire_(item);
                        if (item == target) target = nullptr;
                      }
                      Arm();
                    });
  }

  EventLoop* loop_;
  const Clock* clock_;
  const absl::Duration timeout_;
  std::function<void(const std::shared_ptr<T>&)> expire_;
  std::list<std::shared_ptr<T>> items_;
  bool armed_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace ambit::waypoint
