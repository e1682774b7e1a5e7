#include "agent/hbone/session.h"

#include <nghttp2/nghttp2.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/common/status.h"
#include "agent/identity/spiffe_id.h"
#include "agent/tls/keys.h"

namespace ambit::hbone {
namespace {

// Two SPIFFE IDs with the same path: one workload in two trust domains of a migration.
bool SameWorkloadPath(absl::string_view a, absl::string_view b) {
  absl::StatusOr<identity::SpiffeId> x = identity::ParseSpiffeId(a);
  absl::StatusOr<identity::SpiffeId> y = identity::ParseSpiffeId(b);
  return x.ok() && y.ok() && !x->path.empty() && x->path == y->path;
}

// Framed bytes gathered before SSL_write: many 16 KiB records per call, bounded memory.
constexpr size_t kOutBatch = 256 << 10;
// Plaintext gathered from several TLS records before nghttp2 parses it: a DATA frame (up to the
// peer's frame size) then reaches the observer in one piece instead of one piece per 16 KiB
// record, so the tunnel writes it to the app with one send() instead of one per record.
constexpr size_t kReadChunk = 128 << 10;
// TLS records gathered by WireBio before it asks to send them.
constexpr size_t kWireBatch = 256 << 10;
// Output buffers grown past this are kept while the session streams bulk: a flush at least this
// large within the last kHeldBuffersCheck (ReleaseIdleBuffers).
constexpr size_t kKeepOutputBuffer = 32 << 10;
constexpr absl::Duration kHeldBuffersCheck = absl::Seconds(1);
// A DATA payload at least this large goes from the stream's ring to TLS directly (after the
// queued frames and enough of it to fill their last TLS record), not through out_: on a bulk
// stream that copy was the largest memmove of the sending side. Smaller ones are copied, so a
// small frame still shares one TLS record with its header and with the frames queued before it.
constexpr size_t kDirectPayload = 16 << 10;
constexpr size_t kTlsRecordPayload = 16 << 10;  // the most plaintext a TLS record carries
// A pop smaller than this leaves a stream that is not streaming bulk: its emptied send ring is
// released rather than kept (idle streams hold no buffer).
constexpr size_t kKeepRingAfterPop = 16 << 10;
constexpr size_t kHeaderFieldOverhead = 32;  // RFC 9113 section 6.5.2
// The payload of the PING a server sends with its shutdown notice (Shutdown()).
constexpr uint8_t kDrainPing[8] = {'a', 'm', 'b', 'i', 't', 'g', 'o', 'a'};

absl::string_view View(const uint8_t* p, size_t n) {
  return absl::string_view(reinterpret_cast<const char*>(p), n);
}

nghttp2_nv Nv(absl::string_view name, absl::string_view value) {
  return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(),
                    value.size(), NGHTTP2_NV_FLAG_NONE};
}

// A stream's bytes between Write() and framing. DATA frames are written straight from here into
// the output buffer (NGHTTP2_DATA_FLAG_NO_COPY), so the only copies on the way out are: the
// caller's bytes into the ring, the ring into the output batch, and BoringSSL's encryption.
// Storage grows on demand up to the caller's limit and never compacts.
class ByteRing {
 public:
  size_t size() const { return size_; }

  // Appends up to `n` bytes without growing past `limit` bytes held; returns how many.
  size_t Append(const uint8_t* data, size_t n, size_t limit) {
    size_t take = std::min(n, limit > size_ ? limit - size_ : 0);
    if (take == 0) return 0;
    if (size_ + take > cap_) Grow(size_ + take, limit);
    size_t tail = (head_ + size_) % cap_;
    size_t first = std::min(take, cap_ - tail);
    std::memcpy(buf_.get() + tail, data, first);
    std::memcpy(buf_.get(), data + first, take - first);
    size_ += take;
    return take;
  }

  // Moves the first `n` (<= size()) bytes to the end of `out`, as part of a pop of `pop` bytes
  // in all (see Drop).
  void PopTo(std::string* out, size_t n, size_t pop) {
    if (n == 0) return;
    size_t first = std::min(n, cap_ - head_);
    out->append(reinterpret_cast<const char*>(buf_.get() + head_), first);
    out->append(reinterpret_cast<const char*>(buf_.get()), n - first);
    Drop(n, pop);
  }
  void PopTo(std::string* out, size_t n) { PopTo(out, n, n); }

  // The first contiguous piece of the first `n` (<= size()) bytes: read it, then Drop() it.
  std::pair<const uint8_t*, size_t> Front(size_t n) const {
    return {buf_.get() + head_, std::min(n, cap_ - head_)};
  }

  // Forgets the first `n` (<= size()) bytes, part of a pop of `pop` bytes in all. Emptied by a
  // small pop, the storage is released: a stream between small messages, or idle, holds none.
  void Drop(size_t n, size_t pop) {
    if (n == 0) return;
    head_ = (head_ + n) % cap_;
    size_ -= n;
    if (size_ == 0) {
      head_ = 0;
      if (pop < kKeepRingAfterPop) Release();
    }
  }

  void Clear() {
    head_ = 0;
    size_ = 0;
    Release();
  }

 private:
  void Grow(size_t need, size_t limit) {
    // A first small write (a request head, an ext_authz check) gets a small ring: glibc serves
    // it from its per-thread cache, where 16 KiB, allocated and released for every message of a
    // request/response stream, went through the arena and consolidated it each time. The next
    // growth goes to 16 KiB at once.
    size_t floor = cap_ == 0 && need <= kSmallRing ? kSmallRing : size_t{16} << 10;
    size_t cap = std::min(limit, std::max({need, cap_ * 2, floor}));
    auto buf = std::make_unique_for_overwrite<uint8_t[]>(cap);
    size_t first = std::min(size_, cap_ - head_);
    if (size_ > 0) {
      std::memcpy(buf.get(), buf_.get() + head_, first);
      std::memcpy(buf.get() + first, buf_.get(), size_ - first);
    }
    buf_ = std::move(buf);
    cap_ = cap;
    head_ = 0;
  }

  void Release() {
    buf_.reset();
    cap_ = 0;
  }

  // At most the largest size glibc's per-thread cache holds (1032 bytes on 64-bit).
  static constexpr size_t kSmallRing = 1024;

  std::unique_ptr<uint8_t[]> buf_;
  size_t cap_ = 0;
  size_t head_ = 0;
  size_t size_ = 0;
};

// The plaintext buffer DoRead fills: one per thread, not one per session. What SSL_read puts
// there is handed to nghttp2, whose callbacks deliver it (observers copy or write what they
// keep) before DoRead returns, so the sessions of a loop can share it instead of each holding
// kReadChunk while idle. A nested use (a callback that makes another session read) gets a
// buffer of its own.
class ReadBufferLease {
 public:
  ReadBufferLease() {
    if (!shared_.busy) {
      shared_.busy = true;
      leased_ = true;
      if (!shared_.buf) shared_.buf = std::make_unique_for_overwrite<uint8_t[]>(kReadChunk);
      data_ = shared_.buf.get();
    } else {
      own_ = std::make_unique_for_overwrite<uint8_t[]>(kReadChunk);
      data_ = own_.get();
    }
  }
  ~ReadBufferLease() {
    if (leased_) shared_.busy = false;
  }
  ReadBufferLease(const ReadBufferLease&) = delete;
  ReadBufferLease& operator=(const ReadBufferLease&) = delete;

  uint8_t* data() const { return data_; }
  static constexpr size_t size() { return kReadChunk; }

 private:
  struct Shared {
    std::unique_ptr<uint8_t[]> buf;
    bool busy = false;
  };
  static thread_local Shared shared_;
  bool leased_ = false;
  std::unique_ptr<uint8_t[]> own_;
  uint8_t* data_ = nullptr;
};
thread_local ReadBufferLease::Shared ReadBufferLease::shared_;

}  // namespace

struct HboneSession::Stream {
  StreamId id = 0;
  StreamObserver* observer = nullptr;
  // Send side.
  ByteRing send;
  bool body_attached = false;  // data provider handed to nghttp2
  bool deferred = false;       // the provider said NGHTTP2_ERR_DEFERRED
  bool write_closed = false;   // CloseWrite called
  bool eof_sent = false;       // END_STREAM framed
  bool want_writable = false;  // owes OnWritable
  // Receive side.
  bool remote_ended = false;
  size_t header_bytes = 0;
  bool oversized = false;
  // Server: the request.
  std::string method, authority, forwarded, baggage, traceparent;
  bool responded = false;
  // Client: the response.
  int status = 0;
  bool response_delivered = false;
  // The owner is done with it (Reset, non-2xx): callbacks stop, data is discarded.
  bool finished = false;
  // Server: took a stream-open token, returned on a 2xx answer.
  bool holds_token = false;

