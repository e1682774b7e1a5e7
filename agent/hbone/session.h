#pragma once

// HBONE sessions (docs/ARCHITECTURE.md#hbone): one TCP connection, one TLS 1.3 connection (see
// tls_context.h) and one HTTP/2 session (nghttp2), carrying any number of CONNECT tunnels as
// HTTP/2 streams. Plain RFC 9113 section 8.5 CONNECT as ztunnel speaks it (":method CONNECT" and
// ":authority" = "ip:port", no ":scheme"/":path"; not RFC 8441), with the headers "forwarded",
// "baggage" and "traceparent".
//
// Driving it (the tunnel):
//   outbound: socket(), set marks, non-blocking connect() to <pod ip>:15008, then
//     HboneSession::CreateClient(loop, fd, client_ctx, expected_server_identity, delegate, opts);
//     Connect("<ip>:<port>", headers, observer) at once (queued until the handshake is done);
//     observer->OnResponse(200) = tunnel up. Pump bytes both ways (below).
//   inbound: accept() on 15008, pick the server context of the pod owning getsockname(),
//     CreateServer(...); delegate->OnConnect(stream, request) returns the stream's observer; check
//     policy, connect to the app, then Respond(stream, 200) (or 401 / 503 / 400).
//   bytes app -> peer: Write(stream, ...) takes what fits in the stream's send buffer; on a short
//     write stop reading the app socket until observer->OnWritable(). App EOF -> CloseWrite.
//   bytes peer -> app: observer->OnData(data, n); write them to the app socket (keep what does not
//     fit), and Consume(stream, k) as k bytes leave for the app: that opens the HTTP/2 stream
//     window again. Peer EOF: observer->OnEndStream() -> shutdown(SHUT_WR) on the app socket.
//   ends: observer->OnClosed() (both directions finished) or OnReset(code) (peer reset, protocol
//     error, session died: reset the app socket too). Reset(stream, code) when the app resets.
//
// Flow control: every received DATA byte is returned to the connection window at once and to its
// stream window only on Consume, so a reader that never consumes holds at most one stream window
// (4 MiB) and never stalls the other streams of the connection. The price: up to one stream window
// per stream is buffered by observers.
//
// Limits and misbehaviour (counted in HboneStats):
//   - the server advertises SETTINGS_MAX_CONCURRENT_STREAMS (100). Streams opened beyond it before
//     the client acknowledged our SETTINGS are refused with RST_STREAM(REFUSED_STREAM); after the
//     acknowledgement nghttp2 1.52 treats a further excess as a connection error (GOAWAY
//     PROTOCOL_ERROR) - a client that has seen the limit and ignores it is not a client to keep.
//   - a received header list over max_header_list_bytes (64 KiB, counted as RFC 9113 does: name +
//     value + 32 per field) fails only that stream: a request gets 431 and RST_STREAM(NO_ERROR),
//     a response RST_STREAM(PROTOCOL_ERROR). A single field over 64 KiB is beyond nghttp2's HPACK
//     decoder limit and ends the whole session with GOAWAY(COMPRESSION_ERROR).
//   - floods (SETTINGS/PING acks piling up, > 32 SETTINGS entries, rapid RST_STREAM, > 8
//     CONTINUATION frames) end the session (nghttp2's protections, configured here).
//   - server: CONNECTs that do not end in a 2xx are rate-limited per connection before the
//     delegate sees them (SessionOptions::stream_open_burst / stream_open_rate); beyond the limit
//     the session ends with GOAWAY(ENHANCE_YOUR_CALM). nghttp2's own RST_STREAM limit alone
//     would let a rapid-reset client cost about 1 000 upstream connects per TLS connection.
//   - TLS and identity failures end the session; see tls_context.h.
//
// Thread-safety: a session, its delegate and its observers live on the loop's thread; every call
// below is made there. Callbacks may call any method of the session (including Connect, Write and
// Reset on other streams). Dropping the last shared_ptr to the session inside one of its
// callbacks is safe: a running session holds a reference to itself until the callback chain
// returns. The delegate must outlive the session; an observer, its stream (see StreamObserver).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/common/event_loop.h"
#include "agent/common/ip_address.h"
#include "agent/common/unique_fd.h"
#include "agent/hbone/tls_context.h"

