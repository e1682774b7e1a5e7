// The HTTP/1.x side of ProxyConnection: one request at a time (pipelined requests wait in the
// input buffer, bounded, until the previous response is done), one reused upstream connection.
//
// A filter that waits (FilterResult::Wait) holds the current request: nothing goes upstream, the
// body the filter asked for is collected into its context, and the parser is fed no further than
// that (plus what arrived with the head), so the input buffer's bound stops reading from the
// client. The check's answer resumes the chain where it stopped.

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/common/log.h"
#include "agent/waypoint/proxy_internal.h"

namespace ambit::waypoint::internal {
namespace {

constexpr const char* kLog = "waypoint";

// Header names listed in a Connection header are hop-by-hop too (RFC 9110 7.6.1).
bool NamedInConnection(const MessageHead& head, absl::string_view name) {
  for (const auto& [k, v] : head.headers) {
    if (k != "connection") continue;
    for (absl::string_view token : absl::StrSplit(v, ',')) {
      if (absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(token), name)) return true;
    }
  }
  return false;
}

class Http1Handler final : public Handler, public Http1Sink {
 public:
  explicit Http1Handler(Connection* conn)
      : conn_(conn),
        parser_(Http1Parser::Kind::kRequest, this, conn->ctx().options.limits),
        last_activity_(conn->Now()),
        head_started_at_(conn->Now()),
        response_sink_(this),
        upstream_observer_(this) {}

  void OnDownstreamData(absl::string_view data) override {
    retired_parsers_.clear();
    last_activity_ = conn_->Now();
    if (closing_) return;  // draining a connection we are closing
    if (tunnel_) {
      if (up_) up_->Write(data);
      CheckUpstreamPressure();
      return;
    }
    if (in_.empty() && !parser_.head_started() && !ex_) head_started_at_ = conn_->Now();
    in_.append(data.data(), data.size());
    Process();
  }

  void OnDownstreamWritable() override {
    if (up_) up_->SetReadEnabled(true);
  }

  void OnDownstreamEnd() override {
    downstream_eof_ = true;
    if (tunnel_) {
      if (up_) up_->ShutdownWrite();
      return MaybeFinishTunnel();
    }
    if (closing_) return conn_->Finish(false);
    if (!ex_) {
      if (!in_.empty() || parser_.head_started()) {
        // A request cut short: nothing to answer to.
        AMBIT_LOG(kLog, Debug) << "downstream closed mid-request";
      }
      return conn_->Finish(false);
    }
    if (!request_complete_ || waiting_ != Wait::kNone) {
      // Also a complete request whose check is still out: nothing went upstream yet, and the
      // client that would read the answer has left (Envoy resets the stream on a downstream
      // close).
      ex_->log.flags = "DC";
      FinishExchangeNow();
      return conn_->Finish(true);
    }
    // The request is complete: the response is still delivered, then the connection closes.
    close_after_ = true;
  }

  absl::Time NextDeadline() override {
    const ProxyOptions& o = conn_->ctx().options;
    if (closing_) return close_deadline_;
    if (tunnel_) return last_activity_ + o.idle_timeout;
    if (ex_ || parser_.head_started() || !in_.empty()) {
      absl::Time due = last_activity_ + o.stream_idle_timeout;
      if (!ex_ && o.request_headers_timeout > absl::ZeroDuration()) {
        due = std::min(due, head_started_at_ + o.request_headers_timeout);
      }
      if (ex_ && !response_started_ && o.request_timeout > absl::ZeroDuration()) {
        due = std::min(due, ex_->log.start + o.request_timeout);
      }
      return due;
    }
    return last_activity_ + o.idle_timeout;
  }