  size_t buffered() const { return send.size(); }
};

// nghttp2's C callbacks, with access to the session's internals.
struct Nghttp2Callbacks {
  static HboneSession* Self(void* user_data) { return static_cast<HboneSession*>(user_data); }

  static int OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
    HboneSession* s = Self(user_data);
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    if (!s->client_ && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
      auto stream = std::make_unique<HboneSession::Stream>();
      stream->id = frame->hd.stream_id;
      s->streams_[stream->id] = std::move(stream);
      return 0;
    }
    if (HboneSession::Stream* st = s->Find(frame->hd.stream_id)) {
      st->header_bytes = 0;
      st->oversized = false;
      if (s->client_) st->status = 0;
    }
    return 0;
  }

  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                      size_t namelen, const uint8_t* value, size_t valuelen, uint8_t,
                      void* user_data) {
    HboneSession* s = Self(user_data);
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    HboneSession::Stream* st = s->Find(frame->hd.stream_id);
    if (st == nullptr || st->oversized) return 0;
    st->header_bytes += namelen + valuelen + kHeaderFieldOverhead;
    if (st->header_bytes > s->options_.max_header_list_bytes) {
      // Keep decoding (HPACK state must stay in sync); refuse at the end of the block.
      st->oversized = true;
      ++s->stats_->oversized_headers;
      return 0;
    }
    absl::string_view n = View(name, namelen);
    absl::string_view v = View(value, valuelen);
    if (s->client_) {
      if (n == ":status") {
        int status = 0;
        st->status = absl::SimpleAtoi(v, &status) ? status : 0;
      }
      return 0;
    }
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;  // trailers: ignored
    if (n == ":method") {
      st->method = std::string(v);
    } else if (n == ":authority") {
      st->authority = std::string(v);
    } else if (n == "forwarded") {
      st->forwarded = std::string(v);
    } else if (n == "baggage") {
      st->baggage = std::string(v);
    } else if (n == "traceparent") {
      st->traceparent = std::string(v);
    }
    return 0;
  }

  // Server, after our GOAWAY: nghttp2 drops the header block of a new stream without a callback,
  // and the client would wait for an answer that never comes. Noted here, refused after parsing.
  static int OnBeginFrame(nghttp2_session*, const nghttp2_frame_hd* hd, void* user_data) {
    HboneSession* s = Self(user_data);
    if (s->client_ || s->goaway_last_stream_ < 0 || hd->type != NGHTTP2_HEADERS) return 0;
    if (hd->stream_id <= s->goaway_last_stream_ || hd->stream_id <= s->last_refused_late_ ||
        (hd->stream_id & 1) == 0 || s->Find(hd->stream_id) != nullptr) {
      return 0;
    }
    if (s->late_streams_.empty() || s->late_streams_.back() < hd->stream_id) {
      s->late_streams_.push_back(hd->stream_id);
    }
    return 0;
  }

  static int OnFrameRecv(nghttp2_session* h2, const nghttp2_frame* frame, void* user_data) {
    HboneSession* s = Self(user_data);
    switch (frame->hd.type) {
      case NGHTTP2_GOAWAY:
        s->goaway_received_ = true;
        s->goaway_received_code_ = frame->goaway.error_code;
        return 0;
      case NGHTTP2_PING:
        // The client answered the PING sent after our shutdown notice: every stream it opened
        // before it saw the notice came before this ack and has been processed.
        if (!s->client_ && s->drain_ping_outstanding_ && (frame->hd.flags & NGHTTP2_FLAG_ACK) &&
            std::memcmp(frame->ping.opaque_data, kDrainPing, sizeof(kDrainPing)) == 0) {
          s->SendFinalGoaway();
        }
        return 0;
      case NGHTTP2_HEADERS:
      case NGHTTP2_DATA:
        break;
      default:
        return 0;
    }
    StreamId id = frame->hd.stream_id;
    HboneSession::Stream* st = s->Find(id);
    if (st == nullptr) return 0;
    if (frame->hd.type == NGHTTP2_HEADERS) {
      if (!s->client_ && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) st->remote_ended = true;
        if (st->oversized) {
          s->SendFinalResponse(*st, 431);
        } else {
          s->HandleRequest(*st);
        }
        return 0;  // an END_STREAM on the request itself is reported after OnConnect, below
      }
      if (s->client_ && !st->response_delivered) {
        if (st->oversized) {  // the observer hears OnReset(PROTOCOL_ERROR) when it closes
          nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, id, NGHTTP2_PROTOCOL_ERROR);
          return 0;
        }
        if (st->status >= 100 && st->status < 200) return 0;  // interim
        st->response_delivered = true;
        StreamObserver* observer = st->finished ? nullptr : st->observer;
        bool ok = st->status >= 200 && st->status < 300;
        if (!ok) {
          st->finished = true;
          st->observer = nullptr;
        }
        if (observer != nullptr) observer->OnResponse(st->status);
        st = s->Find(id);
        if (st == nullptr) return 0;
        if (!ok) {
          nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
          return 0;
        }
      }
    }
    if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && !st->remote_ended) {
      st->remote_ended = true;
      if (!st->finished && st->observer != nullptr) st->observer->OnEndStream();
    }
    return 0;
  }

  static int OnDataChunk(nghttp2_session* h2, uint8_t, int32_t stream_id, const uint8_t* data,
                         size_t len, void* user_data) {
    HboneSession* s = Self(user_data);
    // The connection window is never what holds a slow stream back; its own window is.
    nghttp2_session_consume_connection(h2, len);
    HboneSession::Stream* st = s->Find(stream_id);
    if (st == nullptr || st->finished || st->observer == nullptr) {
      nghttp2_session_consume_stream(h2, stream_id, len);
      return 0;
    }
    st->observer->OnData(data, len);
    return 0;
  }

  static int OnStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code,
                           void* user_data) {
    HboneSession* s = Self(user_data);
    auto it = s->streams_.find(stream_id);
    if (it == s->streams_.end()) return 0;
    std::unique_ptr<HboneSession::Stream> st = std::move(it->second);
    s->Forget(stream_id);
    if (st->finished || st->observer == nullptr) return 0;
    if (error_code == NGHTTP2_NO_ERROR && st->eof_sent && st->remote_ended) {
      st->observer->OnClosed();
    } else {
      st->observer->OnReset(error_code);
    }
    return 0;
  }

  static int OnFrameSend(nghttp2_session* h2, const nghttp2_frame* frame, void* user_data) {
    HboneSession* s = Self(user_data);
    if (frame->hd.type == NGHTTP2_GOAWAY) {
      s->goaway_sent_ = true;
      s->goaway_sent_code_ = frame->goaway.error_code;
      if (s->fatal_) return 0;  // Nghttp2Fatal counted it
      if (frame->goaway.error_code == NGHTTP2_ENHANCE_YOUR_CALM) {
        ++s->stats_->floods;
      } else if (frame->goaway.error_code != NGHTTP2_NO_ERROR) {
        ++s->stats_->protocol_errors;
      }
      return 0;
    }
    // A final non-2xx response to a client still sending: end its side too, so the stream does
    // not hold a concurrency slot until the client notices. Submitted only now: a queued
    // RST_STREAM would have cancelled the response.
    if (!s->client_ && frame->hd.type == NGHTTP2_HEADERS &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
      HboneSession::Stream* st = s->Find(frame->hd.stream_id);
      if (st != nullptr && st->finished && !st->remote_ended) {
        nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
      }
    }
    return 0;
  }

  static int OnFrameNotSend(nghttp2_session*, const nghttp2_frame* frame, int, void* user_data) {
    HboneSession* s = Self(user_data);
    if (frame->hd.type != NGHTTP2_HEADERS || !s->client_) return 0;
    // A request that never left (GOAWAY received, stream ids exhausted, header block too
    // large). nghttp2 may or may not close the stream after this; report it once, here.
    auto it = s->streams_.find(frame->hd.stream_id);
    if (it == s->streams_.end()) return 0;
    std::unique_ptr<HboneSession::Stream> st = std::move(it->second);
    s->Forget(frame->hd.stream_id);
    if (!st->finished && st->observer != nullptr) st->observer->OnReset(NGHTTP2_REFUSED_STREAM);
    return 0;
  }

  static int OnInvalidFrameRecv(nghttp2_session*, const nghttp2_frame* frame, int lib_error_code,
                                void* user_data) {
    HboneSession* s = Self(user_data);
    if (lib_error_code == NGHTTP2_ERR_REFUSED_STREAM) {
      ++s->stats_->refused_streams;
    } else if (frame->hd.stream_id != 0) {
      ++s->stats_->stream_errors;
    }
    return 0;
  }

  static int OnError(nghttp2_session*, int, const char* msg, size_t len, void* user_data) {
    Self(user_data)->last_h2_error_.assign(msg, len);
    return 0;
  }

  static ssize_t ReadLength(nghttp2_session*, uint8_t, int32_t, int32_t session_window,
                            int32_t stream_window, uint32_t remote_max_frame_size,
                            void* user_data) {
    HboneSession* s = Self(user_data);
    int64_t n = std::min<int64_t>(
        {remote_max_frame_size, s->options_.max_send_frame_size, session_window, stream_window});
    return static_cast<ssize_t>(std::max<int64_t>(n, 1));
  }

  // Decides the next DATA frame's length; SendData writes it (no copy into nghttp2's buffer).
  static ssize_t ReadBody(nghttp2_session*, int32_t stream_id, uint8_t*, size_t length,
                          uint32_t* data_flags, nghttp2_data_source*, void* user_data) {
    HboneSession* s = Self(user_data);
    HboneSession::Stream* st = s->Find(stream_id);
    if (st == nullptr) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n = std::min(length, st->buffered());
    if (n == st->buffered() && st->write_closed) {
      *data_flags |= NGHTTP2_DATA_FLAG_EOF;
      st->eof_sent = true;
    } else if (n == 0) {
      st->deferred = true;
      return NGHTTP2_ERR_DEFERRED;
    }
    if (n > 0) *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    return static_cast<ssize_t>(n);
  }

  static int SendData(nghttp2_session*, nghttp2_frame* frame, const uint8_t* framehd, size_t length,
                      nghttp2_data_source*, void* user_data) {
    HboneSession* s = Self(user_data);
    HboneSession::Stream* st = s->Find(frame->hd.stream_id);
    if (st == nullptr || st->buffered() < length) return NGHTTP2_ERR_CALLBACK_FAILURE;
    s->out_.append(reinterpret_cast<const char*>(framehd), 9);
    size_t padlen = frame->data.padlen;  // we never pad, but the frame format allows it
    if (padlen > 0 || length < kDirectPayload || s->write_blocked_) {
      if (padlen > 0) s->out_.push_back(static_cast<char>(padlen - 1));
      st->send.PopTo(&s->out_, length);
      if (padlen > 1) s->out_.append(padlen - 1, '\0');
      // Return to Flush once a batch is gathered, to write it before framing more.
      return s->out_.size() - s->out_off_ >= kOutBatch ? NGHTTP2_ERR_PAUSE : 0;
    }
    // Bulk: the queued frames (this header last) and enough payload to fill their last TLS
    // record go through out_; the rest goes from the ring to TLS piece by piece. What TLS does
    // not take (socket full, or failed) is queued in out_ after all, in order, for Flush.
    const size_t payload = length;
    size_t queued = s->out_.size() - s->out_off_;
    size_t fill =
        std::min(length, (kTlsRecordPayload - queued % kTlsRecordPayload) % kTlsRecordPayload);
    st->send.PopTo(&s->out_, fill, payload);
    length -= fill;
    queued += fill;
    size_t took = s->WriteFromCallback(
        reinterpret_cast<const uint8_t*>(s->out_.data()) + s->out_off_, queued);
    s->out_off_ += took;
    bool stopped = took < queued;
    if (!stopped) {  // TLS holds none of it: out_ does not grow over the frames of one flush
      s->out_.clear();
      s->out_off_ = 0;
    }
    while (!stopped && length > 0) {
      auto [data, n] = st->send.Front(length);
      took = s->WriteFromCallback(data, n);
      st->send.Drop(took, payload);
      length -= took;
      stopped = took < n;
    }
    if (stopped) {  // (a bulk pop all the same: the ring is kept, not regrown)
      st->send.PopTo(&s->out_, length, payload);
      return NGHTTP2_ERR_PAUSE;  // back to Flush, which waits for EPOLLOUT or reports the error
    }
    return 0;
  }
};