struct nghttp2_session;

namespace ambit::hbone {

using StreamId = int32_t;

// HTTP/2 error codes (RFC 9113 section 7) this API uses.
inline constexpr uint32_t kNoError = 0x0;
inline constexpr uint32_t kProtocolError = 0x1;
inline constexpr uint32_t kInternalError = 0x2;
inline constexpr uint32_t kRefusedStream = 0x7;
inline constexpr uint32_t kCancel = 0x8;
inline constexpr uint32_t kConnectError = 0xa;  // the tunnelled TCP connection failed
inline constexpr uint32_t kEnhanceYourCalm = 0xb;

// Whether a client CONNECT that ended with `error_code` is opened again on a fresh session.
// REFUSED_STREAM (RST_STREAM from the peer, or a stream above the last-stream-id of the peer's
// GOAWAY, which nghttp2 reports with that code) means the peer never processed the stream
// (RFC 9113 section 8.7), e.g. a data plane draining for its successor. Only before any response
// (a stream that got one was processed) and only once (a peer that keeps refusing is answered
// with the error). Pure, for the unit test.
inline bool RetryRefusedConnect(uint32_t error_code, bool got_response, bool retried) {
  return error_code == kRefusedStream && !got_response && !retried;
}

// Misbehaviour and activity counters. May be shared by all sessions of one loop (one worker):
// pass the same object in SessionOptions::stats. Loop thread only.
struct HboneStats {
  uint64_t sessions_established = 0;
  uint64_t tls_failures = 0;         // handshake or record errors not listed below, timeouts
  uint64_t no_client_cert = 0;       // server: client sent no certificate
  uint64_t untrusted_peer = 0;       // chain not verified, no valid SVID, other trust domain
  uint64_t identity_mismatch = 0;    // client: server is not who we expected
  uint64_t revoked_peer = 0;         // a certificate of the peer's chain is in a CRL
  uint64_t no_alpn = 0;              // peer without h2
  uint64_t bad_cipher = 0;           // negotiated or offered suites not AES-GCM
  uint64_t protocol_errors = 0;      // sessions ended by an HTTP/2 error of the peer
  uint64_t stream_errors = 0;        // streams reset for an HTTP/2 error of the peer
  uint64_t floods = 0;               // sessions ended for flooding (ENHANCE_YOUR_CALM, ...)
  uint64_t refused_streams = 0;      // server: streams beyond max_concurrent_streams
  uint64_t oversized_headers = 0;    // header lists over max_header_list_bytes
  uint64_t bad_requests = 0;         // server: answered 400 (not CONNECT, bad authority)
  uint64_t streams_opened = 0;       // client: Connect calls; server: CONNECTs handed to OnConnect
  uint64_t stream_rate_limited = 0;  // server: sessions ended for opening streams too fast
};

struct SessionOptions {
  // Server: SETTINGS_MAX_CONCURRENT_STREAMS, enforced.
  uint32_t max_concurrent_streams = 100;
  // Client: the server's stream limit assumed until its SETTINGS arrive.
  uint32_t assumed_peer_max_streams = 100;
  uint32_t stream_window = 4 << 20;          // SETTINGS_INITIAL_WINDOW_SIZE
  uint32_t connection_window = 16 << 20;     // raised with WINDOW_UPDATE on stream 0
  uint32_t max_frame_size = 1 << 20;         // SETTINGS_MAX_FRAME_SIZE: the largest frame we take
  uint32_t max_send_frame_size = 128 << 10;  // largest DATA payload we send (peer's limit too)
  // SETTINGS_MAX_HEADER_LIST_SIZE; larger header lists received are refused, and it bounds the
  // header blocks we send.
  uint32_t max_header_list_bytes = 64 << 10;
  size_t stream_send_buffer = 256 << 10;  // per stream, bytes accepted by Write not yet framed
  // Server: how fast a client may open streams that do not succeed, per connection. Each CONNECT
  // takes a token before the delegate sees it (so before any upstream connect); a 2xx answer gives
  // it back. The bucket holds `stream_open_burst` tokens and refills at `stream_open_rate` per
  // second. A client that runs dry (rapid reset: open, RST_STREAM, open again; or a scan of
  // refused ports) gets GOAWAY(ENHANCE_YOUR_CALM). Streams that succeed cost nothing, so a busy
  // pooled connection of short-lived tunnels is never limited.
  uint32_t stream_open_burst = 200;
  double stream_open_rate = 100;
  absl::Duration handshake_timeout = absl::Seconds(10);
  // Server, Shutdown(): how long the client has to answer the PING sent with the shutdown notice
  // before the final GOAWAY goes out anyway (see Shutdown()).
  absl::Duration drain_notice_timeout = absl::Seconds(2);
  HboneStats* stats = nullptr;  // null: the session counts on its own
  // Refills the stream-open bucket; tests move a fake one by hand. Must outlive the session.
  const Clock* clock = &RealClock::Get();
};

struct ConnectHeaders {
  std::string forwarded;    // e.g. for="198.18.0.1:43210" (omitted when empty)
  std::string baggage;      // source workload attributes
  std::string traceparent;  // W3C trace context
};

// What a server delegate gets for each well-formed CONNECT.
struct ConnectRequest {
  std::string authority;      // as sent, "ip:port"
  SocketAddress destination;  // parsed from it
  ConnectHeaders headers;
  std::string peer_identity;  // the client's verified SPIFFE ID
};

// Events of one stream. Exactly one of OnClosed / OnReset ends the stream, except after the
// owner's Reset() and after a non-2xx response (either side), which end it silently. After the
// end the observer is never called again and may be deleted (also from inside that callback).
class StreamObserver {
 public:
  virtual ~StreamObserver() = default;
  // Client: the response status; 2xx means the tunnel is up. After any other status the stream
  // is over (the session resets it) and no further callback comes.
  virtual void OnResponse(int /*status*/) {}
  // Bytes from the peer. Call Consume(stream, n) as they are delivered onwards.
  virtual void OnData(const uint8_t* data, size_t len) = 0;
  // Write() refused bytes earlier and the stream's send buffer has room again.
  virtual void OnWritable() {}
  // The peer finished sending (half-close); we may still write.
  virtual void OnEndStream() {}
  // Both directions finished cleanly and all our bytes went to TLS.
  virtual void OnClosed() {}
  // Ended abnormally: RST_STREAM from the peer (its code), a stream error we detected, or the
  // session died (kConnectError), or GOAWAY refused it (kRefusedStream: safe to retry).
  virtual void OnReset(uint32_t /*error_code*/) {}
};

class HboneSession;

// The record layer under a session's HTTP/2 frames, in BoringSSL's calling convention (return
// values, SSL_ERROR_* codes from Error()). CreateClient/CreateServer use TLS 1.3 on the socket;
// CreateWithTransport takes another one, so the HTTP/2 half (framing, streams, limits, flow
// control) runs unchanged over bytes that come from elsewhere, e.g. a fuzzer's input.
class SessionTransport {
 public:
  virtual ~SessionTransport() = default;
  // One handshake step: 1 when finished, otherwise see Error() (as SSL_do_handshake).
  virtual int Handshake() = 0;
  // Plaintext from the peer: > 0 bytes read, otherwise see Error() (as SSL_read).
  virtual int Read(uint8_t* buf, int len) = 0;
  // Plaintext to the peer: > 0 bytes taken, otherwise see Error() (as SSL_write).
  virtual int Write(const uint8_t* data, int len) = 0;
  // The SSL_ERROR_* code for `ret`, the result of the last call above (as SSL_get_error).
  virtual int Error(int ret) = 0;
  // Tells the peer nothing more follows (close_notify), best effort.
  virtual void Shutdown() = 0;
  // After the handshake: the negotiated ALPN protocol and the peer's verified SPIFFE ID.
  virtual absl::string_view Alpn() = 0;
  virtual absl::StatusOr<std::string> PeerIdentity() = 0;
  // After the handshake: when the peer's certificate expires (never, if the transport has none).
  virtual absl::Time PeerNotAfter() { return absl::InfiniteFuture(); }
};

class SessionDelegate {
 public:
  virtual ~SessionDelegate() = default;
  // TLS is up and the peer identity verified (peer_identity()).
  virtual void OnEstablished(HboneSession& /*session*/) {}
  // Server: a well-formed CONNECT. Return the stream's observer (it sees data that arrives before
  // Respond; leave it unconsumed to hold the client back) and Respond() now or later. Returning
  // null without having responded answers 503. Malformed requests never get here (400).
  virtual StreamObserver* OnConnect(HboneSession& /*session*/, StreamId /*stream*/,
                                    const ConnectRequest& /*request*/) {
    return nullptr;
  }
  // The last open stream ended (a pool may start its idle timer).
  virtual void OnIdle(HboneSession& /*session*/) {}
  // The session is over: OK after a graceful end (GOAWAY both ways, peer closed an idle
  // connection), an error naming the cause otherwise. Open streams got OnReset before. Called
  // once; no delegate call follows.
  virtual void OnSessionClosed(HboneSession& session, const absl::Status& status) = 0;
};

class HboneSession final : public EventHandler, public std::enable_shared_from_this<HboneSession> {
 public:
  // `fd`: a non-blocking TCP socket, connected or with connect() in progress, to the peer's
  // 15008. `expected_server_identity`: the SPIFFE ID the server must present.
  static absl::StatusOr<std::shared_ptr<HboneSession>> CreateClient(
      EventLoop* loop, UniqueFd fd, std::shared_ptr<const TlsContext> ctx,
      std::string expected_server_identity, SessionDelegate* delegate, SessionOptions options = {});
  // `fd`: a non-blocking accepted TCP socket.
  static absl::StatusOr<std::shared_ptr<HboneSession>> CreateServer(
      EventLoop* loop, UniqueFd fd, std::shared_ptr<const TlsContext> ctx,
      SessionDelegate* delegate, SessionOptions options = {});
  // A session whose bytes go through `transport` instead of TLS. `fd` is only watched for
  // readiness (the transport does the I/O); tls_context() and ssl() are not available.
  static absl::StatusOr<std::shared_ptr<HboneSession>> CreateWithTransport(
      EventLoop* loop, UniqueFd fd, std::unique_ptr<SessionTransport> transport, bool client,
      std::string expected_peer, SessionDelegate* delegate, SessionOptions options = {});