  void Tick(absl::Time now) override {
    retired_parsers_.clear();
    const ProxyOptions& o = conn_->ctx().options;
    if (closing_) {
      if (now < close_deadline_) return;
      // A slow reader still gets its last response, within the stream idle timeout.
      if (conn_->downstream().buffered() > 0 && now < last_activity_ + o.stream_idle_timeout) {
        close_deadline_ = now + absl::Seconds(1);
        return;
      }
      conn_->Finish(false);
      return;
    }
    if (tunnel_) {
      if (now >= last_activity_ + o.idle_timeout) conn_->Finish(false);
      return;
    }
    if (!ex_ && in_.empty() && !parser_.head_started()) {
      if (now >= last_activity_ + o.idle_timeout) {
        AMBIT_LOG(kLog, Debug) << "closing idle downstream connection";
        conn_->Finish(false);
      }
      return;
    }
    const bool idle = now >= last_activity_ + o.stream_idle_timeout;
    const bool headers_late = !ex_ && o.request_headers_timeout > absl::ZeroDuration() &&
                              now >= head_started_at_ + o.request_headers_timeout;
    const bool request_late = ex_ && !response_started_ &&
                              o.request_timeout > absl::ZeroDuration() &&
                              now >= ex_->log.start + o.request_timeout;
    if (!idle && !headers_late && !request_late) return;
    if (!ex_) {
      // The head never completed: answer it anyway so the client learns why.
      ex_ = NewExchange(conn_, "HTTP/1.1", "", "", "", {});
      ex_->log.start = head_started_at_;
      response_started_ = false;
    }
    const char* flags = request_late ? "UT" : "SI";
    if (response_started_) {
      ex_->log.flags = flags;
      FinishExchangeNow();
      return conn_->Finish(true);
    }
    ex_->log.flags = flags;
    const int status = request_late ? 504 : 408;
    LocalReply(status, request_late ? "upstream request timeout" : "stream timeout",
               request_late ? "request_timeout" : "stream_idle_timeout", /*close=*/true);
  }

  void Shutdown() override {
    EndWait(/*cancel=*/true);
    // Between exchanges the upstream connection is idle: closed with a FIN, not a reset.
    if (up_) conn_->Retire(std::move(up_), /*abort=*/ex_ != nullptr);
  }

  // Http1Sink (requests)
  void OnHead(MessageHead head) override {
    request_bytes_head_ = head.target.size() + head.method.size() + 12;
    for (const auto& [k, v] : head.headers) request_bytes_head_ += k.size() + v.size() + 4;
    const std::string* host = head.Find("host");
    ex_ = NewExchange(conn_, head.http_minor == 0 ? "HTTP/1.0" : "HTTP/1.1", head.method,
                      head.target, host != nullptr ? *host : "", head.headers);
    ex_->log.bytes_received = request_bytes_head_;
    request_complete_ = false;
    response_started_ = false;
    req_ = std::move(head);
    // Upgrade to h2c is not offered (prior knowledge is); any other Upgrade passes through.
    if (req_.upgrade) {
      const std::string* up = req_.Find("upgrade");
      if (up == nullptr || absl::StrContains(absl::AsciiStrToLower(*up), "h2c"))
        req_.upgrade = false;
    }
    next_filter_ = 0;
    continue_sent_ = false;
    held_.clear();
    OnFilterResult(RunFilters(conn_->ctx().filters, ex_->ctx, &next_filter_));
  }

  void OnBody(absl::string_view data) override {
    if (!ex_) return;
    ex_->log.bytes_received += data.size();
    if (waiting_ != Wait::kNone) {
      // Held until the check answers; bounded by how far Process feeds the parser.
      held_.append(data.data(), data.size());
      if (waiting_ == Wait::kBody) MaybeBodyCollected();
      return;
    }
    if (!ex_->forwarded || !up_) return;  // a local answer: the body is dropped
    up_->Write(req_.chunked ? EncodeChunk(data) : std::string(data));
  }

  void OnMessageComplete() override {
    request_complete_ = true;
    if (waiting_ != Wait::kNone) {
      if (waiting_ == Wait::kBody) MaybeBodyCollected();
      return;
    }
    if (ex_ && ex_->forwarded && up_ && req_.chunked) up_->Write(EncodeChunk(""));
    if (ex_ && response_complete_) DoneExchange();
  }

