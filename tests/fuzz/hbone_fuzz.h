#pragma once

// What the two HBONE targets share: an EventLoop that runs deferred work inline, a transport that
// serves the fuzz input as the peer's plaintext (the TLS layer is not what these targets test;
// HboneSession::CreateWithTransport runs the same HTTP/2 code above it), and the input layout.
//
// Input: 4 header bytes, then the peer's HTTP/2 bytes.
//   [0] flags: bit 0 the peer closes after the last byte (else the session is dropped open);
//       bit 1 the owner drops its reference inside OnSessionClosed; bit 2 Shutdown() after the
//       first chunk.
//   [1] chunking: how the bytes arrive (all at once, 1 byte, 7, 64, 1000 per read event).
//   [2..3] seed of the owner's choices (respond, write, consume, reset, close: see the targets).

#include <openssl/ssl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <string>

#include "agent/common/event_loop.h"
#include "agent/common/unique_fd.h"
#include "agent/hbone/session.h"
#include "tests/fuzz/fuzz_util.h"

namespace ambit::fuzz {

// Deferred functions run when the harness drains them; timers never fire (the only one a session
// sets is the handshake timeout, and the handshake is instant here).
class InlineLoop final : public EventLoop {
 public:
  absl::Status Watch(int, uint32_t, EventHandler*) override { return absl::OkStatus(); }
  absl::Status Modify(int, uint32_t, EventHandler*) override { return absl::OkStatus(); }
  void Unwatch(int) override {}
  void Defer(std::function<void()> fn) override { deferred_.push_back(std::move(fn)); }
  void RunAfter(absl::Duration, std::function<void()>) override {}

  // Bounded: a session that keeps deferring forever is a bug the fuzzer should see as a hang,
  // not a harness that spins.
  void Drain() {
    for (int i = 0; i < 10000 && !deferred_.empty(); ++i) {
      std::function<void()> fn = std::move(deferred_.front());
      deferred_.pop_front();
      fn();
    }
  }
  void Clear() { deferred_.clear(); }

 private:
  std::deque<std::function<void()>> deferred_;
};

// The peer's plaintext, one chunk per read event; what the session writes is counted and dropped.
class InputTransport final : public hbone::SessionTransport {
 public:
  InputTransport(absl::string_view bytes, size_t chunk, std::string peer)
      : bytes_(bytes), chunk_(chunk), peer_(std::move(peer)) {}

  // Makes the next chunk readable; false when the input is used up.
  bool NextChunk() {
    if (pos_ >= bytes_.size()) return false;
    limit_ = std::min(bytes_.size(), pos_ + chunk_);
    return true;
  }
  void SetEof() { eof_ = true; }
  size_t written() const { return written_; }

  int Handshake() override { return 1; }
  int Read(uint8_t* buf, int len) override {
    if (pos_ < limit_) {
      size_t n = std::min(static_cast<size_t>(len), limit_ - pos_);
      std::memcpy(buf, bytes_.data() + pos_, n);
      pos_ += n;
      return static_cast<int>(n);
    }
    last_error_ = eof_ && pos_ >= bytes_.size() ? SSL_ERROR_ZERO_RETURN : SSL_ERROR_WANT_READ;
    return eof_ ? 0 : -1;
  }
  int Write(const uint8_t*, int len) override {
    written_ += static_cast<size_t>(len);
    return len;
  }
  int Error(int) override { return last_error_; }
  void Shutdown() override {}
  absl::string_view Alpn() override { return "h2"; }
  absl::StatusOr<std::string> PeerIdentity() override { return peer_; }

 private:
  absl::string_view bytes_;
  size_t chunk_;
  std::string peer_;
  size_t pos_ = 0;
  size_t limit_ = 0;
  bool eof_ = false;
  int last_error_ = SSL_ERROR_WANT_READ;
  size_t written_ = 0;
};

// The owner's choices, reproducible from the seed in the input.
class Choices {
 public:
  explicit Choices(uint16_t seed) : state_(0x9e3779b9u ^ seed) {}
  uint32_t Next(uint32_t n) {
    state_ ^= state_ << 13;
    state_ ^= state_ >> 17;
    state_ ^= state_ << 5;
    return state_ % n;
  }

 private:
  uint32_t state_;
};

struct Header {
  bool eof = false;
  bool drop_in_close = false;
  bool shutdown_early = false;
  size_t chunk = 0;
  uint16_t seed = 0;
};

inline Header ReadHeader(Input& in) {
  Header h;
  uint8_t flags = in.Byte();
  h.eof = flags & 1;
  h.drop_in_close = flags & 2;
  h.shutdown_early = flags & 4;
  static constexpr size_t kChunks[] = {size_t{1} << 30, 1, 7, 64, 1000};
  h.chunk = kChunks[in.Byte() % (sizeof kChunks / sizeof kChunks[0])];
  h.seed = in.U16();
  return h;
}

// A descriptor for the session to own and the loop to "watch".
inline UniqueFd DummyFd() { return UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)); }

// Feeds every chunk through the session's read path, running deferred work between events and
// calling `between` after each; then ends the input (EOF or not) and drops the session.
inline void Drive(InlineLoop& loop, InputTransport* transport,
                  std::shared_ptr<hbone::HboneSession>& session, const Header& h,
                  const std::function<void()>& between) {
  session->OnEvents(EPOLLOUT);  // the handshake (instant) and the first flight
  loop.Drain();
  bool first = true;
  while (session != nullptr && !session->closed() && transport->NextChunk()) {
    session->OnEvents(EPOLLIN);
    loop.Drain();
    if (session == nullptr || session->closed()) break;
    if (first && h.shutdown_early) session->Shutdown();
    first = false;
    between();
    loop.Drain();
  }
  if (h.eof && session != nullptr && !session->closed()) {
    transport->SetEof();
    session->OnEvents(EPOLLIN);
    loop.Drain();
  }
  session.reset();
  loop.Drain();
}

}  // namespace ambit::fuzz
