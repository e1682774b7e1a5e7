#include "agent/tunnel/worker.h"

#include <errno.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "agent/common/log.h"
#include "agent/tunnel/connection.h"

namespace ambit::tunnel {
namespace {
constexpr const char* kComponent = "tunnel";
}

const char* ListenerKindName(ListenerKind kind) {
  switch (kind) {
    case ListenerKind::kOutbound: return "outbound";
    case ListenerKind::kInboundPlain: return "inbound-plaintext";
    case ListenerKind::kHbone: return "hbone";
  }
  return "?";
}

// A pod listener as seen by one worker. Every worker watches every listener with EPOLLEXCLUSIVE,
// so one wakes per burst of SYNs and a connection stays on the worker that accepted it.
class Worker::ListenerHandler : public EventHandler {
 public:
  ListenerHandler(Worker& worker, std::shared_ptr<const Pod> pod, ListenerKind kind, int fd)
      : worker_(worker), pod_(std::move(pod)), kind_(kind), fd_(fd) {}
  int fd() const { return fd_; }
  void OnEvents(uint32_t) override {
    // Bounded so one busy listener cannot starve the worker's connections.
    for (int i = 0; i < 64; ++i) {
      int c = accept4(fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (c < 0) {
        if (errno != EAGAIN && errno != ECONNABORTED && errno != EINTR) {
          AMBIT_LOG(kComponent, Warning) << "accept on " << ListenerKindName(kind_)
                                         << " listener of " << pod_->uid << ": "
                                         << strerror(errno);
        }
        return;
      }
      HandleAccepted(worker_, pod_, kind_, UniqueFd(c));
    }
  }

 private:
  Worker& worker_;
  std::shared_ptr<const Pod> pod_;  // keeps the listener fds open while watched
  ListenerKind kind_;
  int fd_;
};

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(
    int index, std::shared_ptr<const DataPlaneSettings> settings) {
  UniqueFd epoll(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return absl::ErrnoToStatus(errno, "epoll_create1");
  UniqueFd wake(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake) return absl::ErrnoToStatus(errno, "eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // the wake-up fd
  if (epoll_ctl(epoll.get(), EPOLL_CTL_ADD, wake.get(), &ev) < 0) {
    return absl::ErrnoToStatus(errno, "epoll_ctl(eventfd)");
  }
  return std::unique_ptr<Worker>(
      new Worker(index, std::move(settings), std::move(epoll), std::move(wake)));
}

Worker::Worker(int index, std::shared_ptr<const DataPlaneSettings> settings, UniqueFd epoll,
               UniqueFd wake)
    : index_(index), settings_(std::move(settings)), epoll_(std::move(epoll)),
      wake_(std::move(wake)) {}

Worker::~Worker() {
  Stop();
  Join();
}

void Worker::Start() {
  thread_ = std::thread([this] { Run(); });
}

void Worker::Stop() {
  stop_.store(true);
  uint64_t one = 1;
  (void)!write(wake_.get(), &one, sizeof one);
}

void Worker::Join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::Post(std::function<void(Worker&)> fn) {
  {
    absl::MutexLock lock(&mu_);
    tasks_.push_back(std::move(fn));
  }
  uint64_t one = 1;
  (void)!write(wake_.get(), &one, sizeof one);
}

void Worker::DrainTasks() {
  uint64_t n;
  (void)!read(wake_.get(), &n, sizeof n);
  std::deque<std::function<void(Worker&)>> tasks;
  {
    absl::MutexLock lock(&mu_);
    tasks.swap(tasks_);
  }
  for (auto& t : tasks) t(*this);
}

void Worker::Run() {
  epoll_event events[128];
  while (!stop_.load()) {
    int n = epoll_wait(epoll_.get(), events, 128, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      AMBIT_LOG(kComponent, Error) << "worker " << index_ << ": epoll_wait: " << strerror(errno);
      return;
    }
    for (int i = 0; i < n; ++i) {
      auto* handler = static_cast<EventHandler*>(events[i].data.ptr);
      if (handler == nullptr) {
        DrainTasks();
      } else {
        handler->OnEvents(events[i].events);
      }
    }
    for (Connection* c : retired_) connections_.erase(c);
    retired_.clear();
    retired_listeners_.clear();
  }
}

void Worker::AddPod(std::shared_ptr<const Pod> pod) {
  RemovePod(pod->uid);
  auto& list = listeners_[pod->uid];
  auto add = [&](const UniqueFd& fd, ListenerKind kind) {
    if (!fd) return;
    auto handler = std::make_unique<ListenerHandler>(*this, pod, kind, fd.get());
    auto status = Watch(fd.get(), EPOLLIN | EPOLLEXCLUSIVE, handler.get());
    if (!status.ok()) {
      AMBIT_LOG(kComponent, Error) << "worker " << index_ << ": watch "
                                   << ListenerKindName(kind) << " listener of " << pod->uid
                                   << ": " << status.message();
      return;
    }
    list.push_back(std::move(handler));
  };
  add(pod->outbound_v4, ListenerKind::kOutbound);
  add(pod->outbound_v6, ListenerKind::kOutbound);
  add(pod->inbound_plain, ListenerKind::kInboundPlain);
  add(pod->hbone, ListenerKind::kHbone);
}

void Worker::RemovePod(const std::string& uid) {
  auto it = listeners_.find(uid);
  if (it == listeners_.end()) return;
  for (auto& l : it->second) {
    Unwatch(l->fd());
    retired_listeners_.push_back(std::move(l));
  }
  listeners_.erase(it);
}

absl::Status Worker::Watch(int fd, uint32_t events, EventHandler* handler) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = handler;
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) < 0) {
    return absl::ErrnoToStatus(errno, "epoll_ctl(ADD)");
  }
  return absl::OkStatus();
}

void Worker::Unwatch(int fd) { epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr); }

void Worker::Retire(Connection* conn) { retired_.push_back(conn); }

void Worker::Adopt(std::unique_ptr<Connection> conn) {
  Connection* raw = conn.get();
  connections_.emplace(raw, std::move(conn));
}

}  // namespace ambit::tunnel
