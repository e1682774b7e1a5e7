// The HTTP/2 (h2c, prior knowledge) side of ProxyConnection, on nghttp2's server session. Each
// stream is one request: its headers go through the filter chain, an allowed stream gets its own
// HTTP/1.1 upstream connection (proxy.h says why). Flow control is manual, so a slow upstream
// holds the client back: DATA is acknowledged (WINDOW_UPDATE) only once the upstream buffer is
// below the high-water mark, and a response body waits in a bounded per-stream buffer, with the
// upstream's reads paused while it is full.
//
// A filter that waits (FilterResult::Wait) holds its stream alone: the stream's DATA is kept and
// acknowledged only as far as the body the filter asked for, so the client's stream window bounds
// the rest; other streams go on. The check's answer resumes the chain where it stopped.

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "agent/common/log.h"
#include "agent/waypoint/proxy_internal.h"

namespace ambit::waypoint::internal {
namespace {

constexpr const char* kLog = "waypoint";
// Per-stream response bytes buffered before the upstream is paused.
constexpr size_t kResponseBuffer = 256 << 10;

class Http2Handler;

struct Stream final : public ByteStream::Observer, public Http1Sink {
  Stream(Http2Handler* h, int32_t id) : h(h), id(id) {}
  // ByteStream::Observer (upstream)
  void OnData(absl::string_view data) override;
  void OnWritable() override;
  void OnEnd() override;
  void OnError(const absl::Status& s) override;
  // Http1Sink (upstream response)
  void OnHead(MessageHead head) override;
  void OnBody(absl::string_view data) override;
  void OnMessageComplete() override;

