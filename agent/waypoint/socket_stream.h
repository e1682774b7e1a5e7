#pragma once

// ByteStream over a non-blocking TCP socket on an EventLoop, and the UpstreamConnector that
// dials a fixed address with it.
//
// Thread-safety: single-threaded (the loop's thread).

#include <memory>
#include <string>

#include "agent/common/event_loop.h"
#include "agent/common/ip_address.h"
#include "agent/common/unique_fd.h"
#include "agent/waypoint/byte_stream.h"

namespace ambit::waypoint {

class SocketStream final : public ByteStream, public EventHandler {
 public:
  // An accepted (connected) socket.
  static std::unique_ptr<SocketStream> Adopt(EventLoop* loop, UniqueFd fd, std::string peer);
  // A connect in progress; OnConnected or OnError follows.
  static std::unique_ptr<SocketStream> Dial(EventLoop* loop, const SocketAddress& to,
                                            Observer* observer);
  // A socket the caller made and started connecting (non-blocking; made elsewhere, e.g. inside
  // a pod's network namespace); OnConnected or OnError follows, also when it is connected already.
  static std::unique_ptr<SocketStream> Connecting(EventLoop* loop, UniqueFd fd, std::string peer,
                                                  Observer* observer);
  ~SocketStream() override;

  void SetObserver(Observer* observer) override;
  void Write(absl::string_view data) override;
  size_t buffered() const override { return out_.size() - out_pos_; }
  void SetReadEnabled(bool enabled) override;
  void ShutdownWrite() override;
  void Close(bool abort = false) override;
  std::string Describe() const override { return peer_; }

  void OnEvents(uint32_t events) override;

 private:
  SocketStream(EventLoop* loop, UniqueFd fd, std::string peer, bool connecting)
      : loop_(loop), fd_(std::move(fd)), peer_(std::move(peer)), connecting_(connecting) {}
  void UpdateInterest();
  void Fail(absl::Status status);
  void FlushOut();
  void ReadIn();

  EventLoop* loop_;
  UniqueFd fd_;
  std::string peer_;
  Observer* observer_ = nullptr;
  bool connecting_;
  bool watched_ = false;
  bool read_enabled_ = true;
  bool read_eof_ = false;
  bool shutdown_pending_ = false;
  bool write_shut_ = false;
  bool closed_ = false;
  bool above_high_ = false;
  std::string out_;
  size_t out_pos_ = 0;
  uint32_t interest_ = 0;
  absl::Status pending_error_;  // a connect that failed at once, reported from the loop
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

class TcpConnector final : public UpstreamConnector {
 public:
  TcpConnector(EventLoop* loop, SocketAddress to) : loop_(loop), to_(to) {}
  std::unique_ptr<ByteStream> Connect(ByteStream::Observer* observer) override {
    return SocketStream::Dial(loop_, to_, observer);
  }
  std::string Describe() const override { return to_.ToString(); }

 private:
  EventLoop* loop_;
  SocketAddress to_;
};

}  // namespace ambit::waypoint