  // Closes the connection at once; no callbacks. Prefer Shutdown() for a graceful end.
  ~HboneSession() override;
  HboneSession(const HboneSession&) = delete;
  HboneSession& operator=(const HboneSession&) = delete;

  // Client: opens a CONNECT stream to `authority` ("ip:port"). Allowed before the handshake
  // finishes (queued). Beyond the peer's stream limit nghttp2 queues it until a stream ends; check
  // can_open_stream() to open another session instead.
  absl::StatusOr<StreamId> Connect(absl::string_view authority, const ConnectHeaders& headers,
                                   StreamObserver* observer);
  // Server: the final status of a CONNECT. 2xx opens the tunnel; anything else ends the stream
  // (no more callbacks). A non-empty `reason` on a non-2xx answer goes to the client in the
  // response header "ambit-error" (one line of text: what refused it, and why).
  absl::Status Respond(StreamId stream, int status, absl::string_view reason = {});

  // Queues up to the free space of the stream's send buffer; returns how much it took (0 for an
  // unknown, reset or write-closed stream). A short count promises one OnWritable() later.
  size_t Write(StreamId stream, const uint8_t* data, size_t len);
  size_t Write(StreamId stream, absl::string_view data) {
    return Write(stream, reinterpret_cast<const uint8_t*>(data.data()), data.size());
  }
  // Half-close: END_STREAM after the buffered bytes.
  void CloseWrite(StreamId stream);
  // RST_STREAM with `error_code`; the observer is not called again.
  void Reset(StreamId stream, uint32_t error_code = kCancel);
  // `n` bytes from OnData were delivered: reopen the stream's flow-control window by that much.
  void Consume(StreamId stream, size_t n);
  // How a server stops taking streams (a client always sends one GOAWAY).
  enum class GoAway {
    // Two steps (RFC 9113 section 6.8): a shutdown notice (GOAWAY with the largest stream id)
    // and a PING, then, once the PING's ack shows the client has seen the notice (or after
    // drain_notice_timeout), the final GOAWAY naming the last stream accepted. A CONNECT that
    // crossed the notice on the wire is still served. For a session that may still serve
    // (a data plane handing over to its successor, an idle session).
    kAfterNotice,
    // One GOAWAY naming the last stream processed: every later stream is refused at once. For a
    // session that must take nothing more (its peer's or its own credentials are no longer
    // good, its pod is gone).
    kNow,
  };
  // GOAWAY(NO_ERROR): no new streams; the session closes (OnSessionClosed(OK)) once the open
  // streams end. A CONNECT the server did not accept is refused with
  // RST_STREAM(REFUSED_STREAM) and never reaches the delegate (safe to retry). Before the
  // handshake is done, kNow closes the session at once; kAfterNotice lets it finish (a client's
  // CONNECTs already queued on it are sent) and goes away as above once it is open.
  void Shutdown(GoAway mode = GoAway::kAfterNotice);
  // Closes the connection at once: open streams get OnReset(kConnectError) (their connections
  // are reset), then the delegate OnSessionClosed(`why`). For a peer that must not be served a
  // moment longer (its certificate was revoked since the handshake). No-op once closed.
  void Abort(absl::Status why);
  // Shutdown() was called: this side ends the session.
  bool shutting_down() const { return shutdown_; }
  // The peer sent GOAWAY: it takes no new streams from us.
  bool goaway_received() const { return goaway_received_; }