// The session's BIO. BoringSSL hands each sealed TLS record (at most 16 KiB) to its BIO at once;
// a socket BIO makes that one send() per record, and one packet train through veth, bridge and
// the peer's stack per record. This BIO gathers the records of a flush in wire_out_ (one copy of
// the ciphertext, cache-hot) and SendWire() sends up to kWireBatch with one send(). Reads go to
// the socket directly. Hand-written because BoringSSL offers no writev/cork of records and no
// buffering BIO of its own (BIO_f_buffer is OpenSSL's).
struct WireBio {
  static BIO_METHOD* Method() {
    static BIO_METHOD* const method = [] {
      BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "hbone wire");
      if (m != nullptr) {
        BIO_meth_set_write(m, Write);
        BIO_meth_set_read(m, Read);
        BIO_meth_set_ctrl(m, Ctrl);
      }
      return m;
    }();
    return method;
  }

  static HboneSession* Self(BIO* bio) { return static_cast<HboneSession*>(BIO_get_data(bio)); }

  static int Write(BIO* bio, const char* data, int len) {
    HboneSession* s = Self(bio);
    BIO_clear_retry_flags(bio);
    if (len <= 0) return 0;
    if (s->wire_off_ == s->wire_out_.size()) {
      s->wire_out_.clear();
      s->wire_off_ = 0;
    }
    if (s->wire_out_.size() - s->wire_off_ >= kWireBatch) {  // full: SendWire first
      BIO_set_retry_write(bio);
      return -1;
    }
    if (s->wire_off_ >= kWireBatch) {  // never drained: keep the buffer bounded
      s->wire_out_.erase(0, s->wire_off_);
      s->wire_off_ = 0;
    }
    // Grown at once to a full batch and its last record, not by doubling (each step a copy).
    if (s->wire_out_.size() + len > s->wire_out_.capacity() &&
        s->wire_out_.size() + len > kKeepOutputBuffer) {
      s->wire_out_.reserve(kWireBatch + kTlsRecordPayload + 256);
    }
    s->wire_out_.append(data, static_cast<size_t>(len));
    return len;
  }

  // BoringSSL reads each record as a 5-byte header, then its body, then the next header: three
  // read()s per small record, the last one EAGAIN. A header read here reads ahead up to
  // kReadAhead bytes (a whole small record, usually), and a read that came back short means the
  // socket is empty until the next epoll event (the fd is level-triggered, so anything that
  // arrives, a FIN included, is reported again). Body reads larger than kReadAhead go straight
  // into BoringSSL's buffer, so bulk data is not copied again.
  static constexpr size_t kReadAhead = 2048;

  static int Read(BIO* bio, char* out, int len) {
    HboneSession* s = Self(bio);
    BIO_clear_retry_flags(bio);
    if (len <= 0) return 0;
    size_t want = static_cast<size_t>(len);
    if (s->wire_in_off_ < s->wire_in_.size()) {
      size_t n = std::min(want, s->wire_in_.size() - s->wire_in_off_);
      memcpy(out, s->wire_in_.data() + s->wire_in_off_, n);
      s->wire_in_off_ += n;
      if (s->wire_in_off_ == s->wire_in_.size()) {
        std::string().swap(s->wire_in_);  // idle sessions hold no read-ahead
        s->wire_in_off_ = 0;
      }
      return static_cast<int>(n);
    }
    if (!s->fd_.valid()) {
      errno = EBADF;
      return -1;
    }
    if (s->wire_drained_) {
      BIO_set_retry_read(bio);
      return -1;
    }
    if (want > kReadAhead) {
      ssize_t n = read(s->fd_.get(), out, want);
      if (n > 0 && static_cast<size_t>(n) < want) s->wire_drained_ = true;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        BIO_set_retry_read(bio);
      }
      return static_cast<int>(n);
    }
    char ahead[kReadAhead];
    ssize_t n = read(s->fd_.get(), ahead, sizeof ahead);
    if (n <= 0) {
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        BIO_set_retry_read(bio);
      }
      return static_cast<int>(n);
    }
    if (static_cast<size_t>(n) < sizeof ahead) s->wire_drained_ = true;
    size_t give = std::min(want, static_cast<size_t>(n));
    memcpy(out, ahead, give);
    if (give < static_cast<size_t>(n)) s->wire_in_.assign(ahead + give, n - give);
    return static_cast<int>(give);
  }

  static long Ctrl(BIO*, int cmd, long, void*) { return cmd == BIO_CTRL_FLUSH ? 1 : 0; }
};

