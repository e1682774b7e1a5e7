#include "agent/tunnel/worker.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "agent/common/log.h"
#include "agent/tunnel/connection.h"
#include "agent/tunnel/hbone_pool.h"
#include "agent/tunnel/tls_contexts.h"

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
      // Relayed bytes go out as they arrive: Nagle on a relay hop only adds a round trip's wait
      // to every small write (and, with delayed ACKs on the other side, tens of milliseconds).
      int one = 1;
      setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      HandleAccepted(worker_, pod_, kind_, UniqueFd(c));
    }
  }

 private:
  Worker& worker_;
  std::shared_ptr<const Pod> pod_;  // keeps the listener fds open while watched
  ListenerKind kind_;
  int fd_;
};

// Runs posted tasks when the task queue's eventfd fires.
class Worker::TaskHandler : public EventHandler {
 public:
  explicit TaskHandler(TaskQueue& tasks) : tasks_(tasks) {}
  void OnEvents(uint32_t) override { tasks_.Drain(); }

 private:
  TaskQueue& tasks_;
};

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(
    int index, std::shared_ptr<const DataPlaneSettings> settings) {
  auto loop = EpollLoop::Create();
  if (!loop.ok()) return loop.status();
  auto worker = std::unique_ptr<Worker>(new Worker(index, std::move(settings), std::move(*loop)));
  worker->task_handler_ = std::make_unique<TaskHandler>(worker->tasks_);
  auto status = worker->loop_->Watch(worker->tasks_.fd(), EPOLLIN, worker->task_handler_.get());
  if (!status.ok()) return status;
  return worker;
}

Worker::Worker(int index, std::shared_ptr<const DataPlaneSettings> settings,
               std::unique_ptr<EpollLoop> loop)
    : index_(index), settings_(std::move(settings)), loop_(std::move(loop)) {
  hbone::SessionOptions options;
  options.stats = &hbone_stats_;
  pool_ = std::make_unique<HbonePool>(*this, options, settings_->max_streams_per_connection,
                                      settings_->idle_timeout);
  inbound_ = std::make_unique<InboundSessions>(*this, options);
}

Worker::~Worker() {
  Stop();
  Join();
  // Flows first: they reference sessions the pool and inbound set own.
  connections_.clear();
  listeners_.clear();
}

void Worker::Start() {
  thread_ = std::thread([this] { loop_->Run(); });
}

void Worker::Stop() { loop_->Stop(); }

void Worker::Join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::Post(std::function<void(Worker&)> fn) {
  tasks_.Post([this, fn = std::move(fn)] { fn(*this); });
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
    // Events of this batch may still name the handler: free it after the batch.
    loop_->Defer([handler = std::shared_ptr<ListenerHandler>(std::move(l))] {});
  }
  listeners_.erase(it);
}

void Worker::SetSnapshot(std::shared_ptr<const MeshSnapshot> snapshot) {
  snapshot_ = std::move(snapshot);
  std::vector<Flow*> live;
  for (const auto& [raw, flow] : connections_) live.push_back(raw);
  for (Flow* f : live) f->Recheck(*snapshot_);
}

void Worker::Retire(Flow* flow) {
  loop_->Defer([this, flow] { connections_.erase(flow); });
}

void Worker::Adopt(std::unique_ptr<Flow> flow) {
  Flow* raw = flow.get();
  connections_.emplace(raw, std::move(flow));
}

}  // namespace ambit::tunnel