 private:
  // Upstream response parsing.
  class ResponseSink final : public Http1Sink {
   public:
    explicit ResponseSink(Http1Handler* h) : h_(h) {}
    void OnHead(MessageHead head) override { h_->OnResponseHead(std::move(head)); }
    void OnBody(absl::string_view data) override { h_->OnResponseBody(data); }
    void OnMessageComplete() override { h_->OnResponseComplete(); }

   private:
    Http1Handler* h_;
  };
  class UpstreamObserver final : public ByteStream::Observer {
   public:
    explicit UpstreamObserver(Http1Handler* h) : h_(h) {}
    void OnData(absl::string_view data) override { h_->OnUpstreamData(data); }
    void OnWritable() override { h_->OnUpstreamWritable(); }
    void OnEnd() override { h_->OnUpstreamEnd(); }
    void OnError(const absl::Status& s) override { h_->OnUpstreamError(s); }

   private:
    Http1Handler* h_;
  };

  void Process() {
    while (!in_.empty() && !closing_ && !tunnel_) {
      if (parser_.paused()) {
        if (ex_) break;  // the current exchange is not done yet
        parser_.Resume();
      }
      // While a check is out nothing more is parsed; while its body is collected, no more than
      // it still needs (so the rest waits in in_, whose bound stops reading).
      size_t budget = in_.size();
      if (waiting_ == Wait::kCheck) break;
      if (waiting_ == Wait::kBody) {
        const size_t want = static_cast<size_t>(pending_->body->max_bytes) + 1;
        if (held_.size() >= want) break;
        budget = std::min(budget, want - held_.size());
      }
      in_feed_ = true;
      const size_t n = parser_.Feed(absl::string_view(in_).substr(0, budget));
      in_feed_ = false;
      in_.erase(0, n);
      if (parser_.error()) {
        const HttpError err = *parser_.error();
        if (!ex_) {
          ex_ = NewExchange(conn_, "HTTP/1.1", "", "", "", {});
          ex_->log.start = head_started_at_;
          ex_->log.bytes_received = n;
          response_started_ = false;
        }
        if (response_started_) {
          ex_->log.flags = "DPE";
          FinishExchangeNow();
          return conn_->Finish(true);
        }
        ex_->log.flags = "DPE";
        LocalReply(err.status, std::string(ReasonPhrase(err.status)), err.detail, true);
        return;
      }
      if (parser_.upgraded()) break;
      if (n == 0 && !parser_.paused()) break;
    }
    // Pipelined bytes wait here; beyond one head's worth the client must wait for us.
    const bool too_much = in_.size() > conn_->ctx().options.limits.max_header_bytes + (64 << 10);
    conn_->downstream().SetReadEnabled(!too_much && !UpstreamFull());
  }

  bool UpstreamFull() const { return up_ && up_->buffered() > kHighWater; }

  void CheckUpstreamPressure() { conn_->downstream().SetReadEnabled(!UpstreamFull()); }

  // What the chain (or the rest of it, after a wait) decided for the current request.
  void OnFilterResult(FilterResult r) {
    if (r.pending) return BeginWait(std::move(r.pending));
    if (!r.proceed) {
      ex_->log.details = ex_->ctx.details;
      // With the body still to come (or held back by Expect), the connection cannot be reused.
      const bool body_pending =
          !request_complete_ && (req_.chunked || req_.content_length.value_or(0) > 0);
      LocalReply(r.reply.status, r.reply.body, "", body_pending || !req_.keep_alive,
                 r.reply.headers);
      return;
    }
    Forward();
  }

