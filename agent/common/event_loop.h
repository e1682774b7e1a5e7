#pragma once

// The readiness-driven event loop data-plane objects (HBONE sessions, tunnel connections) are
// written against, so the same code runs on a worker's epoll loop and in single-threaded tests.
//
// Thread-safety: an EventLoop and everything registered with it belong to one thread; every call
// below is made on that thread (implementations may document exceptions, e.g. EpollLoop::Stop).

#include <cstdint>
#include <functional>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace ambit {

// Something registered for readiness events on one file descriptor.
class EventHandler {
 public:
  virtual ~EventHandler() = default;
  // `epoll_events` is the EPOLLIN / EPOLLOUT / EPOLLERR / EPOLLHUP mask that fired.
  virtual void OnEvents(uint32_t epoll_events) = 0;
};

class EventLoop {
 public:
  virtual ~EventLoop() = default;

  // Starts delivering `events` (an epoll mask; level-triggered unless EPOLLET is included) for
  // `fd` to `h`. `h` must stay alive until Unwatch(fd). One handler per fd.
  virtual absl::Status Watch(int fd, uint32_t events, EventHandler* h) = 0;
  // Changes the mask (and handler) of a watched fd.
  virtual absl::Status Modify(int fd, uint32_t events, EventHandler* h) = 0;
  // Stops delivery at once: events for `fd` still pending in the current batch are dropped. Call
  // before closing `fd`. Unknown fds are ignored.
  virtual void Unwatch(int fd) = 0;
  // Runs `fn` on the loop thread after the current batch of events (and timers) has been
  // dispatched; the place to delete objects that events of this batch may still name. Functions
  // deferred by deferred functions run in the same pass.
  virtual void Defer(std::function<void()> fn) = 0;
  // Runs `fn` once, no earlier than `d` from now. Not cancellable: capture a weak_ptr and let the
  // function find its target gone.
  virtual void RunAfter(absl::Duration d, std::function<void()> fn) = 0;
};

}  // namespace ambit