  bool is_client() const { return client_; }
  bool established() const { return state_ == State::kOpen; }
  bool closed() const { return state_ == State::kClosed; }
  // The peer's verified SPIFFE ID ("" until established()).
  const std::string& peer_identity() const { return peer_identity_; }
  // When the peer's certificate expires (absl::InfiniteFuture() until established()).
  absl::Time peer_not_after() const { return peer_not_after_; }
  const TlsContext& tls_context() const { return *ctx_; }
  // For logging the negotiated version / suite / ALPN; do not do I/O on it.
  const SSL* ssl() const { return ssl_.get(); }
  // Streams not yet ended (including queued ones on a client).
  size_t active_streams() const { return streams_.size(); }
  // Client: another Connect would start at once: not closing, no GOAWAY either way, under the
  // server's stream limit.
  bool can_open_stream() const;
  // Bytes queued by Write on `stream` and not yet framed.
  size_t buffered(StreamId stream) const;
  // Bytes the session's own output buffers (frames, TLS records) hold allocated.
  size_t output_buffer_bytes() const { return out_.capacity() + wire_out_.capacity(); }
  const HboneStats& stats() const { return *stats_; }

  void OnEvents(uint32_t epoll_events) override;

 private:
  enum class State { kConnecting, kHandshaking, kOpen, kClosed };
  struct Stream;
  friend struct Nghttp2Callbacks;
  friend struct WireBio;