  void BeginWait(std::shared_ptr<Pending> pending) {
    pending_ = std::move(pending);
    const bool has_body = req_.chunked || req_.content_length.value_or(0) > 0;
    if (!pending_->body || !has_body) return StartCheck();
    waiting_ = Wait::kBody;
    const BodyWanted& want = *pending_->body;
    if (!want.allow_partial && req_.content_length.value_or(0) > want.max_bytes) {
      return PayloadTooLarge();  // known now: the client need not send it
    }
    // The body is wanted before any decision, so the client may send it (RFC 9110 10.1.1).
    if (req_.expect_continue && req_.http_minor >= 1 && !request_complete_ && !continue_sent_) {
      continue_sent_ = true;
      conn_->downstream().Write("HTTP/1.1 100 Continue\r\n\r\n");
    }
    MaybeBodyCollected();
  }

  // The check starts once the body it wants is in: all of it, or (allow_partial) max_bytes and
  // at least one byte beyond, which is what says the body was cut.
  void MaybeBodyCollected() {
    const BodyWanted& want = *pending_->body;
    if (!request_complete_ && held_.size() <= want.max_bytes) return;
    if (held_.size() > want.max_bytes && !want.allow_partial) return PayloadTooLarge();
    ex_->ctx.body = held_.substr(0, want.max_bytes);
    ex_->ctx.body_truncated = held_.size() > want.max_bytes || !request_complete_;
    StartCheck();
  }

  // Envoy's ext_authz with_request_body without allow_partial_message: 413, no check.
  void PayloadTooLarge() {
    LocalReply(413, std::string(ReasonPhrase(413)), "request_payload_too_large",
               !request_complete_ || !req_.keep_alive);
  }

  void StartCheck() {
    waiting_ = Wait::kCheck;
    if (!pending_->start) {
      // A filter that waits for nothing cannot decide: fail closed.
      ex_->ctx.details = "filter_without_check";
      return OnFilterResult(FilterResult::Respond(403, "RBAC: access denied"));
    }
    wait_token_ = std::make_shared<bool>(true);
    std::weak_ptr<bool> guard = wait_token_;
    check_ = pending_->start(ex_->ctx, [this, guard](FilterResult r) {
      // The token dies with the wait (cancel, a local answer, the connection's end), so a late
      // answer finds it gone and `this` is never touched after that.
      if (guard.expired()) return;
      OnCheckDone(std::move(r));
    });
  }

  void OnCheckDone(FilterResult r) {
    EndWait(/*cancel=*/false);
    if (r.proceed && !r.pending) r = RunFilters(conn_->ctx().filters, ex_->ctx, &next_filter_);
    OnFilterResult(std::move(r));
    // Outside any downstream event: parse what waited, and let the connection see the new
    // deadlines (a forwarded request is now bounded by the upstream's).
    if (!closing_ && !tunnel_) Process();
    conn_->Rearm();
  }

  // Ends the current wait, if any. Cancelling destroys the check at once (no `done` after
  // that); an answered check may be on the stack of its own `done`, so it goes after this
  // batch of events.
  void EndWait(bool cancel) {
    if (waiting_ == Wait::kNone) return;
    waiting_ = Wait::kNone;
    wait_token_.reset();
    pending_.reset();
    if (cancel) {
      check_.reset();
      held_.clear();
    } else if (check_) {
      conn_->ctx().loop->Defer([c = std::shared_ptr<AsyncCheck>(std::move(check_))] {});
    }
  }

