#include "agent/zds/endpoint.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "agent/common/log.h"
#include "agent/common/status.h"

namespace ambit::zds {
namespace {
constexpr const char* kComponent = "zds";

absl::StatusOr<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("ZDS socket path '", path,
                                                   "' is empty or longer than ",
                                                   sizeof(addr.sun_path) - 1, " bytes"));
  }
  memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

}  // namespace

// One connection, either side's. Owned by its endpoint through a shared_ptr; answers and timers
// hold weak_ptrs, so one that arrives after the session closed sends nothing.
class Session final : public EventHandler, public std::enable_shared_from_this<Session> {
 public:
  Session(EventLoop& loop, UniqueFd fd, SessionKind kind, Source source, WorkloadSink& sink,
          Stats& stats, std::function<void(Session*)> on_close)
      : loop_(loop),
        fd_(std::move(fd)),
        state_(kind),
        source_(source),
        sink_(sink),
        stats_(stats),
        on_close_(std::move(on_close)) {}
  ~Session() override {
    if (fd_) loop_.Unwatch(fd_.get());
  }

  absl::Status Start() {
    AMBIT_RETURN_IF_ERROR(Send(EncodeHello()));
    state_.HelloSent();
    AMBIT_RETURN_IF_ERROR(loop_.Watch(fd_.get(), EPOLLIN, this));
    ++stats_.sessions[static_cast<size_t>(source_)];
    counted_ = true;
    return absl::OkStatus();
  }

  void OnEvents(uint32_t events) override {
    if (closed_) return;
    if (state_.awaiting_answer()) {
      // Not reading (the mask is empty): only a hang-up or error is reported here.
      if (events & (EPOLLHUP | EPOLLERR)) Close("peer closed the connection");
      return;
    }
    ReadOne();
  }

  void Close(const std::string& why) {
    if (closed_) return;
    closed_ = true;
    if (counted_) --stats_.sessions[static_cast<size_t>(source_)];
    AMBIT_LOG(kComponent, Debug) << SourceName(source_) << " session closed: " << why;
    loop_.Unwatch(fd_.get());
    fd_.Reset();
    // The endpoint drops its reference after this batch of events: `this` stays valid meanwhile.
    auto self = shared_from_this();
    auto on_close = on_close_;
    loop_.Defer([self, on_close] { on_close(self.get()); });
  }

