#pragma once

// The waypoint's ends as HBONE streams: a CONNECT a node tunnel opened to the waypoint's pod
// (downstream, server side) and the CONNECT the waypoint opens to the destination's tunnel
// (upstream, client side), each seen by the HTTP engine as a waypoint::ByteStream.
//
// The stream's state lives in a `Core` (the hbone::StreamObserver the session calls), kept alive
// by the session's stream rather than by the ByteStream: an owner that Close()s the stream without
// a reset leaves its END_STREAM (and the bytes before it) to finish after the ByteStream is gone,
// reading and dropping whatever the peer still sends, until the stream ends or kLingerLimit.
//
// Flow control: bytes from the peer are returned to the stream window (Consume) as they are handed
// to the owner; while the owner has reading off, they wait unconsumed, so the peer is held back by
// HTTP/2 flow control (one stream window at most). Write always takes everything; `buffered()` is
// what the session's stream buffer has not taken yet, and OnWritable follows once it falls to a
// quarter of kHighWater after having been above it.
//
// Thread-safety: the session's loop thread only.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/common/event_loop.h"
#include "agent/hbone/session.h"
#include "agent/waypoint/byte_stream.h"

namespace ambit::waypointd {

class HboneStream final : public waypoint::ByteStream {
 public:
  // Server side: `id` is a CONNECT of `session` already answered 2xx. Give the session
  // stream_observer() as the stream's observer.
  static std::unique_ptr<HboneStream> Accepted(EventLoop* loop,
                                               std::shared_ptr<hbone::HboneSession> session,
                                               hbone::StreamId id, std::string peer);
  // Where a refused CONNECT is opened again (a session that can take one more stream).
  using SessionSource = std::function<absl::StatusOr<std::shared_ptr<hbone::HboneSession>>()>;
  // Client side: opens a CONNECT to `authority` on `session`; `observer` gets OnConnected on a
  // 2xx answer and OnError otherwise (also when the CONNECT cannot be sent: from the loop). A
  // CONNECT the peer refuses unprocessed before answering (hbone::RetryRefusedConnect) is opened
  // once more on a session from `reopen`, when given, unseen by the observer.
  static std::unique_ptr<HboneStream> Open(EventLoop* loop,
                                           std::shared_ptr<hbone::HboneSession> session,
                                           absl::string_view authority,
                                           const hbone::ConnectHeaders& headers, Observer* observer,
                                           std::string peer, SessionSource reopen = {});
  ~HboneStream() override;

  hbone::StreamObserver* stream_observer();
  // Byte counts that stay readable after the stream is gone (for the flow's accounting).
  struct Counts {
    uint64_t in = 0;   // from the peer, handed to the owner
    uint64_t out = 0;  // taken by Write
  };
  std::shared_ptr<const Counts> counts() const;
  // Ends the stream with a reset and reports OnError(status) to the owner (from the loop): how a
  // flow reset from outside (policy change, pod removed) reaches the HTTP engine. The handle does
  // nothing once the stream is gone or its owner closed it.
  std::function<void(const absl::Status&)> FailHandle();

  // waypoint::ByteStream
  void SetObserver(Observer* observer) override;
  void Write(absl::string_view data) override;
  size_t buffered() const override;
  void SetReadEnabled(bool enabled) override;
  void ShutdownWrite() override;
  void Close(bool abort) override;
  std::string Describe() const override { return peer_; }

  struct Core;

 private:
  HboneStream(std::shared_ptr<Core> core, std::string peer)
      : core_(std::move(core)), peer_(std::move(peer)) {}
  std::shared_ptr<Core> core_;
  std::string peer_;
};

// A stream's core outlives a non-aborted Close for at most this long.
inline constexpr absl::Duration kLingerLimit = absl::Seconds(30);

}  // namespace ambit::waypointd