  void Forward() {
    ex_->forwarded = true;
    if (up_ && up_broken_) conn_->Retire(std::move(up_));
    if (!up_) {
      up_broken_ = false;
      up_ = conn_->ctx().upstream->Connect(&upstream_observer_);
    }
    up_parser_ = std::make_unique<Http1Parser>(Http1Parser::Kind::kResponse, &response_sink_,
                                               conn_->ctx().options.limits);
    if (req_.method == "HEAD") up_parser_->ExpectNoBody();
    response_complete_ = false;
    HeaderList out;
    for (const auto& [k, v] : req_.headers) {
      if (IsHopByHop(k) || NamedInConnection(req_, k)) continue;
      out.emplace_back(k, v);
    }
    ApplyHeaderEdits(ex_->ctx.upstream_header_edits, out);
    // HTTP/1.0 may omit Host; the request goes upstream as HTTP/1.1, which requires one.
    if (req_.Find("host") == nullptr) {
      out.emplace_back("host", conn_->ctx().upstream->Describe());
    }
    if (req_.chunked) {
      out.emplace_back("transfer-encoding", "chunked");
    } else if (req_.content_length) {
      out.emplace_back("content-length", absl::StrCat(*req_.content_length));
    }
    if (req_.upgrade) {
      out.emplace_back("connection", "upgrade");
      out.emplace_back("upgrade", *req_.Find("upgrade"));
    }
    up_->Write(SerializeRequestHead(req_.method, req_.target, out));
    // The waypoint answers 100-continue itself once the request is allowed (the upstream never
    // sees Expect), so a denied client never sends its body.
    if (req_.expect_continue && req_.http_minor >= 1 && !continue_sent_) {
      continue_sent_ = true;
      conn_->downstream().Write("HTTP/1.1 100 Continue\r\n\r\n");
    }
    // The body that arrived while a filter waited, then the rest as it comes (OnBody).
    if (!held_.empty()) {
      up_->Write(req_.chunked ? EncodeChunk(held_) : held_);
      held_.clear();
    }
    if (request_complete_ && req_.chunked) up_->Write(EncodeChunk(""));
  }

  void OnUpstreamData(absl::string_view data) {
    retired_parsers_.clear();
    last_activity_ = conn_->Now();
    if (tunnel_) {
      conn_->downstream().Write(data);
      if (conn_->downstream().buffered() > kHighWater && up_) up_->SetReadEnabled(false);
      return;
    }
    if (!ex_ || !up_parser_) {
      // Bytes from an idle upstream: it is out of step; drop it.
      up_broken_ = true;
      if (up_) conn_->Retire(std::move(up_));
      return;
    }
    size_t off = 0;
    while (off < data.size() && up_parser_) {
      Http1Parser* p = up_parser_.get();
      const size_t n = p->Feed(data.substr(off));
      off += n;
      if (up_parser_.get() != p) return;  // the exchange ended inside the parser's callbacks
      if (p->error()) return UpstreamProtocolError(p->error()->detail);
      if (tunnel_) {
        // 101: the rest is the upgraded protocol.
        conn_->downstream().Write(data.substr(off));
        return;
      }
      if (up_parser_->paused()) {
        if (pending_1xx_) {
          pending_1xx_ = false;
          up_parser_->Resume();
          continue;
        }
        break;  // response done; anything further is unsolicited
      }
      if (n == 0) break;
    }
    if (conn_->downstream().buffered() > kHighWater && up_) up_->SetReadEnabled(false);
  }

  void OnUpstreamWritable() {
    if (!closing_) conn_->downstream().SetReadEnabled(true);
  }

  void OnUpstreamEnd() {
    if (tunnel_) {
      upstream_eof_ = true;
      conn_->downstream().ShutdownWrite();
      return MaybeFinishTunnel();
    }
    up_broken_ = true;
    if (!ex_ || !up_parser_) {
      if (up_) conn_->Retire(std::move(up_));
      return;
    }
    up_parser_->FeedEof();
    if (response_complete_ || !ex_) return;
    UpstreamFailure(absl::UnavailableError("upstream closed the connection early"), "UC");
  }

  void OnUpstreamError(const absl::Status& s) {
    up_broken_ = true;
    if (tunnel_) return conn_->Finish(true);
    if (!ex_ || !ex_->forwarded || response_complete_) return;
    UpstreamFailure(s, s.message().find("connect") != absl::string_view::npos ? "UF" : "UR");
  }