 private:
  absl::Status Send(const std::string& bytes) {
    // Never blocks the loop: a peer that does not read its answers fills its buffer and is
    // dropped, instead of stalling every other session and the agent.
    while (true) {
      ssize_t n = send(fd_.get(), bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n >= 0) return absl::OkStatus();
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        return absl::ResourceExhaustedError("the peer does not read its answers (buffer full)");
      }
      return absl::ErrnoToStatus(errno, "send on ZDS session");
    }
  }

  void Count(Request::Type type, const std::string& outcome) {
    ++stats_.requests[{std::string(TypeName(type)), std::string(outcome)}];
  }

  void ReadOne() {
    std::string data(kMaxRequestBytes, '\0');
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxRequestFds)];
    iovec iov{data.data(), data.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n;
    do {
      n = recvmsg(fd_.get(), &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == EAGAIN) return;
      Close(std::string(absl::ErrnoToStatus(errno, "recvmsg").message()));
      return;
    }
    std::vector<UniqueFd> fds;
    if (msg.msg_controllen > 0) {
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
          int fd;
          memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
          fds.emplace_back(fd);
        }
      }
    }
    if (n == 0 && fds.empty() && !(msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
      Close("peer closed the connection");
      return;
    }
    data.resize(static_cast<size_t>(n));
    auto request = DecodeRequest(data, std::move(fds), msg.msg_flags, KernelNetnsCheck);
    if (!request.ok()) {
      AMBIT_LOG(kComponent, Warning)
          << SourceName(source_) << " session: refused request: " << request.status().message();
      ++stats_.requests[{"invalid", "invalid"}];
      Reply(std::string(request.status().message()));
      return;
    }
    Handle(*std::move(request));
  }

  void Handle(Request request) {
    const Request::Type type = request.type;
    SessionState::Step step = state_.OnRequest(type, request.uid, sink_.Known(source_));
    if (!step.error.empty()) {
      Count(type, "error");
      Reply(step.error);
      return;
    }
    switch (type) {
      case Request::Type::kAdd: {
        // Reads stop until the answer: the next request waits in the socket, not here.
        if (absl::Status s = loop_.Modify(fd_.get(), 0, this); !s.ok()) {
          Close(std::string(s.message()));
          return;
        }
        std::weak_ptr<Session> weak = shared_from_this();
        sink_.OnAdd(source_, std::move(request), [weak, type](std::string error) {
          auto self = weak.lock();
          if (self == nullptr || self->closed_) return;
          self->Count(type, error.empty() ? "ok" : "error");
          self->Finish(error);
        });
        return;
      }
      case Request::Type::kKeep: {
        std::string error = sink_.OnKeep(source_, request.uid);
        Count(type, error.empty() ? "ok" : "error");
        Finish(error);
        return;
      }
      case Request::Type::kDel: {
        std::string error = sink_.OnDel(source_, request.uid);
        Count(type, error.empty() ? "ok" : "error");
        Finish(error);
        return;
      }
      case Request::Type::kSnapshotSent:
        if (!step.remove.empty()) sink_.OnSnapshotSent(source_, step.remove);
        Count(type, "ok");
        Finish("");
        return;
    }
  }

  // The answer to the request being carried out; reading resumes.
  void Finish(const std::string& error) {
    state_.Answered();
    if (!Reply(error)) return;
    if (absl::Status s = loop_.Modify(fd_.get(), EPOLLIN, this); !s.ok())
      Close(std::string(s.message()));
  }

  bool Reply(const std::string& error) {
    if (absl::Status s = Send(EncodeAck(error)); !s.ok()) {
      AMBIT_LOG(kComponent, Warning) << SourceName(source_) << " session dropped: " << s.message();
      Close(std::string(s.message()));
      return false;
    }
    return true;
  }

  EventLoop& loop_;
  UniqueFd fd_;
  SessionState state_;
  Source source_;
  WorkloadSink& sink_;
  Stats& stats_;
  std::function<void(Session*)> on_close_;
  bool closed_ = false;
  bool counted_ = false;
};

class ZdsServer::Acceptor final : public EventHandler {
 public:
  explicit Acceptor(ZdsServer& server) : server_(server) {}
  void OnEvents(uint32_t) override { server_.OnAcceptable(); }

 private:
  ZdsServer& server_;
};

absl::StatusOr<std::unique_ptr<ZdsServer>> ZdsServer::Create(EventLoop& loop, Options options,
                                                             WorkloadSink& sink, Stats& stats) {
  AMBIT_ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(options.path));
  UniqueFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return absl::ErrnoToStatus(errno, "socket(AF_UNIX, SOCK_SEQPACKET) for --zds-listen");
  // A socket file left by an earlier agent of this instance (the instance lock says none runs).
  struct stat st;
  if (lstat(options.path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(
          absl::StrCat("--zds-listen ", options.path, " exists and is not a socket"));
    }
    unlink(options.path.c_str());
  }
  // Created 0600 from the start (no window in which another user could connect).
  const mode_t old_umask = umask(0177);
  const int rc = bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int bind_errno = errno;
  umask(old_umask);
  if (rc < 0) {
    return absl::ErrnoToStatus(bind_errno, absl::StrCat("bind --zds-listen ", options.path));
  }
  if (listen(fd.get(), 64) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("listen on --zds-listen ", options.path));
  }
  std::unique_ptr<ZdsServer> server(
      new ZdsServer(loop, std::move(options), sink, stats, std::move(fd)));
  server->acceptor_ = std::make_unique<Acceptor>(*server);
  AMBIT_RETURN_IF_ERROR(loop.Watch(server->listener_.get(), EPOLLIN, server->acceptor_.get()));
  return server;
}

ZdsServer::ZdsServer(EventLoop& loop, Options options, WorkloadSink& sink, Stats& stats,
                     UniqueFd listener)
    : loop_(loop),
      options_(std::move(options)),
      sink_(sink),
      stats_(stats),
      listener_(std::move(listener)) {}

ZdsServer::~ZdsServer() {
  *self_ = nullptr;  // sessions closing below find the server gone
  loop_.Unwatch(listener_.get());
  for (auto& [ptr, session] : sessions_) session->Close("agent stopping");
  sessions_.clear();
  unlink(options_.path.c_str());
}