namespace {

// TLS 1.3 through the session's SSL, whose BIO is the WireBio above.
class TlsTransport final : public SessionTransport {
 public:
  explicit TlsTransport(SSL* ssl) : ssl_(ssl) {}
  int Handshake() override { return SSL_do_handshake(ssl_); }
  int Read(uint8_t* buf, int len) override { return SSL_read(ssl_, buf, len); }
  int Write(const uint8_t* data, int len) override { return SSL_write(ssl_, data, len); }
  int Error(int ret) override { return SSL_get_error(ssl_, ret); }
  void Shutdown() override { SSL_shutdown(ssl_); }
  absl::string_view Alpn() override {
    const uint8_t* alpn = nullptr;
    unsigned alpn_len = 0;
    SSL_get0_alpn_selected(ssl_, &alpn, &alpn_len);
    return View(alpn, alpn_len);
  }
  absl::StatusOr<std::string> PeerIdentity() override { return PeerSpiffeId(ssl_); }
  absl::Time PeerNotAfter() override {
    bssl::UniquePtr<X509> leaf(SSL_get_peer_certificate(ssl_));
    if (leaf == nullptr) return absl::InfinitePast();  // verified peers always have one
    absl::StatusOr<tls::CertInfo> info = tls::DescribeCert(leaf.get());
    return info.ok() ? info->not_after : absl::InfinitePast();
  }

 private:
  SSL* const ssl_;  // owned by the session
};

}  // namespace

HboneSession::HboneSession(EventLoop* loop, UniqueFd fd, std::shared_ptr<const TlsContext> ctx,
                           bssl::UniquePtr<SSL> ssl, std::unique_ptr<SessionTransport> transport,
                           bool client, std::string expected_peer, SessionDelegate* delegate,
                           SessionOptions options)
    : loop_(loop),
      fd_(std::move(fd)),
      ctx_(std::move(ctx)),
      ssl_(std::move(ssl)),
      transport_(transport != nullptr ? std::move(transport)
                                      : std::make_unique<TlsTransport>(ssl_.get())),
      client_(client),
      expected_peer_(std::move(expected_peer)),
      delegate_(delegate),
      options_(options),
      stats_(options.stats != nullptr ? options.stats : &own_stats_) {}

HboneSession::~HboneSession() {
  if (state_ != State::kClosed && fd_.valid()) loop_->Unwatch(fd_.get());
  if (h2_ != nullptr) nghttp2_session_del(h2_);
}

absl::StatusOr<std::shared_ptr<HboneSession>> HboneSession::CreateClient(
    EventLoop* loop, UniqueFd fd, std::shared_ptr<const TlsContext> ctx,
    std::string expected_server_identity, SessionDelegate* delegate, SessionOptions options) {
  return Create(loop, std::move(fd), std::move(ctx), /*client=*/true,
                std::move(expected_server_identity), delegate, options);
}

absl::StatusOr<std::shared_ptr<HboneSession>> HboneSession::CreateServer(
    EventLoop* loop, UniqueFd fd, std::shared_ptr<const TlsContext> ctx, SessionDelegate* delegate,
    SessionOptions options) {
  return Create(loop, std::move(fd), std::move(ctx), /*client=*/false, "", delegate, options);
}

absl::StatusOr<std::shared_ptr<HboneSession>> HboneSession::Create(
    EventLoop* loop, UniqueFd fd, std::shared_ptr<const TlsContext> ctx, bool client,
    std::string expected_peer, SessionDelegate* delegate, SessionOptions options) {
  if (loop == nullptr || delegate == nullptr || ctx == nullptr || !fd.valid()) {
    return absl::InvalidArgumentError("HBONE session: loop, delegate, context and fd required");
  }
  if ((ctx->role() == TlsContext::Role::kClient) != client) {
    return absl::InvalidArgumentError("HBONE session: TLS context of the wrong role");
  }
  AMBIT_ASSIGN_OR_RETURN(bssl::UniquePtr<SSL> ssl, ctx->NewSsl(fd.get(), expected_peer));
  // A client socket may still be connecting; an accepted one is connected.
  bool connecting = false;
  if (client) {
    sockaddr_storage peer;
    socklen_t len = sizeof peer;
    if (getpeername(fd.get(), reinterpret_cast<sockaddr*>(&peer), &len) < 0) {
      if (errno != ENOTCONN) return absl::ErrnoToStatus(errno, "getpeername on HBONE socket");
      connecting = true;
    }
  }
  std::shared_ptr<HboneSession> session(
      new HboneSession(loop, std::move(fd), std::move(ctx), std::move(ssl), nullptr, client,
                       std::move(expected_peer), delegate, options));
  AMBIT_RETURN_IF_ERROR(session->Init(connecting));
  return session;
}

absl::StatusOr<std::shared_ptr<HboneSession>> HboneSession::CreateWithTransport(
    EventLoop* loop, UniqueFd fd, std::unique_ptr<SessionTransport> transport, bool client,
    std::string expected_peer, SessionDelegate* delegate, SessionOptions options) {
  if (loop == nullptr || delegate == nullptr || transport == nullptr || !fd.valid()) {
    return absl::InvalidArgumentError("HBONE session: loop, delegate, transport and fd required");
  }
  std::shared_ptr<HboneSession> session(
      new HboneSession(loop, std::move(fd), nullptr, nullptr, std::move(transport), client,
                       std::move(expected_peer), delegate, options));
  AMBIT_RETURN_IF_ERROR(session->Init(/*connecting=*/false));
  return session;
}

absl::Status HboneSession::Init(bool connecting) {
  nghttp2_session_callbacks* cbs;
  if (nghttp2_session_callbacks_new(&cbs) != 0) return absl::ResourceExhaustedError("nghttp2");
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, Nghttp2Callbacks::OnBeginHeaders);
  nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, Nghttp2Callbacks::OnBeginFrame);
  nghttp2_session_callbacks_set_on_header_callback(cbs, Nghttp2Callbacks::OnHeader);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, Nghttp2Callbacks::OnFrameRecv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, Nghttp2Callbacks::OnDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, Nghttp2Callbacks::OnStreamClose);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, Nghttp2Callbacks::OnFrameSend);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, Nghttp2Callbacks::OnFrameNotSend);
  nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(
      cbs, Nghttp2Callbacks::OnInvalidFrameRecv);
  nghttp2_session_callbacks_set_error_callback2(cbs, Nghttp2Callbacks::OnError);
  nghttp2_session_callbacks_set_send_data_callback(cbs, Nghttp2Callbacks::SendData);
  nghttp2_session_callbacks_set_data_source_read_length_callback(cbs, Nghttp2Callbacks::ReadLength);
  nghttp2_option* opt;
  if (nghttp2_option_new(&opt) != 0) {
    nghttp2_session_callbacks_del(cbs);
    return absl::ResourceExhaustedError("nghttp2");
  }
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_peer_max_concurrent_streams(opt, options_.assumed_peer_max_streams);
  nghttp2_option_set_max_send_header_block_length(opt, options_.max_header_list_bytes + 4096);
  nghttp2_option_set_max_outbound_ack(opt, 1000);
  nghttp2_option_set_max_settings(opt, 32);
  nghttp2_option_set_max_continuations(opt, 8);
  nghttp2_option_set_stream_reset_rate_limit(opt, 1000, 33);
  nghttp2_option_set_no_closed_streams(opt, 1);
  int rv = client_ ? nghttp2_session_client_new2(&h2_, cbs, this, opt)
                   : nghttp2_session_server_new2(&h2_, cbs, this, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);
  if (rv != 0) return absl::InternalError(absl::StrCat("nghttp2 session: ", nghttp2_strerror(rv)));

  std::vector<nghttp2_settings_entry> settings = {
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, options_.stream_window},
      {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, options_.max_frame_size},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, options_.max_header_list_bytes},
  };
  if (client_) {
    settings.push_back({NGHTTP2_SETTINGS_ENABLE_PUSH, 0});
  } else {
    settings.push_back({NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, options_.max_concurrent_streams});
  }
  rv = nghttp2_submit_settings(h2_, NGHTTP2_FLAG_NONE, settings.data(), settings.size());
  if (rv == 0) {
    rv = nghttp2_session_set_local_window_size(h2_, NGHTTP2_FLAG_NONE, 0,
                                               static_cast<int32_t>(options_.connection_window));
  }
  if (rv != 0)
    return absl::InvalidArgumentError(absl::StrCat("HTTP/2 settings: ", nghttp2_strerror(rv)));

  if (ssl_ != nullptr) {
    BIO_METHOD* method = WireBio::Method();
    BIO* bio = method != nullptr ? BIO_new(method) : nullptr;
    if (bio == nullptr) return absl::ResourceExhaustedError("HBONE session: BIO_new");
    BIO_set_data(bio, this);
    BIO_set_init(bio, 1);
    SSL_set_bio(ssl_.get(), bio, bio);  // one reference, owned by the SSL from here
  }

  state_ = connecting ? State::kConnecting : State::kHandshaking;
  interest_ = connecting ? EPOLLOUT : (client_ ? EPOLLIN | EPOLLOUT : EPOLLIN);
  AMBIT_RETURN_IF_ERROR(loop_->Watch(fd_.get(), interest_, this));
  std::weak_ptr<HboneSession> weak = weak_from_this();
  loop_->RunAfter(options_.handshake_timeout, [weak] {
    std::shared_ptr<HboneSession> s = weak.lock();
    if (s == nullptr || s->state_ == State::kOpen || s->state_ == State::kClosed) return;
    s->RunIo([&] {
      ++s->stats_->tls_failures;
      s->Close(absl::DeadlineExceededError(
          absl::StrCat("HBONE handshake with ", s->PeerName(), " did not finish within ",
                       absl::FormatDuration(s->options_.handshake_timeout))));
    });
  });
  return absl::OkStatus();
}

