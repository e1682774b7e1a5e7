#include "agent/tunnel/tunnel_stream.h"

#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "agent/bpf/dataplane_maps.h"
#include "agent/common/log.h"
#include "agent/common/socket_util.h"

namespace ambit::tunnel {
namespace {

constexpr const char* kComponent = "tunnel";
constexpr size_t kReadChunk = 64 * 1024;

}  // namespace

TunnelStream::TunnelStream(Worker& worker, std::string description, UniqueFd socket)
    : Flow(std::move(description)), worker_(worker), socket_(std::move(socket)) {}

TunnelStream::~TunnelStream() {
  ForgetDelivery();
  if (watching_ && socket_) worker_.Unwatch(socket_.get());
  if (session_ && !stream_over_ && id_ >= 0) session_->Reset(id_, hbone::kCancel);
}

absl::Status TunnelStream::Open(std::shared_ptr<hbone::HboneSession> session,
                                absl::string_view authority, const hbone::ConnectHeaders& headers,
                                SessionSource reopen) {
  session_ = std::move(session);
  auto id = session_->Connect(authority, headers, this);
  if (!id.ok()) return id.status();
  id_ = *id;
  authority_ = std::string(authority);
  headers_ = headers;
  reopen_ = std::move(reopen);
  return absl::OkStatus();
}

bool TunnelStream::Reopen(uint32_t error_code) {
  // Safe to send again as it is: the socket is read only once the 200 came (StartRelay), so the
  // refused stream carried no byte of the client's, and the peer processed nothing of it.
  auto session = reopen_();
  if (!session.ok()) {
    AMBIT_LOG(kComponent, Warning) << description() << ": CONNECT refused (code " << error_code
                                   << "), no session to retry on: " << session.status().message();
    return false;
  }
  // The refused stream's session may be ending inside this very callback: let go of it only
  // after this batch of events.
  worker_.loop().Defer([old = std::move(session_)] {});
  session_ = *std::move(session);
  auto id = session_->Connect(authority_, headers_, this);
  if (!id.ok()) {
    AMBIT_LOG(kComponent, Warning) << description() << ": CONNECT refused (code " << error_code
                                   << "), retry failed: " << id.status().message();
    return false;
  }
  id_ = *id;
  stream_over_ = false;
  AMBIT_LOG(kComponent, Info) << description() << ": CONNECT refused unprocessed (code "
                              << error_code << "); opened again on another HBONE connection";
  return true;
}

void TunnelStream::Accept(std::shared_ptr<hbone::HboneSession> session, hbone::StreamId id,
                          std::optional<std::pair<SocketAddress, SocketAddress>> delivery_entry) {
  session_ = std::move(session);
  id_ = id;
  delivery_ = std::move(delivery_entry);
  connecting_ = true;
  auto status = worker_.Watch(socket_.get(), EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, this);
  if (!status.ok()) {
    (void)session_->Respond(id_, 503);
    stream_over_ = true;
    Done();
    return;
  }
  watching_ = true;
}

void TunnelStream::StartRelay() {
  relaying_ = true;
  if (!watching_) {
    auto status = worker_.Watch(socket_.get(), EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, this);
    if (!status.ok()) {
      Fail(std::string(status.message()), true);
      return;
    }
    watching_ = true;
  }
  PumpToSocket();
  PumpToPeer();
}

void TunnelStream::OnResponse(int status) {
  got_response_ = true;
  if (done_) return;
  if (status / 100 == 2) {
    AMBIT_LOG(kComponent, Debug) << description() << " tunnel up";
    StartRelay();
    return;
  }
  // The session ends the stream after a non-2xx answer; no further callback comes.
  stream_over_ = true;
  AMBIT_LOG(kComponent, Warning) << description() << ": peer answered " << status
                                 << (status == 401 ? " (denied by policy)" : "")
                                 << "; connection reset";
  if (status == 401) {
    SetEnd("DENY", "the destination's policy denied the connection (HBONE 401)", true);
  } else {
    SetEnd("CONNECT", absl::StrCat("the destination answered ", status));
  }
  Fail(absl::StrCat("peer answered ", status), false);
}

void TunnelStream::OnData(const uint8_t* data, size_t len) {
  if (done_) return;
  received_ += len;
  if (relaying_ && to_socket_off_ == to_socket_.size()) {
    // Nothing queued: hand the bytes straight to the socket and keep only what it refuses.
    ssize_t n = send(socket_.get(), data, len, MSG_NOSIGNAL);
    if (n > 0) {
      if (!stream_over_) session_->Consume(id_, n);
      data += n;
      len -= n;
    } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
      Fail(absl::StrCat("socket error: ", strerror(errno)), true);
      return;
    }
  }
  if (len > 0) to_socket_.append(reinterpret_cast<const char*>(data), len);
  if (relaying_) PumpToSocket();
}

void TunnelStream::OnWritable() {
  blocked_ = false;
  if (relaying_ && !done_) PumpToPeer();
}

void TunnelStream::OnEndStream() {
  peer_end_ = true;
  if (relaying_ && !done_) PumpToSocket();
}

void TunnelStream::OnClosed() {
  stream_over_ = true;
  peer_end_ = true;
  if (!done_) MaybeFinish();
}

