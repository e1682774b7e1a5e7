#include "agent/common/epoll_loop.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"

namespace ambit {
namespace {

constexpr int kMaxEventsPerWait = 256;
constexpr uint64_t kWakeTag = ~uint64_t{0};

uint64_t Pack(int fd, uint32_t generation) {
  return (uint64_t{generation} << 32) | static_cast<uint32_t>(fd);
}

}  // namespace

absl::StatusOr<std::unique_ptr<EpollLoop>> EpollLoop::Create() {
  UniqueFd epoll(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return absl::ErrnoToStatus(errno, "epoll_create1");
  UniqueFd wake(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake) return absl::ErrnoToStatus(errno, "eventfd for the event loop");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeTag;
  if (epoll_ctl(epoll.get(), EPOLL_CTL_ADD, wake.get(), &ev) < 0) {
    return absl::ErrnoToStatus(errno, "epoll_ctl add eventfd");
  }
  return std::unique_ptr<EpollLoop>(new EpollLoop(std::move(epoll), std::move(wake)));
}

EpollLoop::~EpollLoop() = default;

absl::Duration EpollLoop::MonotonicNow() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return absl::DurationFromTimespec(ts);
}

absl::Status EpollLoop::Watch(int fd, uint32_t events, EventHandler* h) {
  if (fd < 0 || h == nullptr) return absl::InvalidArgumentError("Watch: bad fd or null handler");
  if (handlers_.contains(fd)) {
    return absl::AlreadyExistsError(absl::StrCat("fd ", fd, " is already watched"));
  }
  uint32_t generation = next_generation_++;
  if (next_generation_ == 0) next_generation_ = 1;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = Pack(fd, generation);
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("epoll_ctl add fd ", fd));
  }
  handlers_[fd] = Watched{h, generation};
  return absl::OkStatus();
}

absl::Status EpollLoop::Modify(int fd, uint32_t events, EventHandler* h) {
  auto it = handlers_.find(fd);
  if (it == handlers_.end()) return absl::NotFoundError(absl::StrCat("fd ", fd, " not watched"));
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = Pack(fd, it->second.generation);
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("epoll_ctl mod fd ", fd));
  }
  it->second.handler = h;
  return absl::OkStatus();
}

void EpollLoop::Unwatch(int fd) {
  auto it = handlers_.find(fd);
  if (it == handlers_.end()) return;
  handlers_.erase(it);
  // Fails only if fd was already closed, which removed it from the set anyway.
  epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
}

void EpollLoop::Defer(std::function<void()> fn) { deferred_.push_back(std::move(fn)); }

void EpollLoop::RunAfter(absl::Duration d, std::function<void()> fn) {
  timers_.push_back(
      Timer{MonotonicNow() + std::max(d, absl::ZeroDuration()), next_timer_seq_++, std::move(fn)});
  std::push_heap(timers_.begin(), timers_.end(), TimerLater());
}

void EpollLoop::Stop() {
  stop_.store(true);
  uint64_t one = 1;
  (void)!write(wake_.get(), &one, sizeof one);
}

bool EpollLoop::RunOnce(absl::Duration timeout) {
  if (stop_.exchange(false)) return false;
  absl::Duration wait = std::max(timeout, absl::ZeroDuration());
  if (!deferred_.empty()) wait = absl::ZeroDuration();
  if (!timers_.empty())
    wait = std::min(wait, std::max(timers_.front().due - MonotonicNow(), absl::ZeroDuration()));
  int wait_ms = -1;
  if (wait != absl::InfiniteDuration()) {
    // Round up so a timer due in 0.3 ms does not make us spin with a zero timeout.
    wait_ms = static_cast<int>(
        std::min<int64_t>(absl::ToInt64Milliseconds(wait + absl::Microseconds(999)), 1 << 30));
  }

  epoll_event events[kMaxEventsPerWait];
  int n = epoll_wait(epoll_.get(), events, kMaxEventsPerWait, wait_ms);
  bool woken = false;
  for (int i = 0; i < n; ++i) {
    uint64_t tag = events[i].data.u64;
    if (tag == kWakeTag) {
      uint64_t count;
      (void)!read(wake_.get(), &count, sizeof count);
      woken = true;
      continue;
    }
    int fd = static_cast<int>(static_cast<uint32_t>(tag));
    uint32_t generation = static_cast<uint32_t>(tag >> 32);
    auto it = handlers_.find(fd);
    // Unwatched (or unwatched and re-watched) earlier in this batch.
    if (it == handlers_.end() || it->second.generation != generation) continue;
    it->second.handler->OnEvents(events[i].events);
  }
  RunTimers();
  RunDeferred();
  if (woken && stop_.exchange(false)) return false;
  return true;
}

void EpollLoop::Run() {
  while (RunOnce(absl::InfiniteDuration())) {
  }
}

void EpollLoop::RunTimers() {
  if (timers_.empty()) return;
  absl::Duration now = MonotonicNow();
  // Timers added by a timer function run in a later pass, even if already due.
  std::vector<std::function<void()>> due;
  while (!timers_.empty() && timers_.front().due <= now) {
    std::pop_heap(timers_.begin(), timers_.end(), TimerLater());
    due.push_back(std::move(timers_.back().fn));
    timers_.pop_back();
  }
  for (auto& fn : due) fn();
}

void EpollLoop::RunDeferred() {
  while (!deferred_.empty()) {
    std::vector<std::function<void()>> batch;
    batch.swap(deferred_);
    for (auto& fn : batch) fn();
  }
}

}  // namespace ambit
