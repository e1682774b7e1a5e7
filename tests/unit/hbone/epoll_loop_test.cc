// EpollLoop: readiness dispatch, deferred work, timers, Unwatch inside a batch, Stop.

#include "agent/common/epoll_loop.h"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <thread>
#include <vector>

#include "agent/common/unique_fd.h"
#include "gtest/gtest.h"

namespace ambit {
namespace {

class Recorder : public EventHandler {
 public:
  explicit Recorder(std::function<void(uint32_t)> fn = nullptr) : fn_(std::move(fn)) {}
  void OnEvents(uint32_t events) override {
    ++calls;
    last = events;
    if (fn_) fn_(events);
  }
  int calls = 0;
  uint32_t last = 0;

 private:
  std::function<void(uint32_t)> fn_;
};

std::pair<UniqueFd, UniqueFd> SocketPair() {
  int fds[2];
  EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

TEST(EpollLoopTest, DispatchesReadinessAndModify) {
  auto loop = EpollLoop::Create();
  ASSERT_TRUE(loop.ok());
  auto [a, b] = SocketPair();
  Recorder r;
  ASSERT_TRUE((*loop)->Watch(a.get(), EPOLLIN, &r).ok());
  EXPECT_FALSE((*loop)->Watch(a.get(), EPOLLIN, &r).ok());
  (*loop)->RunOnce(absl::ZeroDuration());
  EXPECT_EQ(r.calls, 0);
  ASSERT_EQ(write(b.get(), "x", 1), 1);
  (*loop)->RunOnce(absl::Seconds(1));
  EXPECT_EQ(r.calls, 1);
  EXPECT_TRUE(r.last & EPOLLIN);
  ASSERT_TRUE((*loop)->Modify(a.get(), EPOLLOUT, &r).ok());
  (*loop)->RunOnce(absl::Seconds(1));
  EXPECT_EQ(r.calls, 2);
  EXPECT_TRUE(r.last & EPOLLOUT);
  (*loop)->Unwatch(a.get());
  (*loop)->RunOnce(absl::ZeroDuration());
  EXPECT_EQ(r.calls, 2);
  EXPECT_EQ((*loop)->watched(), 0u);
}

TEST(EpollLoopTest, UnwatchInsideABatchDropsPendingEvents) {
  auto loop = EpollLoop::Create();
  ASSERT_TRUE(loop.ok());
  auto [a1, b1] = SocketPair();
  auto [a2, b2] = SocketPair();
  Recorder* first = nullptr;
  Recorder* second = nullptr;
  int a1_fd = a1.get();
  int a2_fd = a2.get();
  // Whichever handler runs first unwatches the other; the other must not run.
  Recorder r1([&](uint32_t) { (*loop)->Unwatch(a2_fd); });
  Recorder r2([&](uint32_t) { (*loop)->Unwatch(a1_fd); });
  first = &r1;
  second = &r2;
  ASSERT_TRUE((*loop)->Watch(a1.get(), EPOLLIN, first).ok());
  ASSERT_TRUE((*loop)->Watch(a2.get(), EPOLLIN, second).ok());
  ASSERT_EQ(write(b1.get(), "x", 1), 1);
  ASSERT_EQ(write(b2.get(), "x", 1), 1);
  (*loop)->RunOnce(absl::Seconds(1));
  EXPECT_EQ(r1.calls + r2.calls, 1);
}

TEST(EpollLoopTest, DeferRunsAfterTheBatchInOrder) {
  auto loop = EpollLoop::Create();
  ASSERT_TRUE(loop.ok());
  std::vector<int> order;
  (*loop)->Defer([&] {
    order.push_back(1);
    (*loop)->Defer([&] { order.push_back(3); });
  });
  (*loop)->Defer([&] { order.push_back(2); });
  absl::Time start = absl::Now();
  (*loop)->RunOnce(absl::Seconds(5));  // deferred work means no waiting
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
}

TEST(EpollLoopTest, TimersFireInDeadlineOrder) {
  auto loop = EpollLoop::Create();
  ASSERT_TRUE(loop.ok());
  std::vector<int> order;
  absl::Time start = absl::Now();
  (*loop)->RunAfter(absl::Milliseconds(60), [&] { order.push_back(2); });
  (*loop)->RunAfter(absl::Milliseconds(20), [&] { order.push_back(1); });
  while (order.size() < 2 && absl::Now() - start < absl::Seconds(5)) {
    (*loop)->RunOnce(absl::Seconds(1));
  }
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(60));
}

TEST(EpollLoopTest, StopFromAnotherThread) {
  auto loop = EpollLoop::Create();
  ASSERT_TRUE(loop.ok());
  std::thread stopper([&] {
    absl::SleepFor(absl::Milliseconds(50));
    (*loop)->Stop();
  });
  absl::Time start = absl::Now();
  (*loop)->Run();
  stopper.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  // The stop request was consumed.
  EXPECT_TRUE((*loop)->RunOnce(absl::ZeroDuration()));
}

}  // namespace
}  // namespace ambit