std::string HboneSession::PeerName() const {
  sockaddr_storage storage;
  socklen_t len = sizeof storage;
  std::string name = "peer";
  if (fd_.valid() && getpeername(fd_.get(), reinterpret_cast<sockaddr*>(&storage), &len) == 0) {
    absl::StatusOr<SocketAddress> addr =
        SocketAddress::FromSockaddr(reinterpret_cast<sockaddr*>(&storage), len);
    if (addr.ok()) name = addr->ToString();
  }
  if (client_) absl::StrAppend(&name, " (expected ", expected_peer_, ")");
  return name;
}

template <typename F>
void HboneSession::RunIo(F&& f) {
  std::shared_ptr<HboneSession> self = shared_from_this();  // callbacks may drop the owner's ref
  bool outer = !in_io_;
  in_io_ = true;
  f();
  if (!outer) return;
  // Callbacks of one round (OnWritable, OnIdle, ...) may queue more; a few rounds settle it, and
  // whatever remains is picked up by a deferred flush.
  for (int round = 0; round < 4 && state_ == State::kOpen; ++round) {
    dirty_ = false;
    Flush();
    CheckDone();
    if (state_ == State::kOpen && idle_pending_) {
      idle_pending_ = false;
      if (streams_.empty()) delegate_->OnIdle(*this);
    }
    if (!dirty_) break;
  }
  in_io_ = false;
  if (dirty_ && state_ == State::kOpen) ScheduleFlush();
}

void HboneSession::ScheduleFlush() {
  dirty_ = true;
  if (in_io_ || flush_scheduled_ || state_ != State::kOpen) return;
  flush_scheduled_ = true;
  std::weak_ptr<HboneSession> weak = weak_from_this();
  loop_->Defer([weak] {
    if (std::shared_ptr<HboneSession> s = weak.lock()) {
      s->flush_scheduled_ = false;
      s->RunIo([] {});
    }
  });
}

void HboneSession::OnEvents(uint32_t events) {
  wire_drained_ = false;  // an event: the socket may hold bytes again
  RunIo([&] {
    switch (state_) {
      case State::kConnecting:
        if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0) return;
        DoConnectDone();
        if (state_ != State::kHandshaking) return;
        DoHandshake();
        return;
      case State::kHandshaking:
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) write_blocked_ = false;
        DoHandshake();
        return;
      case State::kOpen:
        // After ERR/HUP the next SSL_write fails and closes the session, instead of epoll
        // reporting the condition forever to a session waiting for EPOLLOUT.
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) write_blocked_ = false;
        // Records already read ahead are not visible to epoll: read them too.
        if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) || wire_in_off_ < wire_in_.size()) {
          DoRead();
        }
        return;
      case State::kClosed:
        return;
    }
  });
}

void HboneSession::DoConnectDone() {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  if (err != 0) {
    Close(absl::ErrnoToStatus(
        err, absl::StrCat("connecting to HBONE peer (expected ", expected_peer_, ")")));
    return;
  }
  state_ = State::kHandshaking;
}

void HboneSession::DoHandshake() {
  ERR_clear_error();
  int r = transport_->Handshake();
  int e = r == 1 ? SSL_ERROR_NONE : transport_->Error(r);
  int saved_errno = errno;  // HandshakeFailed reads it; a send() below may change it
  if (r != 1 && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
    // Refused or failed: the alert is sent if it can be, but the refusal is what gets counted
    // and reported, also when the peer is already gone and the alert cannot be sent.
    while (wire_off_ < wire_out_.size()) {
      ssize_t n = send(fd_.get(), wire_out_.data() + wire_off_, wire_out_.size() - wire_off_,
                       MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        wire_off_ += static_cast<size_t>(n);
      } else if (!(n < 0 && errno == EINTR)) {
        break;
      }
    }
    errno = saved_errno;
    HandshakeFailed(e);
    return;
  }
  if (!SendWire()) return;  // the flight the handshake produced
  errno = saved_errno;
  if (r == 1) {
    HandshakeDone();
    return;
  }
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
    uint32_t want = e == SSL_ERROR_WANT_READ && !write_blocked_ ? EPOLLIN : EPOLLIN | EPOLLOUT;
    if (want != interest_ && loop_->Modify(fd_.get(), want, this).ok()) interest_ = want;
    return;
  }
  HandshakeFailed(e);
}

void HboneSession::HandshakeFailed(int ssl_error) {
  PeerCheckFailure failure =
      ssl_ != nullptr ? PeerCheckFailureOf(ssl_.get()) : PeerCheckFailure::kNone;
  std::string message = ssl_ != nullptr ? PeerCheckMessage(ssl_.get()) : "";
  absl::Status status;
  switch (failure) {
    case PeerCheckFailure::kNone:
    case PeerCheckFailure::kVersion:
      ++stats_->tls_failures;
      break;
    case PeerCheckFailure::kNoClientCert:
      ++stats_->no_client_cert;
      break;
    case PeerCheckFailure::kUntrusted:
    case PeerCheckFailure::kBadIdentity:
    case PeerCheckFailure::kWrongTrustDomain:
      ++stats_->untrusted_peer;
      break;
    case PeerCheckFailure::kIdentityMismatch:
      ++stats_->identity_mismatch;
      break;
    case PeerCheckFailure::kRevoked:
      ++stats_->revoked_peer;
      break;
    case PeerCheckFailure::kNoAlpn:
      ++stats_->no_alpn;
      break;
    case PeerCheckFailure::kCipher:
      ++stats_->bad_cipher;
      break;
  }
  std::string what = absl::StrCat("TLS handshake with ", PeerName(), " failed");
  if (!message.empty()) {
    ERR_clear_error();
    status = absl::PermissionDeniedError(absl::StrCat(what, ": ", message));
  } else if (ssl_error == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
    status = errno != 0 ? absl::ErrnoToStatus(errno, what)
                        : absl::UnavailableError(absl::StrCat(what, ": connection closed"));
  } else {
    status = tls::SslError(absl::StatusCode::kUnavailable, what);
  }
  Close(std::move(status));
}

void HboneSession::HandshakeDone() {
  if (transport_->Alpn() != "h2") {
    ++stats_->no_alpn;
    Close(absl::PermissionDeniedError(
        absl::StrCat("HBONE peer ", PeerName(), " did not negotiate ALPN h2")));
    return;
  }
  absl::StatusOr<std::string> peer = transport_->PeerIdentity();
  if (!peer.ok()) {
    ++stats_->untrusted_peer;
    Close(peer.status());
    return;
  }
  // The verifier already refused a mismatch; belt and braces. PeerIdentity checked the trust
  // domain (ours or an alias), so a differing string must at least be the same workload path.
  if (client_ && *peer != expected_peer_ && !SameWorkloadPath(expected_peer_, *peer)) {
    ++stats_->identity_mismatch;
    Close(absl::PermissionDeniedError(
        absl::StrCat("server identity mismatch: expected ", expected_peer_, ", got ", *peer)));
    return;
  }
  peer_identity_ = std::move(*peer);
  peer_not_after_ = transport_->PeerNotAfter();
  state_ = State::kOpen;
  ++stats_->sessions_established;
  UpdateInterest();
  delegate_->OnEstablished(*this);
  if (state_ == State::kOpen && shutdown_when_open_) {
    shutdown_when_open_ = false;
    shutdown_ = false;
    Shutdown(GoAway::kAfterNotice);
  }
  // The last handshake read may have pulled application records into BoringSSL's buffer, where
  // epoll cannot see them.
  if (state_ == State::kOpen) DoRead();
}