void TunnelStream::OnReset(uint32_t error_code) {
  stream_over_ = true;
  if (done_) return;
  if (reopen_ && hbone::RetryRefusedConnect(error_code, got_response_, retried_)) {
    retried_ = true;
    worker_.counters().connect_retries++;
    if (Reopen(error_code)) return;
  }
  if (connecting_) {
    connecting_ = false;
  }
  AMBIT_LOG(kComponent, Debug) << description() << ": stream reset by peer (code " << error_code
                               << ")";
  Fail(absl::StrCat("stream reset, code ", error_code), false);
}

void TunnelStream::OnEvents(uint32_t events) {
  if (done_) return;
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) drained_ = false;
  if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) closing_ = true;
  if (connecting_) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(socket_.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err == 0 && !(events & EPOLLOUT)) return;
    ForgetDelivery();  // the SYN is past sk_lookup either way
    connecting_ = false;
    if (err != 0) {
      AMBIT_LOG(kComponent, Warning)
          << description() << ": application connect failed: " << strerror(err) << "; answered 503";
      SetEnd("CONNECT", absl::StrCat("application connect failed: ", strerror(err)));
      if (!stream_over_) {
        (void)session_->Respond(id_, 503,
                                absl::StrCat("application connect failed: ", strerror(err)));
      }
      stream_over_ = true;
      Done();
      return;
    }
    if (stream_over_) {  // the client gave up meanwhile
      Fail("client went away", false);
      return;
    }
    (void)session_->Respond(id_, 200);
    StartRelay();
    return;
  }
  if (!relaying_) return;
  PumpToSocket();
  PumpToPeer();
}

void TunnelStream::PumpToPeer() {
  char buf[kReadChunk];
  while (!done_ && !blocked_ && !sent_end_) {
    // What goes to the stream next: what it refused last time, else a fresh read (straight from
    // the read buffer: only what the stream cannot take now is kept, in to_peer_).
    absl::string_view chunk = to_peer_;
    if (chunk.empty() && !socket_eof_) {
      // A short read emptied the socket; with edge-triggered epoll, new bytes bring a new event.
      // (Not once the peer closed: its FIN may sit behind the bytes without an edge of its own.)
      if (drained_) break;
      ssize_t n = read(socket_.get(), buf, sizeof buf);
      if (n > 0) {
        if (static_cast<size_t>(n) < sizeof buf && !closing_) drained_ = true;
        chunk = absl::string_view(buf, n);
      } else if (n == 0) {
        socket_eof_ = true;
      } else if (errno == EAGAIN || errno == EINTR) {
        break;
      } else {
        Fail(absl::StrCat("socket error: ", strerror(errno)), true);
        return;
      }
    }
    if (!chunk.empty()) {
      if (stream_over_) {
        Fail("stream already over", false);
        return;
      }
      size_t taken = session_->Write(id_, chunk);
      sent_ += taken;
      if (taken < chunk.size()) {
        to_peer_ = std::string(chunk.substr(taken));
        blocked_ = true;  // OnWritable resumes
        return;
      }
      std::string().swap(to_peer_);  // an idle stream holds no buffer
      continue;
    }
    if (socket_eof_) {
      if (!stream_over_) session_->CloseWrite(id_);  // the FIN, as END_STREAM
      sent_end_ = true;
    }
  }
  MaybeFinish();
}

void TunnelStream::PumpToSocket() {
  while (!done_ && to_socket_off_ < to_socket_.size()) {
    ssize_t n = send(socket_.get(), to_socket_.data() + to_socket_off_,
                     to_socket_.size() - to_socket_off_, MSG_NOSIGNAL);
    if (n > 0) {
      to_socket_off_ += n;
      // Only bytes the socket took reopen the stream window: a slow reader holds back its own
      // stream, never the connection.
      if (!stream_over_) session_->Consume(id_, n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      break;
    } else {
      Fail(absl::StrCat("socket error: ", strerror(errno)), true);
      return;
    }
  }
  if (to_socket_off_ == to_socket_.size()) {
    to_socket_.clear();
    to_socket_.shrink_to_fit();  // an idle stream holds no buffer
    to_socket_off_ = 0;
    if (peer_end_ && !socket_shut_) {
      shutdown(socket_.get(), SHUT_WR);  // the peer's END_STREAM, as a FIN
      socket_shut_ = true;
    }
  }
  MaybeFinish();
}

void TunnelStream::MaybeFinish() {
  if (done_ || !stream_over_ || !sent_end_ || !socket_shut_) return;
  AMBIT_LOG(kComponent, Debug) << description() << " closed sent=" << sent_
                               << " received=" << received_;
  Done();
}

void TunnelStream::Fail(const std::string& reason, bool reset_stream) {
  if (done_) return;
  AMBIT_LOG(kComponent, Debug) << description() << " reset: " << reason;
  SetEnd("-", reason);
  if (reset_stream && session_ && !stream_over_ && id_ >= 0) {
    session_->Reset(id_, hbone::kConnectError);
  }
  stream_over_ = true;
  if (watching_) worker_.Unwatch(socket_.get());
  watching_ = false;
  CloseWithReset(socket_);
  Done();
}

void TunnelStream::Done() {
  if (done_) return;
  done_ = true;
  stream_over_ = true;
  ForgetDelivery();
  if (watching_ && socket_) worker_.Unwatch(socket_.get());
  watching_ = false;
  socket_.Reset();
  worker_.Retire(this);
}

void TunnelStream::ForgetDelivery() {
  if (!delivery_) return;
  bpf::ForgetDelivery(worker_.settings().deliver_map, delivery_->first, delivery_->second);
  delivery_.reset();
}

}  // namespace ambit::tunnel