  HboneSession(EventLoop* loop, UniqueFd fd, std::shared_ptr<const TlsContext> ctx,
               bssl::UniquePtr<SSL> ssl, std::unique_ptr<SessionTransport> transport, bool client,
               std::string expected_peer, SessionDelegate* delegate, SessionOptions options);
  absl::Status Init(bool connecting);
  static absl::StatusOr<std::shared_ptr<HboneSession>> Create(
      EventLoop* loop, UniqueFd fd, std::shared_ptr<const TlsContext> ctx, bool client,
      std::string expected_peer, SessionDelegate* delegate, SessionOptions options);

  template <typename F>
  void RunIo(F&& f);
  void ScheduleFlush();
  void DoConnectDone();
  void DoHandshake();
  void HandshakeDone();
  void HandshakeFailed(int ssl_error);
  void DoRead();
  void Flush();
  bool SendWire();  // false if a send error closed the session
  // SendWire without closing (for nghttp2 callbacks, which must not see the session closed
  // under them): false if the socket is full or failed; the next Flush reports a failure.
  bool TrySendWire();
  // Hands `n` bytes to TLS from inside a DATA frame's send (nghttp2's callback), sending full
  // wire batches on the way; returns how many TLS took: fewer when the socket is full or failed
  // (the caller queues the rest in out_, which Flush writes and which reports any failure).
  size_t WriteFromCallback(const uint8_t* data, size_t n);
  void ReleaseIdleBuffers(size_t sent);
  void ReleaseOutputBuffers();
  // While output buffers are kept for a streaming session: a timer that releases them after a
  // second without a large flush.
  void WatchHeldBuffers();
  bool NotifyWritable();  // true if any observer was told
  void CheckDone();
  void UpdateInterest();
  void Nghttp2Fatal(int rv, absl::string_view where);
  void Close(absl::Status status);
  std::string PeerName() const;