void HboneSession::DoRead() {
  while (state_ == State::kOpen && nghttp2_session_want_read(h2_)) {
    // Gather the plaintext of every record already readable (up to the buffer), then parse it
    // at once; see kReadChunk. How the reading stopped is settled after the parse, so that the
    // bytes before a close_notify or an error are still delivered.
    ReadBufferLease buf;
    size_t got = 0;
    int e = SSL_ERROR_NONE;
    bool peer_closed = false;
    absl::Status failure;
    while (got < buf.size()) {
      ERR_clear_error();
      int n = transport_->Read(buf.data() + got, static_cast<int>(buf.size() - got));
      if (n > 0) {
        got += static_cast<size_t>(n);
        continue;
      }
      e = transport_->Error(n);
      if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 &&
                                         (errno == 0 || errno == ECONNRESET))) {
        peer_closed = true;
      } else if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        failure = tls::SslError(absl::StatusCode::kUnavailable,
                                absl::StrCat("reading from HBONE peer ", PeerName()));
      }
      break;
    }
    if (got > 0) {
      ssize_t rv = nghttp2_session_mem_recv(h2_, buf.data(), got);
      if (rv < 0) {
        Nghttp2Fatal(static_cast<int>(rv), "processing frames from");
        return;
      }
      if (state_ != State::kOpen) return;
      RefuseLateStreams();
    }
    if (e == SSL_ERROR_NONE) continue;  // the buffer filled up: there may be more
    if (e == SSL_ERROR_WANT_READ) return;
    if (e == SSL_ERROR_WANT_WRITE) {  // a TLS 1.3 KeyUpdate reply is waiting for room
      write_blocked_ = true;
      return;
    }
    if (peer_closed) {
      size_t open = streams_.size();
      if (goaway_received_ && goaway_received_code_ != NGHTTP2_NO_ERROR) {
        // The peer said why before closing (e.g. ENHANCE_YOUR_CALM): keep the reason.
        Close(absl::UnavailableError(absl::StrCat("HBONE peer ", PeerName(), " sent GOAWAY(",
                                                  nghttp2_http2_strerror(goaway_received_code_),
                                                  ") and closed the connection with ", open,
                                                  " streams open")));
      } else if (open == 0) {
        Close(absl::OkStatus());
      } else {
        Close(absl::UnavailableError(absl::StrCat(
            "HBONE peer ", PeerName(), " closed the connection with ", open, " streams open")));
      }
      return;
    }
    ++stats_->tls_failures;
    Close(std::move(failure));
    return;
  }
}

void HboneSession::Nghttp2Fatal(int rv, absl::string_view where) {
  fatal_ = true;
  uint32_t code = NGHTTP2_PROTOCOL_ERROR;
  if (rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS ||
      rv == NGHTTP2_ERR_TOO_MANY_SETTINGS) {
    ++stats_->floods;
    code = NGHTTP2_ENHANCE_YOUR_CALM;
  } else if (rv == NGHTTP2_ERR_CALLBACK_FAILURE || rv == NGHTTP2_ERR_NOMEM) {
    code = NGHTTP2_INTERNAL_ERROR;
  } else {
    ++stats_->protocol_errors;
  }
  absl::Status status = absl::UnavailableError(absl::StrCat(
      "HTTP/2 error ", where, " HBONE peer ", PeerName(), ": ", nghttp2_strerror(rv),
      last_h2_error_.empty() ? "" : " (", last_h2_error_, last_h2_error_.empty() ? "" : ")"));
  // Best effort: tell the peer why before closing.
  if (nghttp2_session_terminate_session(h2_, code) == 0) {
    const uint8_t* data;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(h2_, &data)) > 0) {
      out_.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    }
    if (out_off_ < out_.size()) {
      transport_->Write(reinterpret_cast<const uint8_t*>(out_.data()) + out_off_,
                        static_cast<int>(out_.size() - out_off_));
    }
  }
  Close(std::move(status));
}

bool HboneSession::TrySendWire() {
  while (wire_off_ < wire_out_.size()) {
    ssize_t n =
        send(fd_.get(), wire_out_.data() + wire_off_, wire_out_.size() - wire_off_, MSG_NOSIGNAL);
    if (n > 0) {
      wire_off_ += static_cast<size_t>(n);
      wire_sent_ += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) write_blocked_ = true;
    return false;
  }
  wire_out_.clear();
  wire_off_ = 0;
  return true;
}

bool HboneSession::SendWire() {
  if (TrySendWire() || errno == EAGAIN || errno == EWOULDBLOCK) return true;  // sent, or full
  ++stats_->tls_failures;
  Close(absl::ErrnoToStatus(errno, absl::StrCat("writing to HBONE peer ", PeerName())));
  return false;
}

size_t HboneSession::WriteFromCallback(const uint8_t* data, size_t n) {
  size_t done = 0;
  while (done < n) {
    ERR_clear_error();
    int w = transport_->Write(data + done, static_cast<int>(std::min<size_t>(n - done, 1 << 30)));
    if (w > 0) {
      done += static_cast<size_t>(w);  // one record at a time (SSL_MODE_ENABLE_PARTIAL_WRITE)
      continue;
    }
    // A full wire batch asks to be sent first; anything else (a full socket, a failure) stops
    // here, and the same bytes are written again from out_ (SSL_MODE_ACCEPT_MOVING_...).
    if (transport_->Error(w) != SSL_ERROR_WANT_WRITE || !TrySendWire()) break;
  }
  return done;
}

void HboneSession::ReleaseIdleBuffers(size_t sent) {
  // A bulk stream's flushes alternate between large ones and small ones (a WINDOW_UPDATE read
  // while its ring was empty): releasing on every small one regrew the buffers, copying and
  // mapping 256 KiB again, several times a millisecond. So a session that made a large flush
  // keeps them until a second passes without one (WatchHeldBuffers), or it has no streams.
  if (sent >= kKeepOutputBuffer) {
    large_flush_ = true;
    WatchHeldBuffers();
    return;
  }
  if (streams_.empty()) ReleaseOutputBuffers();
}

void HboneSession::ReleaseOutputBuffers() {
  if (out_off_ == out_.size() && out_.capacity() > kKeepOutputBuffer) {
    std::string().swap(out_);
    out_off_ = 0;
  }
  if (wire_off_ == wire_out_.size() && wire_out_.capacity() > kKeepOutputBuffer) {
    std::string().swap(wire_out_);
    wire_off_ = 0;
  }
}

void HboneSession::WatchHeldBuffers() {
  if (buffers_watched_) return;
  buffers_watched_ = true;
  large_flush_ = false;
  std::weak_ptr<HboneSession> weak = weak_from_this();
  loop_->RunAfter(kHeldBuffersCheck, [weak] {
    std::shared_ptr<HboneSession> s = weak.lock();
    if (s == nullptr) return;
    s->buffers_watched_ = false;
    if (s->state_ != State::kOpen) return;
    if (s->large_flush_) {
      s->WatchHeldBuffers();  // still streaming
      return;
    }
    s->ReleaseOutputBuffers();
  });
}