  void UpstreamFailure(const absl::Status& s, const char* flags) {
    AMBIT_LOG(kLog, Debug) << "upstream failed: " << s;
    ex_->log.flags = flags;
    if (response_started_) {
      FinishExchangeNow();
      return conn_->Finish(true);
    }
    RetireParser();
    LocalReply(503, "upstream connect error or disconnect/reset before headers",
               std::string(flags) == "UF" ? "upstream_connect_failure" : "upstream_reset", true);
  }

  void UpstreamProtocolError(const std::string& detail) {
    AMBIT_LOG(kLog, Debug) << "upstream protocol error: " << detail;
    up_broken_ = true;
    if (response_started_) {
      ex_->log.flags = "UPE";
      FinishExchangeNow();
      return conn_->Finish(true);
    }
    RetireParser();
    ex_->log.flags = "UPE";
    LocalReply(502, "upstream sent an invalid response", "upstream_protocol_error", true);
  }

  void OnResponseHead(MessageHead head) {
    if (head.status >= 100 && head.status < 200 && head.status != 101) {
      pending_1xx_ = true;  // never relayed: the waypoint answered any Expect itself
      return;
    }
    if (head.status == 101 && !req_.upgrade) {
      return UpstreamProtocolError("101 without an upgrade request");
    }
    response_started_ = true;
    ex_->log.status = head.status;
    if (!head.keep_alive) up_broken_ = true;
    HeaderList out;
    for (const auto& [k, v] : head.headers) {
      if (IsHopByHop(k) || NamedInConnection(head, k)) continue;
      out.emplace_back(k, v);
    }
    ApplyHeaderEdits(ex_->ctx.downstream_header_edits, out);
    const bool no_body =
        req_.method == "HEAD" || head.status == 204 || head.status == 304 || head.status == 101;
    response_chunked_ = false;
    if (no_body) {
      if (head.content_length) {
        out.emplace_back("content-length", absl::StrCat(*head.content_length));
      }
    } else if (head.content_length && !head.chunked) {
      out.emplace_back("content-length", absl::StrCat(*head.content_length));
    } else if (req_.http_minor >= 1) {
      response_chunked_ = true;
      out.emplace_back("transfer-encoding", "chunked");
    } else {
      close_after_ = true;  // HTTP/1.0 client: the close ends the body
    }
    // A refused upgrade leaves the parser past the request head: no further requests.
    if (req_.upgrade && head.status != 101) close_after_ = true;
    if (head.status == 101) {
      out.emplace_back("connection", "upgrade");
      if (const std::string* u = head.Find("upgrade")) out.emplace_back("upgrade", *u);
    } else if (close_after_ || !req_.keep_alive || !request_complete_) {
      close_after_ = true;
      out.emplace_back("connection", "close");
    }
    std::string wire = SerializeResponseHead(head.status, out);
    ex_->log.bytes_sent += wire.size();
    conn_->downstream().Write(wire);
    if (head.status == 101) {
      tunnel_ = true;
      ex_->log.details = "upgrade";
      FinishExchangeNow();
      // The client's bytes after its request head belong to the upgraded protocol.
      if (!in_.empty() && up_) up_->Write(in_);
      in_.clear();
      if (downstream_eof_ && up_) up_->ShutdownWrite();
    }
  }

  void OnResponseBody(absl::string_view data) {
    if (!ex_) return;
    ex_->log.bytes_sent += data.size();
    conn_->downstream().Write(response_chunked_ ? EncodeChunk(data) : std::string(data));
  }

  void OnResponseComplete() {
    if (pending_1xx_) return;
    if (response_chunked_) conn_->downstream().Write(EncodeChunk(""));
    response_complete_ = true;
    if (request_complete_) DoneExchange();
  }

  // Both the request and the response are complete.
  void DoneExchange() {
    FinishExchangeNow();
    last_activity_ = conn_->Now();  // the connection idle timeout counts from here
    RetireParser();
    if (close_after_ || downstream_eof_) return StartClosing();
    if (in_feed_) return;  // Process resumes the parser when Feed returns
    parser_.Resume();
    Process();
  }