  Stream* Find(StreamId id) const;
  void Forget(StreamId id);
  void HandleRequest(Stream& s);
  void RefuseLateStreams();
  // Server: the second step of Shutdown(), once.
  void SendFinalGoaway();
  bool TakeStreamToken();  // server: false when the client opened too many failing streams
  void SendFinalResponse(Stream& s, int status, absl::string_view reason = {});
  int AttachBody(Stream& s, int status);  // a 2xx response whose body is the stream

  EventLoop* const loop_;
  UniqueFd fd_;
  const std::shared_ptr<const TlsContext> ctx_;
  bssl::UniquePtr<SSL> ssl_;  // null for a session over another transport
  const std::unique_ptr<SessionTransport> transport_;
  const bool client_;
  const std::string expected_peer_;
  SessionDelegate* const delegate_;
  const SessionOptions options_;
  HboneStats own_stats_;
  HboneStats* const stats_;

  State state_ = State::kHandshaking;
  nghttp2_session* h2_ = nullptr;
  std::string peer_identity_;
  absl::Time peer_not_after_ = absl::InfiniteFuture();
  std::unordered_map<StreamId, std::unique_ptr<Stream>> streams_;
  uint32_t interest_ = 0;
  bool write_blocked_ = false;
  std::string out_;  // framed bytes waiting for SSL_write
  size_t out_off_ = 0;
  std::string wire_out_;  // TLS records waiting for send() (see WireBio)
  size_t wire_off_ = 0;
  std::string wire_in_;  // read ahead of BoringSSL's record-header reads (see WireBio::Read)
  size_t wire_in_off_ = 0;
  bool wire_drained_ = false;     // a short read emptied the socket since the last epoll event
  size_t wire_sent_ = 0;          // bytes sent, ever (for ReleaseIdleBuffers)
  bool buffers_watched_ = false;  // a WatchHeldBuffers timer is pending
  bool large_flush_ = false;      // a flush sent kKeepOutputBuffer or more since that timer began
  bool in_io_ = false;
  bool dirty_ = false;  // something to flush (set while in_io_)
  bool flush_scheduled_ = false;
  bool idle_pending_ = false;
  bool shutdown_ = false;
  // Shutdown(kAfterNotice) came before the handshake finished: it runs once the session is open.
  bool shutdown_when_open_ = false;
  bool fatal_ = false;  // nghttp2 returned a fatal error; GOAWAY is best effort
  bool goaway_sent_ = false;
  // Server, after Shutdown: the last stream our GOAWAY accepted; later ones are refused. Streams
  // nghttp2 ignored after the GOAWAY left wait in late_streams_ for their RST_STREAM, sent once
  // the frames being parsed are done (before that nghttp2 still calls them idle).
  StreamId goaway_last_stream_ = -1;
  bool drain_ping_outstanding_ = false;  // server: the notice's PING awaits its ack
  StreamId last_refused_late_ = 0;
  std::vector<StreamId> late_streams_;
  bool goaway_received_ = false;
  uint32_t goaway_sent_code_ = 0;
  uint32_t goaway_received_code_ = 0;
  std::string last_h2_error_;
  double stream_tokens_ = 0;  // see SessionOptions::stream_open_burst
  absl::Time stream_tokens_at_;
};

}  // namespace ambit::hbone