void HboneSession::Flush() {
  const size_t sent_before = wire_sent_;
  if (!SendWire()) return;
  // Each pass frames (up to kOutBatch pending), writes, and lets drained streams refill; stop
  // after a pass that did none of these, or when the socket is full (EPOLLOUT resumes).
  while (state_ == State::kOpen && !write_blocked_) {
    if (out_off_ == out_.size()) {
      out_.clear();
      out_off_ = 0;
    } else if (out_off_ >= kOutBatch) {  // never fully drained: keep the buffer bounded
      out_.erase(0, out_off_);           // (same bytes, moved: SSL_MODE_ACCEPT_MOVING_...)
      out_off_ = 0;
    }
    const size_t pending_before = out_.size() - out_off_;
    while (out_.size() - out_off_ < kOutBatch) {
      const uint8_t* data;
      ssize_t n = nghttp2_session_mem_send(h2_, &data);
      if (n < 0) {
        Nghttp2Fatal(static_cast<int>(n), "framing for");
        return;
      }
      if (n == 0) break;
      out_.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    }
    // DATA frames arrive through SendData, not mem_send's return value: compare sizes.
    const bool framed = out_.size() - out_off_ > pending_before;
    const bool wrote = out_off_ < out_.size();
    while (out_off_ < out_.size()) {
      ERR_clear_error();
      size_t chunk = std::min<size_t>(out_.size() - out_off_, 1 << 30);
      int w = transport_->Write(reinterpret_cast<const uint8_t*>(out_.data()) + out_off_,
                                static_cast<int>(chunk));
      if (w > 0) {
        out_off_ += static_cast<size_t>(w);
        continue;
      }
      int e = transport_->Error(w);
      if (e == SSL_ERROR_WANT_WRITE) {  // WireBio holds a batch: send it, then go on
        if (!SendWire()) return;
        if (write_blocked_) break;
        continue;
      }
      ++stats_->tls_failures;
      Close(e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0
                ? absl::ErrnoToStatus(errno, absl::StrCat("writing to HBONE peer ", PeerName()))
                : tls::SslError(absl::StatusCode::kUnavailable,
                                absl::StrCat("writing to HBONE peer ", PeerName())));
      return;
    }
    if (state_ != State::kOpen || !SendWire()) return;
    // Streams drained into frames may take more bytes now; loop to frame those too.
    bool notified = NotifyWritable();
    if (!framed && !wrote && !notified) break;
  }
  if (state_ != State::kOpen) return;
  ReleaseIdleBuffers(wire_sent_ - sent_before);
  UpdateInterest();
}

bool HboneSession::NotifyWritable() {
  std::vector<StreamId> ready;
  for (const auto& [id, st] : streams_) {
    if (st->want_writable && !st->finished && st->observer != nullptr &&
        st->buffered() <= options_.stream_send_buffer / 2) {
      ready.push_back(id);
    }
  }
  for (StreamId id : ready) {
    Stream* st = Find(id);  // an earlier OnWritable may have reset it
    if (st == nullptr || st->finished || st->observer == nullptr || !st->want_writable) continue;
    st->want_writable = false;
    st->observer->OnWritable();
  }
  return !ready.empty();
}

void HboneSession::UpdateInterest() {
  if (state_ != State::kOpen) return;
  uint32_t want = 0;
  if (nghttp2_session_want_read(h2_)) want |= EPOLLIN;
  if (write_blocked_) want |= EPOLLOUT;
  if (want != interest_ && loop_->Modify(fd_.get(), want, this).ok()) interest_ = want;
}

void HboneSession::CheckDone() {
  if (state_ != State::kOpen || nghttp2_session_want_read(h2_) || nghttp2_session_want_write(h2_) ||
      out_off_ < out_.size()) {
    return;
  }
  absl::Status status;
  if (goaway_sent_ && goaway_sent_code_ != NGHTTP2_NO_ERROR) {
    status = absl::UnavailableError(
        absl::StrCat("HTTP/2 error from HBONE peer ", PeerName(), ": sent GOAWAY(",
                     nghttp2_http2_strerror(goaway_sent_code_), ")",
                     last_h2_error_.empty() ? "" : ": ", last_h2_error_));
  } else if (goaway_received_ && goaway_received_code_ != NGHTTP2_NO_ERROR) {
    status =
        absl::UnavailableError(absl::StrCat("HBONE peer ", PeerName(), " sent GOAWAY(",
                                            nghttp2_http2_strerror(goaway_received_code_), ")"));
  }
  if (status.ok()) transport_->Shutdown();  // close_notify, best effort
  Close(std::move(status));
}

void HboneSession::Close(absl::Status status) {
  if (state_ == State::kClosed) return;
  state_ = State::kClosed;
  if (wire_off_ < wire_out_.size()) {  // an alert, GOAWAY or close_notify: best effort
    send(fd_.get(), wire_out_.data() + wire_off_, wire_out_.size() - wire_off_,
         MSG_NOSIGNAL | MSG_DONTWAIT);
  }
  wire_out_.clear();
  wire_off_ = 0;
  if (status.ok()) {
    // Unread bytes at close() make the kernel answer with RST, which can overtake the GOAWAY and
    // close_notify still queued: read (and drop) what the peer sent first. Bounded.
    char scratch[4096];
    for (int i = 0; i < 16 && recv(fd_.get(), scratch, sizeof scratch, MSG_DONTWAIT) > 0; ++i) {
    }
  }
  loop_->Unwatch(fd_.get());
  fd_.Reset();
  ERR_clear_error();
  std::unordered_map<StreamId, std::unique_ptr<Stream>> streams;
  streams.swap(streams_);
  for (auto& [id, st] : streams) {
    if (!st->finished && st->observer != nullptr) st->observer->OnReset(kConnectError);
  }
  delegate_->OnSessionClosed(*this, status);
}

HboneSession::Stream* HboneSession::Find(StreamId id) const {
  auto it = streams_.find(id);
  return it == streams_.end() ? nullptr : it->second.get();
}

void HboneSession::Forget(StreamId id) {
  streams_.erase(id);
  if (streams_.empty()) idle_pending_ = true;
  ScheduleFlush();
}

void HboneSession::RefuseLateStreams() {
  if (late_streams_.empty()) return;
  std::vector<StreamId> late;
  late.swap(late_streams_);
  for (StreamId id : late) {
    if (id <= last_refused_late_ || Find(id) != nullptr) continue;  // HandleRequest has it
    last_refused_late_ = id;
    ++stats_->refused_streams;
    nghttp2_submit_rst_stream(h2_, NGHTTP2_FLAG_NONE, id, NGHTTP2_REFUSED_STREAM);
  }
  ScheduleFlush();
}

void HboneSession::HandleRequest(Stream& s) {
  StreamId id = s.id;
  if (goaway_last_stream_ >= 0 && id > goaway_last_stream_) {
    // Opened before the client saw our GOAWAY: refused, never forwarded (safe to retry).
    ++stats_->refused_streams;
    last_refused_late_ = std::max(last_refused_late_, id);
    s.finished = true;
    s.observer = nullptr;
    nghttp2_submit_rst_stream(h2_, NGHTTP2_FLAG_NONE, id, NGHTTP2_REFUSED_STREAM);
    ScheduleFlush();
    return;
  }
  if (s.method != "CONNECT") {
    ++stats_->bad_requests;
    SendFinalResponse(s, 400);
    return;
  }
  absl::StatusOr<SocketAddress> dest = SocketAddress::Parse(s.authority);
  if (!dest.ok() || dest->port == 0) {
    ++stats_->bad_requests;
    SendFinalResponse(s, 400);
    return;
  }
  if (!TakeStreamToken()) {
    // Before the delegate: an abusive client costs no upstream connect from here on.
    ++stats_->stream_rate_limited;
    last_h2_error_ = absl::StrCat("more than ", options_.stream_open_burst,
                                  " CONNECT streams without a 2xx answer (limit ",
                                  options_.stream_open_rate, "/s)");
    s.finished = true;
    s.observer = nullptr;
    if (nghttp2_session_terminate_session(h2_, NGHTTP2_ENHANCE_YOUR_CALM) != 0) {
      nghttp2_submit_rst_stream(h2_, NGHTTP2_FLAG_NONE, id, NGHTTP2_REFUSED_STREAM);
    }
    ScheduleFlush();
    return;
  }
  s.holds_token = true;
  ++stats_->streams_opened;
  ConnectRequest request{
      s.authority, *dest, {s.forwarded, s.baggage, s.traceparent}, peer_identity_};
  StreamObserver* observer = delegate_->OnConnect(*this, id, request);
  Stream* st = Find(id);
  if (st == nullptr || st->finished) return;
  if (observer == nullptr) {
    if (!st->responded) SendFinalResponse(*st, 503);
    return;
  }
  st->observer = observer;
  if (st->remote_ended) observer->OnEndStream();  // the request carried END_STREAM itself
}

bool HboneSession::TakeStreamToken() {
  absl::Time now = options_.clock->Now();
  if (stream_tokens_at_ == absl::Time()) {
    stream_tokens_ = options_.stream_open_burst;
  } else {
    double refill = absl::ToDoubleSeconds(now - stream_tokens_at_) * options_.stream_open_rate;
    stream_tokens_ =
        std::min<double>(stream_tokens_ + std::max(refill, 0.0), options_.stream_open_burst);
  }
  stream_tokens_at_ = now;
  if (stream_tokens_ < 1) return false;
  stream_tokens_ -= 1;
  return true;
}

