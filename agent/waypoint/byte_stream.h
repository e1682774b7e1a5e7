#pragma once

// The waypoint's two ends as byte streams: the downstream (today a TCP socket; next an HBONE
// CONNECT stream from a node tunnel, terminated by the waypoint) and the upstream (today a TCP
// connect; next a CONNECT stream to the destination's tunnel with the waypoint's SVID). The HTTP
// engine only sees this interface, so HBONE plugs in as one more implementation, the way
// agent/tunnel bridges HBONE streams and sockets (hbone::StreamObserver has the same events).
//
// Flow control is the caller's: Write always accepts, `buffered()` says how much is waiting, and
// OnWritable fires once the buffer falls below the low-water mark; a caller stops reading its
// source while the sink holds more than `kHighWater`, which keeps every buffer bounded.
//
// Thread-safety: a stream belongs to its event loop's thread. Callbacks never destroy the stream
// they come from: owners retire streams with Close() and free them from a deferred task.

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "agent/common/ip_address.h"

namespace ambit::waypoint {

// Stop reading a source while its sink holds more than this; OnWritable at a quarter of it.
inline constexpr size_t kHighWater = 256 << 10;

class ByteStream {
 public:
  class Observer {
   public:
    virtual ~Observer() = default;
    // The stream is open (upstreams: the connect succeeded).
    virtual void OnConnected() {}
    virtual void OnData(absl::string_view data) = 0;
    // The buffer fell below the low-water mark after being above kHighWater.
    virtual void OnWritable() {}
    // The peer will send nothing more (FIN / END_STREAM).
    virtual void OnEnd() = 0;
    // Connect failure, reset or I/O error; the stream is dead. No more callbacks follow.
    virtual void OnError(const absl::Status& status) = 0;
  };

  virtual ~ByteStream() = default;
  virtual void SetObserver(Observer* observer) = 0;
  virtual void Write(absl::string_view data) = 0;
  virtual size_t buffered() const = 0;
  virtual void SetReadEnabled(bool enabled) = 0;
  // Ends our direction once everything buffered is sent.
  virtual void ShutdownWrite() = 0;
  // Stops everything now (a reset when `abort`); no callbacks after it.
  virtual void Close(bool abort = false) = 0;
  // For logs: the peer address.
  virtual std::string Describe() const = 0;
};

// Where a forwarded request goes. Today: a TCP address; with HBONE, the destination's tunnel.
class UpstreamConnector {
 public:
  virtual ~UpstreamConnector() = default;
  // Starts a connection; `observer` gets OnConnected or OnError. Never null.
  virtual std::unique_ptr<ByteStream> Connect(ByteStream::Observer* observer) = 0;
  virtual std::string Describe() const = 0;
};

}  // namespace ambit::waypoint