void ZdsServer::OnAcceptable() {
  // A bounded number per wake-up, so a flood of connections cannot starve the loop.
  for (int i = 0; i < 16; ++i) {
    UniqueFd conn(accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!conn) {
      if (errno != EAGAIN && errno != EINTR) {
        AMBIT_LOG(kComponent, Warning) << "accept on " << options_.path << ": "
                                       << absl::ErrnoToStatus(errno, "accept4").message();
      }
      return;
    }
    if (sessions_.size() >= options_.max_sessions) {
      if (refused_++ % 100 == 0) {
        AMBIT_LOG(kComponent, Warning)
            << options_.path << ": " << options_.max_sessions
            << " ZDS sessions open; closing a new connection (" << refused_ << " so far)";
      }
      continue;
    }
    auto session = std::make_shared<Session>(loop_, std::move(conn), SessionKind::kIncremental,
                                             Source::kAmbitCni, sink_, stats_,
                                             [weak = std::weak_ptr<ZdsServer*>(self_)](Session* s) {
                                               auto self = weak.lock();
                                               if (self != nullptr && *self != nullptr)
                                                 (*self)->sessions_.erase(s);
                                             });
    Session* raw = session.get();
    sessions_.emplace(raw, std::move(session));
    if (absl::Status s = raw->Start(); !s.ok()) raw->Close(std::string(s.message()));
  }
}

std::unique_ptr<ZdsClient> ZdsClient::Start(EventLoop& loop, Options options, WorkloadSink& sink,
                                            Stats& stats) {
  std::unique_ptr<ZdsClient> client(new ZdsClient(loop, std::move(options), sink, stats));
  client->TryConnect();
  return client;
}

ZdsClient::ZdsClient(EventLoop& loop, Options options, WorkloadSink& sink, Stats& stats)
    : loop_(loop),
      options_(std::move(options)),
      sink_(sink),
      stats_(stats),
      backoff_(options_.initial_backoff) {}

ZdsClient::~ZdsClient() {
  *self_ = nullptr;  // pending reconnect timers find the client gone
  if (session_ != nullptr) session_->Close("agent stopping");
  session_.reset();
}

void ZdsClient::TryConnect() {
  auto failed = [this](const absl::Status& s) {
    if (std::string error(s.message()); error != last_error_) {
      AMBIT_LOG(kComponent, Warning)
          << "--zds-connect " << options_.path << ": " << error << " (retrying, at most every "
          << absl::FormatDuration(options_.max_backoff) << ")";
      last_error_ = std::move(error);
    }
    ScheduleReconnect();
  };
  auto addr = UnixAddress(options_.path);
  if (!addr.ok()) {
    failed(addr.status());
    return;
  }
  UniqueFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) {
    failed(absl::ErrnoToStatus(errno, "socket(AF_UNIX, SOCK_SEQPACKET)"));
    return;
  }
  // A unix socket connects at once or not at all (a full backlog is EAGAIN: retried).
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) < 0) {
    failed(absl::ErrnoToStatus(errno, "connect"));
    return;
  }
  session_ = std::make_shared<Session>(loop_, std::move(fd), SessionKind::kSnapshot,
                                       Source::kIstioCni, sink_, stats_,
                                       [weak = std::weak_ptr<ZdsClient*>(self_)](Session* s) {
                                         auto self = weak.lock();
                                         if (self == nullptr || *self == nullptr) return;
                                         ZdsClient* client = *self;
                                         if (client->session_.get() != s) return;
                                         client->session_.reset();
                                         client->ScheduleReconnect();
                                       });
  if (absl::Status s = session_->Start(); !s.ok()) {
    session_->Close(std::string(s.message()));
    return;
  }
  AMBIT_LOG(kComponent, Info) << "connected to istio-cni at " << options_.path;
  last_error_.clear();
  backoff_ = options_.initial_backoff;
}

void ZdsClient::ScheduleReconnect() {
  const absl::Duration wait = backoff_;
  backoff_ = std::min(backoff_ * 2, options_.max_backoff);
  std::weak_ptr<ZdsClient*> weak = self_;
  loop_.RunAfter(wait, [weak] {
    auto self = weak.lock();
    if (self == nullptr || *self == nullptr) return;
    ZdsClient* client = *self;
    if (client->session_ == nullptr) client->TryConnect();
  });
}

}  // namespace ambit::zds