  Http2Handler* h;
  int32_t id;
  // Request.
  HeaderList headers;
  std::string method, path, authority, scheme;
  size_t header_bytes = 0;
  size_t header_count = 0;
  bool too_large = false;
  bool request_ended = false;
  bool no_body = false;  // END_STREAM came with the request headers
  bool chunked = false;
  size_t unconsumed = 0;  // DATA bytes not yet acknowledged to the client
  std::unique_ptr<Exchange> ex;
  absl::Time last_activity;
  // Upstream and response.
  std::unique_ptr<ByteStream> up;
  std::unique_ptr<Http1Parser> parser;
  bool response_submitted = false;
  bool response_done = false;  // all body bytes are in `body`
  bool response_sent = false;  // END_STREAM went out
  std::string body;
  size_t body_pos = 0;
  // A filter waits: for the body it wants, then for its check (filter.h).
  enum class Wait { kNone, kBody, kCheck };
  Wait waiting = Wait::kNone;
  std::shared_ptr<Pending> pending;
  std::unique_ptr<AsyncCheck> check;
  std::shared_ptr<bool> wait_token;  // `done` holds a weak_ptr: expired once the wait ended
  size_t next_filter = 0;            // where the chain resumes
  std::string held;                  // DATA received while waiting
};

class Http2Handler final : public Handler {
 public:
  explicit Http2Handler(Connection* conn) : conn_(conn), last_activity_(conn->Now()) {
    tokens_ = conn->ctx().options.stream_open_burst;
    last_refill_ = conn->Now();
    nghttp2_session_callbacks* cb = nullptr;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, &Http2Handler::OnBeginHeaders);
    nghttp2_session_callbacks_set_on_header_callback(cb, &Http2Handler::OnHeader);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, &Http2Handler::OnFrameRecv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, &Http2Handler::OnDataChunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, &Http2Handler::OnStreamClose);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, &Http2Handler::OnFrameSend);
    nghttp2_option* opt = nullptr;
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_session_server_new2(&session_, cb, this, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    const ProxyOptions& o = conn->ctx().options;
    nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, o.h2_max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, o.h2_stream_window},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, static_cast<uint32_t>(o.limits.max_header_bytes)},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, std::size(settings));
    nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0,
                                          static_cast<int32_t>(o.h2_connection_window));
  }
  ~Http2Handler() override {
    if (session_ != nullptr) nghttp2_session_del(session_);
  }

  void OnDownstreamData(absl::string_view data) override {
    retired_.clear();
    last_activity_ = conn_->Now();
    if (dead_) return;
    const ssize_t n = nghttp2_session_mem_recv(
        session_, reinterpret_cast<const uint8_t*>(data.data()), data.size());
    if (n < 0) {
      AMBIT_LOG(kLog, Debug) << "h2 downstream error: " << nghttp2_strerror(static_cast<int>(n));
      dead_ = true;
    }
    Flush();
  }
  void OnDownstreamWritable() override { Flush(); }
  void OnDownstreamEnd() override {
    down_eof_ = true;
    for (auto& [id, s] : streams_) {
      EndWait(s.get(), /*cancel=*/true);
      if (s->ex) {
        s->ex->log.flags = "DC";
        FinishExchange(conn_, *s->ex);
        s->ex.reset();
      }
    }
    conn_->Finish(false);
  }
  absl::Time NextDeadline() override {
    const ProxyOptions& o = conn_->ctx().options;
    if (streams_.empty()) return last_activity_ + o.idle_timeout;
    absl::Time due = absl::InfiniteFuture();
    for (const auto& [id, s] : streams_) {
      due = std::min(due, s->last_activity + o.stream_idle_timeout);
      if (s->ex && !s->response_submitted && o.request_timeout > absl::ZeroDuration()) {
        due = std::min(due, s->ex->log.start + o.request_timeout);
      }
    }
    return due;
  }
  void Tick(absl::Time now) override {
    retired_.clear();
    const ProxyOptions& o = conn_->ctx().options;
    if (streams_.empty()) {
      if (now >= last_activity_ + o.idle_timeout) {
        nghttp2_session_terminate_session(session_, NGHTTP2_NO_ERROR);
        Flush();
        conn_->Finish(false);
      }
      return;
    }
    std::vector<Stream*> late;
    for (auto& [id, s] : streams_) {
      const bool idle = now >= s->last_activity + o.stream_idle_timeout;
      const bool slow = s->ex && !s->response_submitted &&
                        o.request_timeout > absl::ZeroDuration() &&
                        now >= s->ex->log.start + o.request_timeout;
      if (idle || slow) late.push_back(s.get());
      if (slow && s->ex) s->ex->log.flags = "UT";
      if (idle && !slow && s->ex) s->ex->log.flags = "SI";
    }
    for (Stream* s : late) {
      if (!s->response_submitted) {
        const bool slow = s->ex && s->ex->log.flags == "UT";
        LocalReply(s, slow ? 504 : 408, slow ? "upstream request timeout" : "stream timeout",
                   slow ? "request_timeout" : "stream_idle_timeout");
      } else {
        nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
      }
    }
    Flush();
  }
  void Shutdown() override {
    for (auto& [id, s] : streams_) {
      EndWait(s.get(), /*cancel=*/true);
      if (s->up) conn_->Retire(std::move(s->up));
    }
  }

  // Sends what nghttp2 has, while the downstream has room; ends the connection when both sides
  // are done.
  void Flush() {
    if (flushing_) return;
    flushing_ = true;
    while (conn_->downstream().buffered() < kHighWater && nghttp2_session_want_write(session_)) {
      const uint8_t* data = nullptr;
      const ssize_t n = nghttp2_session_mem_send(session_, &data);
      if (n < 0) {
        dead_ = true;
        break;
      }
      if (n == 0) break;
      conn_->downstream().Write(absl::string_view(reinterpret_cast<const char*>(data), n));
    }
    flushing_ = false;
    if (dead_ || (!nghttp2_session_want_read(session_) && !nghttp2_session_want_write(session_))) {
      if (!finishing_) {
        finishing_ = true;
        conn_->Finish(dead_);
      }
    }
  }

  // Stream events.
  void UpstreamData(Stream* s, absl::string_view data) {
    s->last_activity = conn_->Now();
    if (!s->parser) return;
    size_t off = 0;
    while (off < data.size() && s->parser) {
      Http1Parser* p = s->parser.get();
      const size_t n = p->Feed(data.substr(off));
      off += n;
      if (s->parser.get() != p) break;
      if (p->error()) {
        UpstreamFailed(s, "UPE", p->error()->detail, 502);
        break;
      }
      if (p->paused()) {
        if (pending_1xx_.erase(s->id) > 0) {
          p->Resume();
          continue;
        }
        break;
      }
      if (n == 0) break;
    }
    if (s->body.size() - s->body_pos > kResponseBuffer && s->up) s->up->SetReadEnabled(false);
    Flush();
  }
  void UpstreamWritable(Stream* s) {
    if (s->unconsumed > 0) {
      nghttp2_session_consume(session_, s->id, s->unconsumed);
      s->unconsumed = 0;
    }
    Flush();
  }
  void UpstreamEnd(Stream* s) {
    if (s->parser) {
      Http1Parser* p = s->parser.get();
      p->FeedEof();
      if (s->parser.get() == p && p->error() && !s->response_done) {
        UpstreamFailed(s, "UC", "upstream closed early", 503);
      }
    }
    Flush();
  }
  void UpstreamError(Stream* s, const absl::Status& st) {
    if (!s->response_done) {
      UpstreamFailed(s, st.message().find("connect") != absl::string_view::npos ? "UF" : "UR",
                     std::string(st.message()), 503);
    }
    Flush();
  }
  void ResponseHead(Stream* s, MessageHead head) {
    if (head.status >= 100 && head.status < 200) {
      pending_1xx_.insert(s->id);
      return;
    }
    s->ex->log.status = head.status;
    std::vector<std::pair<std::string, std::string>> hs;
    hs.emplace_back(":status", absl::StrCat(head.status));
    for (auto& [k, v] : head.headers) {
      if (IsHopByHop(k) && k != "content-length") continue;
      if (k == "content-length" && (head.chunked || s->method == "HEAD")) continue;
      hs.emplace_back(k, v);
    }
    ApplyHeaderEdits(s->ex->ctx.downstream_header_edits, hs);
    const bool no_body = s->method == "HEAD" || head.status == 204 || head.status == 304;
    SubmitResponse(s, hs, no_body);
  }
  void ResponseBody(Stream* s, absl::string_view data) {
    if (s->ex) s->ex->log.bytes_sent += data.size();
    s->body.append(data.data(), data.size());
    nghttp2_session_resume_data(session_, s->id);
  }
  void ResponseComplete(Stream* s) {
    if (pending_1xx_.count(s->id) > 0) return;
    s->response_done = true;
    if (s->parser) retired_parsers_.push_back(std::move(s->parser));
    // The exchange is complete: the stream's upstream connection ends with a FIN.
    if (s->up) conn_->Retire(std::move(s->up), /*abort=*/false);
    nghttp2_session_resume_data(session_, s->id);
  }

 private:
  static Http2Handler* Self(void* p) { return static_cast<Http2Handler*>(p); }

  Stream* Find(int32_t id) {
    auto it = streams_.find(id);
    return it == streams_.end() ? nullptr : it->second.get();
  }

  bool TakeToken() {
    const ProxyOptions& o = conn_->ctx().options;
    const absl::Time now = conn_->Now();
    tokens_ =
        std::min<double>(o.stream_open_burst,
                         tokens_ + absl::ToDoubleSeconds(now - last_refill_) * o.stream_open_rate);
    last_refill_ = now;
    if (tokens_ < 1) return false;
    tokens_ -= 1;
    return true;
  }

  static int OnBeginHeaders(nghttp2_session* session, const nghttp2_frame* frame, void* user) {
    Http2Handler* self = Self(user);
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    if (!self->TakeToken()) {
      // Rapid reset (or a flood of streams that never complete): stop the connection.
      AMBIT_LOG(kLog, Warning) << "h2 client " << self->conn_->downstream().Describe()
                               << " opens streams faster than they complete; GOAWAY";
      nghttp2_session_terminate_session(session, NGHTTP2_ENHANCE_YOUR_CALM);
      return 0;
    }
    auto s = std::make_unique<Stream>(self, frame->hd.stream_id);
    s->last_activity = self->conn_->Now();
    self->streams_[frame->hd.stream_id] = std::move(s);
    return 0;
  }

  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                      size_t namelen, const uint8_t* value, size_t valuelen, uint8_t, void* user) {
    Http2Handler* self = Self(user);
    Stream* s = self->Find(frame->hd.stream_id);
    if (s == nullptr || s->ex) return 0;  // trailers are not forwarded
    const Http1Limits& lim = self->conn_->ctx().options.limits;
    s->header_bytes += namelen + valuelen;
    if (s->header_bytes > lim.max_header_bytes || ++s->header_count > lim.max_headers) {
      s->too_large = true;
      return 0;
    }
    std::string n(reinterpret_cast<const char*>(name), namelen);
    std::string v(reinterpret_cast<const char*>(value), valuelen);
    if (n == ":method") {
      s->method = std::move(v);
    } else if (n == ":path") {
      s->path = std::move(v);
    } else if (n == ":authority") {
      s->authority = std::move(v);
    } else if (n == ":scheme") {
      s->scheme = std::move(v);
    } else if (!n.empty() && n[0] != ':') {
      if (n == "host" && s->authority.empty()) s->authority = v;
      s->headers.emplace_back(std::move(n), std::move(v));
    }
    return 0;
  }

  static int OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* user) {
    Http2Handler* self = Self(user);
    Stream* s = self->Find(frame->hd.stream_id);
    if (s == nullptr) return 0;
    s->last_activity = self->conn_->Now();
    const bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (frame->hd.type == NGHTTP2_HEADERS && !s->ex) {
      if (end) s->request_ended = s->no_body = true;
      self->OnRequest(s);
    } else if (end) {
      s->request_ended = true;
      if (s->waiting == Stream::Wait::kBody) {
        self->MaybeBodyCollected(s);
      } else if (s->up && s->chunked) {
        s->up->Write(EncodeChunk(""));
      }
    }
    return 0;
  }

  static int OnFrameSend(nghttp2_session* session, const nghttp2_frame* frame, void* user) {
    Http2Handler* self = Self(user);
    if ((frame->hd.type != NGHTTP2_DATA && frame->hd.type != NGHTTP2_HEADERS) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
      return 0;
    }
    Stream* s = self->Find(frame->hd.stream_id);
    if (s != nullptr && !s->request_ended) {
      nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
    }
    return 0;
  }

  static int OnDataChunk(nghttp2_session* session, uint8_t, int32_t id, const uint8_t* data,
                         size_t len, void* user) {
    Http2Handler* self = Self(user);
    Stream* s = self->Find(id);
    if (s != nullptr && s->ex && s->waiting != Stream::Wait::kNone) {
      self->HoldData(s, absl::string_view(reinterpret_cast<const char*>(data), len));
      return 0;
    }
    if (s == nullptr || !s->ex || !s->ex->forwarded || !s->up) {
      // Nobody wants these bytes: acknowledge them so the connection window does not shrink.
      nghttp2_session_consume(session, id, len);
      return 0;
    }
    s->last_activity = self->conn_->Now();
    s->ex->log.bytes_received += len;
    absl::string_view d(reinterpret_cast<const char*>(data), len);
    s->up->Write(s->chunked ? EncodeChunk(d) : std::string(d));
    if (s->up->buffered() > kHighWater) {
      s->unconsumed += len;  // acknowledged on the upstream's OnWritable
    } else {
      nghttp2_session_consume(session, id, len);
    }
    return 0;
  }

  static int OnStreamClose(nghttp2_session*, int32_t id, uint32_t error_code, void* user) {
    Http2Handler* self = Self(user);
    auto it = self->streams_.find(id);
    if (it == self->streams_.end()) return 0;
    std::unique_ptr<Stream> s = std::move(it->second);
    self->streams_.erase(it);
    self->pending_1xx_.erase(id);
    self->EndWait(s.get(), /*cancel=*/true);
    // Bytes held back from the window are the connection's to give back; nghttp2 still knows
    // the stream inside this callback.
    if (s->unconsumed > 0) {
      nghttp2_session_consume(self->session_, id, s->unconsumed);
      s->unconsumed = 0;
    }
    // The connection idle timeout counts from the moment no stream is left.
    if (self->streams_.empty()) self->last_activity_ = self->conn_->Now();
    if (s->response_sent) {
      self->tokens_ += 1;  // a stream answered in full costs nothing
    }
    if (s->ex) {
      if (!s->response_sent && s->ex->log.flags.empty()) {
        s->ex->log.flags = error_code == NGHTTP2_NO_ERROR ? "DC" : "DR";
      }
      FinishExchange(self->conn_, *s->ex);
      s->ex.reset();
    }
    if (s->up) self->conn_->Retire(std::move(s->up));
    if (s->parser) self->retired_parsers_.push_back(std::move(s->parser));
    // The stream may be inside one of its own callbacks: freed at the next event.
    self->retired_.push_back(std::move(s));
    return 0;
  }

  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                          nghttp2_data_source* source, void* user) {
    Http2Handler* self = Self(user);
    Stream* s = static_cast<Stream*>(source->ptr);
    const size_t avail = s->body.size() - s->body_pos;
    if (avail == 0) {
      if (!s->response_done) return NGHTTP2_ERR_DEFERRED;
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      s->response_sent = true;
      return 0;
    }
    const size_t n = std::min(avail, length);
    memcpy(buf, s->body.data() + s->body_pos, n);
    s->body_pos += n;
    if (s->body_pos == s->body.size()) {
      s->body.clear();
      s->body_pos = 0;
      if (s->response_done) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        s->response_sent = true;
      }
    }
    // Room again: let the upstream send more.
    if (s->up && s->body.size() - s->body_pos < kResponseBuffer / 2) s->up->SetReadEnabled(true);
    (void)self;
    return static_cast<ssize_t>(n);
  }

  void SubmitResponse(Stream* s, const std::vector<std::pair<std::string, std::string>>& hs,
                      bool no_body) {
    std::vector<nghttp2_nv> nv;
    nv.reserve(hs.size());
    for (const auto& [k, v] : hs) {
      nv.push_back({reinterpret_cast<uint8_t*>(const_cast<char*>(k.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(v.data())), k.size(), v.size(),
                    NGHTTP2_NV_FLAG_NONE});
    }
    size_t head_bytes = 0;
    for (const auto& [k, v] : hs) head_bytes += k.size() + v.size();
    if (s->ex) s->ex->log.bytes_sent += head_bytes;
    s->response_submitted = true;
    if (no_body) {
      s->response_sent = true;
      s->response_done = true;
      nghttp2_submit_response(session_, s->id, nv.data(), nv.size(), nullptr);
      return;
    }
    nghttp2_data_provider provider;
    provider.source.ptr = s;
    provider.read_callback = &Http2Handler::ReadBody;
    nghttp2_submit_response(session_, s->id, nv.data(), nv.size(), &provider);
  }

  void LocalReply(Stream* s, int status, const std::string& body, const std::string& details,
                  const HeaderList& extra = {}) {
    EndWait(s, /*cancel=*/true);
    // The request body is not wanted any more: what was held back is acknowledged.
    s->held.clear();
    if (s->unconsumed > 0) {
      nghttp2_session_consume(session_, s->id, s->unconsumed);
      s->unconsumed = 0;
    }
    if (s->ex) {
      s->ex->log.status = status;
      if (!details.empty()) s->ex->log.details = details;
      s->ex->log.bytes_sent += body.size();
      s->ex->forwarded = false;
    }
    if (s->up) conn_->Retire(std::move(s->up));
    if (s->parser) retired_parsers_.push_back(std::move(s->parser));
    std::vector<std::pair<std::string, std::string>> hs = {
        {":status", absl::StrCat(status)},
        {"content-type", "text/plain"},
        {"content-length", absl::StrCat(body.size())}};
    for (const auto& kv : extra) hs.push_back(kv);
    s->body = body;
    s->body_pos = 0;
    s->response_done = true;
    SubmitResponse(s, hs, false);
    // The request body, if any, is not wanted: once the answer is out the stream is reset with
    // NO_ERROR (OnFrameSend), as RFC 9113 8.1 allows; resetting now could overtake the answer.
  }

  void UpstreamFailed(Stream* s, const char* flags, const std::string& why, int status) {
    AMBIT_LOG(kLog, Debug) << "h2 stream " << s->id << " upstream: " << why;
    if (s->ex) s->ex->log.flags = flags;
    if (!s->response_submitted) {
      LocalReply(s, status,
                 status == 502 ? "upstream sent an invalid response"
                               : "upstream connect error or disconnect/reset before headers",
                 status == 502 ? "upstream_protocol_error" : "upstream_reset");
      return;
    }
    if (s->up) conn_->Retire(std::move(s->up));
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
  }

  void OnRequest(Stream* s) {
    s->ex = NewExchange(conn_, "HTTP/2", s->method, s->path, s->authority, s->headers);
    for (const auto& [k, v] : s->headers) s->ex->log.bytes_received += k.size() + v.size();
    if (s->too_large) {
      s->ex->log.flags = "DPE";
      return LocalReply(s, 431, std::string(ReasonPhrase(431)), "request_headers_too_large");
    }
    if (s->method == "CONNECT") {
      return LocalReply(s, 405, std::string(ReasonPhrase(405)), "connect_not_supported");
    }
    if (s->path.empty() || s->authority.empty()) {
      s->ex->log.flags = "DPE";
      return LocalReply(s, 400, std::string(ReasonPhrase(400)), "missing_path_or_authority");
    }
    s->next_filter = 0;
    OnFilterResult(s, RunFilters(conn_->ctx().filters, s->ex->ctx, &s->next_filter));
  }

  // What the chain (or the rest of it, after a wait) decided for the stream's request.
  void OnFilterResult(Stream* s, FilterResult r) {
    if (r.pending) return BeginWait(s, std::move(r.pending));
    if (!r.proceed) {
      return LocalReply(s, r.reply.status, r.reply.body, s->ex->ctx.details, r.reply.headers);
    }
    Forward(s);
  }

  void BeginWait(Stream* s, std::shared_ptr<Pending> pending) {
    s->pending = std::move(pending);
    if (!s->pending->body || s->no_body) return StartCheck(s);
    s->waiting = Stream::Wait::kBody;
    const BodyWanted& want = *s->pending->body;
    if (!want.allow_partial) {
      for (const auto& [k, v] : s->headers) {
        uint64_t n = 0;
        if (k == "content-length" && absl::SimpleAtoi(v, &n) && n > want.max_bytes) {
          return PayloadTooLarge(s);  // known now: the client need not send it
        }
      }
    }
    MaybeBodyCollected(s);
  }

  // DATA for a stream whose filter waits. While the body is collected, bytes up to what the
  // filter wants (max_bytes and one beyond, which says the body was cut) are acknowledged so the
  // client can send them; the rest stays unacknowledged, bounded by the stream window, until the
  // request goes upstream or is answered.
  void HoldData(Stream* s, absl::string_view data) {
    s->last_activity = conn_->Now();
    s->ex->log.bytes_received += data.size();
    size_t accept = 0;
    if (s->waiting == Stream::Wait::kBody) {
      const size_t want = static_cast<size_t>(s->pending->body->max_bytes) + 1;
      if (s->held.size() < want) accept = std::min(data.size(), want - s->held.size());
    }
    s->held.append(data.data(), data.size());
    if (accept > 0) nghttp2_session_consume(session_, s->id, accept);
    s->unconsumed += data.size() - accept;
    if (s->waiting == Stream::Wait::kBody) MaybeBodyCollected(s);
  }

  void MaybeBodyCollected(Stream* s) {
    const BodyWanted& want = *s->pending->body;
    if (!s->request_ended && s->held.size() <= want.max_bytes) return;
    if (s->held.size() > want.max_bytes && !want.allow_partial) return PayloadTooLarge(s);
    s->ex->ctx.body = s->held.substr(0, want.max_bytes);
    s->ex->ctx.body_truncated = s->held.size() > want.max_bytes || !s->request_ended;
    StartCheck(s);
  }

  // Envoy's ext_authz with_request_body without allow_partial_message: 413, no check.
  void PayloadTooLarge(Stream* s) {
    LocalReply(s, 413, std::string(ReasonPhrase(413)), "request_payload_too_large");
  }

  void StartCheck(Stream* s) {
    s->waiting = Stream::Wait::kCheck;
    if (!s->pending->start) {
      // A filter that waits for nothing cannot decide: fail closed.
      s->ex->ctx.details = "filter_without_check";
      return OnFilterResult(s, FilterResult::Respond(403, "RBAC: access denied"));
    }
    s->wait_token = std::make_shared<bool>(true);
    std::weak_ptr<bool> guard = s->wait_token;
    s->check = s->pending->start(s->ex->ctx, [this, s, guard](FilterResult r) {
      // The token dies with the wait (cancel, a local answer, the stream's end), so a late
      // answer finds it gone and neither the stream nor this handler is touched after that.
      if (guard.expired()) return;
      OnCheckDone(s, std::move(r));
    });
  }

  void OnCheckDone(Stream* s, FilterResult r) {
    EndWait(s, /*cancel=*/false);
    if (r.proceed && !r.pending) {
      r = RunFilters(conn_->ctx().filters, s->ex->ctx, &s->next_filter);
    }
    OnFilterResult(s, std::move(r));
    // Outside any downstream event: send what the answer produced, and let the connection see
    // the new deadlines.
    Flush();
    conn_->Rearm();
  }

  // Ends the stream's wait, if any. Cancelling destroys the check at once (no `done` after
  // that); an answered check may be on the stack of its own `done`, so it goes after this batch
  // of events.
  void EndWait(Stream* s, bool cancel) {
    if (s->waiting == Stream::Wait::kNone) return;
    s->waiting = Stream::Wait::kNone;
    s->wait_token.reset();
    s->pending.reset();
    if (cancel) {
      s->check.reset();
    } else if (s->check) {
      conn_->ctx().loop->Defer([c = std::shared_ptr<AsyncCheck>(std::move(s->check))] {});
    }
  }

  void Forward(Stream* s) {
    s->ex->forwarded = true;
    HeaderList out;
    out.emplace_back("host", s->authority);
    std::optional<uint64_t> content_length;
    for (const auto& [k, v] : s->headers) {
      if (k == "host") continue;
      if (k == "content-length") {
        uint64_t n = 0;
        if (!absl::SimpleAtoi(v, &n)) {
          return LocalReply(s, 400, std::string(ReasonPhrase(400)), "invalid_content_length");
        }
        content_length = n;
        continue;
      }
      if (IsHopByHop(k)) continue;
      out.emplace_back(k, v);
    }
    ApplyHeaderEdits(s->ex->ctx.upstream_header_edits, out);
    if (s->no_body) {
      if (content_length.value_or(0) > 0) {
        return LocalReply(s, 400, std::string(ReasonPhrase(400)), "content_length_mismatch");
      }
      if (s->method == "POST" || s->method == "PUT" || s->method == "PATCH") {
        out.emplace_back("content-length", "0");
      }
    } else if (content_length) {
      out.emplace_back("content-length", absl::StrCat(*content_length));
    } else {
      s->chunked = true;
      out.emplace_back("transfer-encoding", "chunked");
    }
    s->parser =
        std::make_unique<Http1Parser>(Http1Parser::Kind::kResponse, s, conn_->ctx().options.limits);
    if (s->method == "HEAD") s->parser->ExpectNoBody();
    s->up = conn_->ctx().upstream->Connect(s);
    s->up->Write(SerializeRequestHead(s->method, s->path, out));
    // The body that arrived while a filter waited, then the rest as it comes (OnDataChunk).
    if (!s->held.empty()) {
      s->up->Write(s->chunked ? EncodeChunk(s->held) : s->held);
      s->held.clear();
    }
    if (s->request_ended && !s->no_body && s->chunked) s->up->Write(EncodeChunk(""));
    if (s->unconsumed > 0 && s->up->buffered() <= kHighWater) {
      nghttp2_session_consume(session_, s->id, s->unconsumed);
      s->unconsumed = 0;
    }
  }

  Connection* conn_;
  nghttp2_session* session_ = nullptr;
  std::map<int32_t, std::unique_ptr<Stream>> streams_;
  std::set<int32_t> pending_1xx_;
  std::vector<std::unique_ptr<Stream>> retired_;
  std::vector<std::unique_ptr<Http1Parser>> retired_parsers_;
  absl::Time last_activity_;
  double tokens_ = 0;
  absl::Time last_refill_;
  bool flushing_ = false;
  bool finishing_ = false;
  bool dead_ = false;
  bool down_eof_ = false;
};

void Stream::OnData(absl::string_view data) { h->UpstreamData(this, data); }
void Stream::OnWritable() { h->UpstreamWritable(this); }
void Stream::OnEnd() { h->UpstreamEnd(this); }
void Stream::OnError(const absl::Status& s) { h->UpstreamError(this, s); }
void Stream::OnHead(MessageHead head) { h->ResponseHead(this, std::move(head)); }
void Stream::OnBody(absl::string_view data) { h->ResponseBody(this, data); }
void Stream::OnMessageComplete() { h->ResponseComplete(this); }

}  // namespace

std::unique_ptr<Handler> NewHttp2Handler(Connection* conn) {
  return std::make_unique<Http2Handler>(conn);
}

}  // namespace ambit::waypoint::internal