void HboneSession::SendFinalResponse(Stream& s, int status, absl::string_view reason) {
  std::string code = absl::StrCat(status);
  // A header value is one line of visible text; anything else in the reason becomes a space.
  std::string text(reason.substr(0, 512));
  for (char& c : text) {
    if (c < 0x20 || c == 0x7f) c = ' ';
  }
  nghttp2_nv nv[] = {Nv(":status", code), Nv("ambit-error", text)};
  s.responded = true;
  s.finished = true;
  s.observer = nullptr;
  s.send.Clear();
  if (nghttp2_submit_response(h2_, s.id, nv, text.empty() ? 1 : 2, nullptr) != 0) {
    nghttp2_submit_rst_stream(h2_, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_INTERNAL_ERROR);
  }
  ScheduleFlush();
}

int HboneSession::AttachBody(Stream& s, int status) {
  nghttp2_data_provider provider{};
  provider.read_callback = Nghttp2Callbacks::ReadBody;
  s.body_attached = true;
  std::string code = absl::StrCat(status);
  nghttp2_nv nv[] = {Nv(":status", code)};
  return nghttp2_submit_response(h2_, s.id, nv, 1, &provider);
}

absl::StatusOr<StreamId> HboneSession::Connect(absl::string_view authority,
                                               const ConnectHeaders& headers,
                                               StreamObserver* observer) {
  if (!client_) return absl::FailedPreconditionError("Connect on a server session");
  if (observer == nullptr) return absl::InvalidArgumentError("Connect without an observer");
  if (state_ == State::kClosed) return absl::UnavailableError("HBONE session is closed");
  if (shutdown_ || goaway_received_) {
    return absl::UnavailableError("HBONE session is going away");
  }
  absl::StatusOr<SocketAddress> dest = SocketAddress::Parse(authority);
  if (!dest.ok() || dest->port == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CONNECT authority \"", authority, "\" is not ip:port"));
  }
  std::vector<nghttp2_nv> nv = {Nv(":method", "CONNECT"), Nv(":authority", authority)};
  if (!headers.forwarded.empty()) nv.push_back(Nv("forwarded", headers.forwarded));
  if (!headers.baggage.empty()) nv.push_back(Nv("baggage", headers.baggage));
  if (!headers.traceparent.empty()) nv.push_back(Nv("traceparent", headers.traceparent));
  nghttp2_data_provider provider{};
  provider.read_callback = Nghttp2Callbacks::ReadBody;
  auto stream = std::make_unique<Stream>();
  Stream* st = stream.get();
  int32_t id = nghttp2_submit_request(h2_, nullptr, nv.data(), nv.size(), &provider, nullptr);
  if (id < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot open an HBONE stream: ", nghttp2_strerror(id)));
  }
  st->id = id;
  st->observer = observer;
  st->body_attached = true;
  streams_[id] = std::move(stream);
  ++stats_->streams_opened;
  ScheduleFlush();
  return id;
}

absl::Status HboneSession::Respond(StreamId stream, int status, absl::string_view reason) {
  if (client_) return absl::FailedPreconditionError("Respond on a client session");
  Stream* st = Find(stream);
  if (st == nullptr || st->finished) {
    return absl::NotFoundError(absl::StrCat("HBONE stream ", stream, " is gone"));
  }
  if (st->responded) {
    return absl::FailedPreconditionError(absl::StrCat("HBONE stream ", stream, " answered"));
  }
  if (status < 200 || status > 599) {
    return absl::InvalidArgumentError(absl::StrCat("bad final status ", status));
  }
  if (status >= 300) {
    SendFinalResponse(*st, status, reason);
    return absl::OkStatus();
  }
  st->responded = true;
  if (st->holds_token) {
    st->holds_token = false;
    stream_tokens_ = std::min<double>(stream_tokens_ + 1, options_.stream_open_burst);
  }
  int rv = AttachBody(*st, status);
  if (rv != 0) {
    return absl::InternalError(absl::StrCat("HTTP/2 response: ", nghttp2_strerror(rv)));
  }
  ScheduleFlush();
  return absl::OkStatus();
}

size_t HboneSession::Write(StreamId stream, const uint8_t* data, size_t len) {
  Stream* st = Find(stream);
  if (st == nullptr || st->finished || st->write_closed || state_ == State::kClosed) return 0;
  size_t room = options_.stream_send_buffer - std::min(options_.stream_send_buffer, st->buffered());
  size_t n = std::min(room, len);
  if (n < len) st->want_writable = true;
  if (n == 0) return 0;
  st->send.Append(data, n, options_.stream_send_buffer);
  if (st->deferred) {
    st->deferred = false;
    nghttp2_session_resume_data(h2_, stream);
  }
  ScheduleFlush();
  return n;
}

void HboneSession::CloseWrite(StreamId stream) {
  Stream* st = Find(stream);
  if (st == nullptr || st->finished || st->write_closed || state_ == State::kClosed) return;
  st->write_closed = true;
  st->want_writable = false;
  if (st->deferred) {
    st->deferred = false;
    nghttp2_session_resume_data(h2_, stream);
  }
  ScheduleFlush();
}

void HboneSession::Reset(StreamId stream, uint32_t error_code) {
  Stream* st = Find(stream);
  if (st == nullptr || st->finished || state_ == State::kClosed) return;
  st->finished = true;
  st->observer = nullptr;
  nghttp2_submit_rst_stream(h2_, NGHTTP2_FLAG_NONE, stream, error_code);
  ScheduleFlush();
}

void HboneSession::Consume(StreamId stream, size_t n) {
  if (state_ == State::kClosed || n == 0) return;
  nghttp2_session_consume_stream(h2_, stream, n);  // unknown / closed streams: no-op
  ScheduleFlush();
}

void HboneSession::Shutdown(GoAway mode) {
  if (state_ == State::kClosed || shutdown_) return;
  shutdown_ = true;
  if (state_ != State::kOpen) {
    if (mode == GoAway::kNow) {
      RunIo([&] { Close(absl::CancelledError("HBONE session shut down before the handshake")); });
      return;
    }
    // A data plane draining for its successor still serves what it took: a connection it took
    // from a listener's queue, or opened for one, is finished and then drained like an open one.
    // Closing it here would reset a connection it had accepted. The handshake timeout bounds it.
    shutdown_when_open_ = true;
    return;
  }
  if (client_) {
    nghttp2_submit_goaway(h2_, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, nullptr, 0);
    ScheduleFlush();
    return;
  }
  // A single GOAWAY naming the last stream processed races every CONNECT already on its way:
  // under load some arrive after it and are refused, and a client that hit a write error before
  // reading the GOAWAY sees a reset rather than a refusal it may retry. The notice stops new
  // streams without refusing any; the PING's ack marks the point after which none can arrive.
  if (mode == GoAway::kNow || nghttp2_submit_shutdown_notice(h2_) != 0 ||
      nghttp2_submit_ping(h2_, NGHTTP2_FLAG_NONE, kDrainPing) != 0) {
    SendFinalGoaway();
    return;
  }
  drain_ping_outstanding_ = true;
  std::weak_ptr<HboneSession> weak = weak_from_this();
  loop_->RunAfter(options_.drain_notice_timeout, [weak] {
    std::shared_ptr<HboneSession> s = weak.lock();
    if (s == nullptr || s->state_ != State::kOpen) return;
    s->RunIo([&] { s->SendFinalGoaway(); });
  });
  ScheduleFlush();
}

void HboneSession::Abort(absl::Status why) {
  if (state_ == State::kClosed) return;
  if (why.ok()) why = absl::AbortedError("HBONE session aborted");
  RunIo([&] { Close(std::move(why)); });
}

void HboneSession::SendFinalGoaway() {
  drain_ping_outstanding_ = false;
  if (client_ || state_ != State::kOpen || goaway_last_stream_ >= 0) return;
  goaway_last_stream_ = nghttp2_session_get_last_proc_stream_id(h2_);
  nghttp2_submit_goaway(h2_, NGHTTP2_FLAG_NONE, goaway_last_stream_, NGHTTP2_NO_ERROR, nullptr, 0);
  ScheduleFlush();
}

bool HboneSession::can_open_stream() const {
  if (!client_ || state_ == State::kClosed || shutdown_ || goaway_received_ || goaway_sent_) {
    return false;
  }
  if (!nghttp2_session_check_request_allowed(h2_)) return false;
  uint32_t limit =
      nghttp2_session_get_remote_settings(h2_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
  return streams_.size() < limit;
}

size_t HboneSession::buffered(StreamId stream) const {
  Stream* st = Find(stream);
  return st == nullptr ? 0 : st->buffered();
}

}  // namespace ambit::hbone