  // Parsers may be inside their own callbacks: freed at the next event.
  void RetireParser() {
    if (up_parser_) retired_parsers_.push_back(std::move(up_parser_));
  }

  void FinishExchangeNow() {
    EndWait(/*cancel=*/true);
    if (!ex_) return;
    FinishExchange(conn_, *ex_);
    ex_.reset();
  }

  // A response the waypoint writes itself.
  void LocalReply(int status, const std::string& body, const std::string& details, bool close,
                  const HeaderList& extra = {}) {
    EndWait(/*cancel=*/true);
    held_.clear();  // a local answer drops the body
    if (!ex_) return;
    if (!details.empty()) ex_->log.details = details;
    ex_->log.status = status;
    HeaderList h = {{"content-type", "text/plain"}, {"content-length", absl::StrCat(body.size())}};
    for (const auto& kv : extra) h.push_back(kv);
    if (close) h.emplace_back("connection", "close");
    std::string wire = SerializeResponseHead(status, h) + body;
    ex_->log.bytes_sent += wire.size();
    conn_->downstream().Write(wire);
    response_started_ = true;
    response_complete_ = true;
    if (up_ && ex_->forwarded) up_broken_ = true;
    ex_->forwarded = false;
    if (close) {
      close_after_ = true;
      FinishExchangeNow();
      return StartClosing();
    }
    if (request_complete_) DoneExchange();
  }

  // Our last response is written: end our direction, then wait briefly for the client to close
  // (Envoy's delayed close), so it reads the response instead of a reset.
  void StartClosing() {
    closing_ = true;
    if (up_) conn_->Retire(std::move(up_));
    conn_->downstream().ShutdownWrite();
    conn_->downstream().SetReadEnabled(true);
    close_deadline_ = conn_->Now() + absl::Seconds(1);
    conn_->Rearm();
  }

  void MaybeFinishTunnel() {
    if (!downstream_eof_ || !upstream_eof_) return;
    closing_ = true;
    close_deadline_ = conn_->Now();
    conn_->Rearm();
  }

  Connection* conn_;
  Http1Parser parser_;
  std::string in_;
  MessageHead req_;
  std::unique_ptr<Exchange> ex_;
  size_t request_bytes_head_ = 0;
  bool request_complete_ = false;
  bool response_started_ = false;
  bool response_complete_ = false;
  bool response_chunked_ = false;
  bool pending_1xx_ = false;
  bool close_after_ = false;
  bool closing_ = false;
  bool tunnel_ = false;
  bool downstream_eof_ = false;
  bool upstream_eof_ = false;
  bool up_broken_ = false;
  absl::Time last_activity_;
  absl::Time head_started_at_;
  absl::Time close_deadline_ = absl::InfiniteFuture();
  ResponseSink response_sink_;
  UpstreamObserver upstream_observer_;
  std::unique_ptr<ByteStream> up_;
  std::unique_ptr<Http1Parser> up_parser_;
  std::vector<std::unique_ptr<Http1Parser>> retired_parsers_;
  bool in_feed_ = false;
  // A filter of the current request waits: for the body it wants, then for its check.
  enum class Wait { kNone, kBody, kCheck };
  Wait waiting_ = Wait::kNone;
  std::shared_ptr<Pending> pending_;
  std::unique_ptr<AsyncCheck> check_;
  std::shared_ptr<bool> wait_token_;  // `done` holds a weak_ptr: expired once the wait ended
  size_t next_filter_ = 0;            // where the chain resumes
  std::string held_;                  // request body received while waiting (decoded)
  bool continue_sent_ = false;
};

}  // namespace

std::unique_ptr<Handler> NewHttp1Handler(Connection* conn) {
  return std::make_unique<Http1Handler>(conn);
}

}  // namespace ambit::waypoint::internal
