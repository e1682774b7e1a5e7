#include "agent/waypoint/socket_stream.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "agent/common/socket_util.h"

namespace ambit::waypoint {
namespace {

constexpr size_t kReadChunk = 64 << 10;
// Reads per readiness event, so one busy socket cannot starve the others on the loop.
constexpr int kReadsPerEvent = 4;

}  // namespace

std::unique_ptr<SocketStream> SocketStream::Adopt(EventLoop* loop, UniqueFd fd, std::string peer) {
  int flags = fcntl(fd.get(), F_GETFL);
  if (flags >= 0) fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK);
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  auto s = std::unique_ptr<SocketStream>(new SocketStream(loop, std::move(fd), peer, false));
  return s;
}

std::unique_ptr<SocketStream> SocketStream::Dial(EventLoop* loop, const SocketAddress& to,
                                                 Observer* observer) {
  sockaddr_storage ss{};
  socklen_t len = to.ToSockaddr(&ss);
  UniqueFd fd(socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  auto s = std::unique_ptr<SocketStream>(new SocketStream(loop, UniqueFd(), to.ToString(), true));
  s->observer_ = observer;
  if (!fd) {
    s->pending_error_ = absl::ErrnoToStatus(errno, "socket for upstream");
  } else {
    int one = 1;
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) < 0 && errno != EINPROGRESS) {
      s->pending_error_ = absl::ErrnoToStatus(errno, absl::StrCat("connect ", to.ToString()));
    } else {
      s->fd_ = std::move(fd);
    }
  }
  if (!s->pending_error_.ok()) {
    std::weak_ptr<bool> alive = s->alive_;
    SocketStream* raw = s.get();
    loop->Defer([alive, raw] {
      if (alive.lock() && !raw->closed_) raw->Fail(raw->pending_error_);
    });
    return s;
  }
  s->UpdateInterest();
  return s;
}

std::unique_ptr<SocketStream> SocketStream::Connecting(EventLoop* loop, UniqueFd fd,
                                                       std::string peer, Observer* observer) {
  auto s = std::unique_ptr<SocketStream>(new SocketStream(loop, std::move(fd), std::move(peer),
                                                          /*connecting=*/true));
  s->observer_ = observer;
  // Writable once connected (at once if it already is): the connect's end is read from SO_ERROR.
  s->UpdateInterest();
  return s;
}

SocketStream::~SocketStream() { Close(); }

void SocketStream::SetObserver(Observer* observer) {
  observer_ = observer;
  UpdateInterest();
}

void SocketStream::UpdateInterest() {
  if (closed_ || !fd_ || observer_ == nullptr) return;
  uint32_t want = 0;
  if (read_enabled_ && !read_eof_ && !connecting_) want |= EPOLLIN | EPOLLRDHUP;
  if (connecting_ || buffered() > 0) want |= EPOLLOUT;
  if (watched_ && want == interest_) return;
  interest_ = want;
  if (!watched_) {
    if (want == 0) return;  // nothing to wait for: no HUP storm while paused at EOF
    watched_ = loop_->Watch(fd_.get(), want, this).ok();
  } else if (want == 0) {
    loop_->Unwatch(fd_.get());
    watched_ = false;
  } else {
    (void)loop_->Modify(fd_.get(), want, this);
  }
}

void SocketStream::Fail(absl::Status status) {
  if (closed_) return;
  Observer* o = observer_;
  Close(true);
  if (o != nullptr) o->OnError(status);
}

void SocketStream::OnEvents(uint32_t events) {
  if (closed_) return;
  if (connecting_) {
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      return Fail(absl::ErrnoToStatus(err, absl::StrCat("connect ", peer_)));
    }
    if (!(events & EPOLLOUT)) return;
    connecting_ = false;
    UpdateInterest();
    observer_->OnConnected();
    if (closed_) return;
    FlushOut();
    return;
  }
  if (events & EPOLLERR) {
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    return Fail(absl::ErrnoToStatus(err != 0 ? err : ECONNRESET, absl::StrCat("socket ", peer_)));
  }
  if (events & EPOLLOUT) {
    FlushOut();
    if (closed_) return;
  }
  if (events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP)) ReadIn();
}

void SocketStream::ReadIn() {
  char buf[kReadChunk];
  for (int i = 0; i < kReadsPerEvent && read_enabled_ && !read_eof_ && !closed_; ++i) {
    ssize_t n = recv(fd_.get(), buf, sizeof(buf), 0);
    if (n > 0) {
      observer_->OnData(absl::string_view(buf, static_cast<size_t>(n)));
      continue;
    }
    if (n == 0) {
      read_eof_ = true;
      UpdateInterest();
      observer_->OnEnd();
      return;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    if (errno == EINTR) continue;
    return Fail(absl::ErrnoToStatus(errno, absl::StrCat("recv from ", peer_)));
  }
}

void SocketStream::Write(absl::string_view data) {
  if (closed_ || write_shut_ || shutdown_pending_ || data.empty()) return;
  if (!connecting_ && buffered() == 0 && fd_) {
    ssize_t n = send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) data.remove_prefix(static_cast<size_t>(n));
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      // Reported from the loop: the caller is in the middle of its own work.
      int err = errno;
      std::weak_ptr<bool> alive = alive_;
      loop_->Defer([this, alive, err] {
        if (alive.lock()) Fail(absl::ErrnoToStatus(err, absl::StrCat("send to ", peer_)));
      });
      return;
    }
    if (data.empty()) return;
  }
  if (out_pos_ > 0 && out_pos_ >= out_.size() / 2) {
    out_.erase(0, out_pos_);
    out_pos_ = 0;
  }
  out_.append(data.data(), data.size());
  if (buffered() > kHighWater) above_high_ = true;
  UpdateInterest();
}

void SocketStream::FlushOut() {
  while (buffered() > 0) {
    ssize_t n = send(fd_.get(), out_.data() + out_pos_, buffered(), MSG_NOSIGNAL);
    if (n > 0) {
      out_pos_ += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    return Fail(absl::ErrnoToStatus(errno, absl::StrCat("send to ", peer_)));
  }
  if (buffered() == 0) {
    out_.clear();
    out_pos_ = 0;
    if (shutdown_pending_ && !write_shut_) {
      shutdown(fd_.get(), SHUT_WR);
      write_shut_ = true;
    }
  }
  UpdateInterest();
  if (above_high_ && buffered() <= kHighWater / 4) {
    above_high_ = false;
    if (observer_ != nullptr) observer_->OnWritable();
  }
}

void SocketStream::SetReadEnabled(bool enabled) {
  if (read_enabled_ == enabled) return;
  read_enabled_ = enabled;
  UpdateInterest();
}

void SocketStream::ShutdownWrite() {
  if (closed_ || write_shut_) return;
  shutdown_pending_ = true;
  if (!connecting_ && buffered() == 0 && fd_) {
    shutdown(fd_.get(), SHUT_WR);
    write_shut_ = true;
  }
}

void SocketStream::Close(bool abort) {
  if (closed_) return;
  closed_ = true;
  if (watched_) loop_->Unwatch(fd_.get());
  watched_ = false;
  if (fd_) {
    if (abort) {
      CloseWithReset(fd_);
    } else {
      fd_.Reset();
    }
  }
}

}  // namespace ambit::waypoint
