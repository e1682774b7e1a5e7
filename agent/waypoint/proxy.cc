#include "agent/waypoint/proxy.h"

#include <vector>

#include "absl/strings/match.h"
#include "agent/common/log.h"
#include "agent/waypoint/proxy_internal.h"

namespace ambit::waypoint {

namespace {

// A value that would end the header line early (a JWT claim is client-chosen text).
bool SafeHeaderValue(absl::string_view v) {
  return v.find_first_of(absl::string_view("\r\n\0", 3)) == absl::string_view::npos;
}

}  // namespace

void ApplyHeaderEdits(const std::vector<HeaderEdit>& edits, HeaderList& headers) {
  for (const HeaderEdit& e : edits) {
    // Framing and routing headers are the proxy's own: an edit must never change how the
    // upstream splits the byte stream into requests.
    if (e.name.empty() || e.name[0] == ':' || e.name == "host" || IsHopByHop(e.name)) {
      AMBIT_LOG("waypoint", Warning) << "ignored an edit of header \"" << e.name
                                     << "\": framing and host headers are the proxy's";
      continue;
    }
    const bool adds = e.op != HeaderEdit::Op::kRemove;
    if (adds && !SafeHeaderValue(e.value)) {
      AMBIT_LOG("waypoint", Warning)
          << "not setting header \"" << e.name << "\": its value holds CR, LF or NUL";
      // The old value goes anyway: what the filter meant to replace must not pass unchanged.
    }
    if (e.op != HeaderEdit::Op::kAppend) {
      std::erase_if(headers, [&e](const auto& kv) { return kv.first == e.name; });
    }
    if (adds && SafeHeaderValue(e.value)) headers.emplace_back(e.name, e.value);
  }
}

namespace internal {

constexpr char kH2Preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
constexpr size_t kH2PrefaceLen = sizeof(kH2Preface) - 1;
// How long a closing connection may take to send what it still has queued.
constexpr absl::Duration kLingerLimit = absl::Seconds(5);

// Whether `data`, the first bytes of a connection, start an HTTP/1.x request: a method token of
// capital letters, a space, a request target, " HTTP/1." and a digit before the line ends.
// Envoy's http_inspector decides the same way; it is what makes Istio's protocol detection.
Sniff SniffHttp1(absl::string_view data) {
  constexpr size_t kMaxMethod = 20;
  constexpr size_t kMaxLine = 8192;  // a longer line is HTTP's to refuse (414), not TCP's
  size_t i = 0;
  while (i < data.size() && i < kMaxMethod && data[i] >= 'A' && data[i] <= 'Z') ++i;
  if (i == data.size()) return i <= kMaxMethod ? Sniff::kNeedMore : Sniff::kNotHttp;
  if (i == 0 || data[i] != ' ') return Sniff::kNotHttp;
  const size_t eol = data.find('\n', i);
  if (eol == absl::string_view::npos) {
    return data.size() < kMaxLine ? Sniff::kNeedMore : Sniff::kHttp;
  }
  absl::string_view line = data.substr(0, eol);
  if (absl::EndsWith(line, "\r")) line.remove_suffix(1);
  const size_t sp = line.rfind(' ');
  absl::string_view version = line.substr(sp + 1);
  if (sp <= i + 1 || version.size() != 8 || !absl::StartsWith(version, "HTTP/1.") ||
      version[7] < '0' || version[7] > '9') {
    return Sniff::kNotHttp;
  }
  return Sniff::kHttp;
}

std::unique_ptr<Exchange> NewExchange(Connection* conn, absl::string_view protocol,
                                      absl::string_view method, absl::string_view path,
                                      absl::string_view authority, const HeaderList& headers) {
  auto ex = std::make_unique<Exchange>();
  authz::Request& r = ex->ctx.request;
  r.layer = authz::Layer::kL7;
  r.source_principal = conn->info().identity;
  if (conn->info().peer) r.source_ip = conn->info().peer->ip;
  if (conn->ctx().destination) {
    r.destination_ip = conn->ctx().destination->ip;
    r.destination_port = conn->ctx().destination->port;
  }
  r.method = std::string(method);
  r.path = std::string(path);
  r.host = std::string(authority);
  for (const auto& [k, v] : headers) r.headers.Add(k, v);
  RequestLogEntry& log = ex->log;
  log.start = conn->Now();
  log.protocol = std::string(protocol);
  log.method = r.method;
  log.authority = r.host;
  log.path = r.path;
  log.source = conn->SourceText();
  log.source_identity = r.source_principal;
  log.upstream = conn->UpstreamText();
  return ex;
}

void FinishExchange(Connection* conn, Exchange& ex) {
  RequestLogEntry& log = ex.log;
  log.duration = conn->Now() - log.start;
  log.jwt_principal = ex.ctx.jwt_principal;
  log.policy = ex.ctx.policy;
  log.ext_authz = ex.ctx.ext_authz;
  if (log.details.empty()) log.details = ex.ctx.details;
  if (!ex.forwarded) log.upstream.clear();
  const std::string line = AccessLogLine(log);
  if (conn->ctx().access_log) {
    conn->ctx().access_log(line);
  } else {
    AMBIT_LOG("access", Info) << line;
  }
  if (conn->ctx().metrics != nullptr && log.protocol != "tcp") {
    conn->ctx().metrics->Record(conn->ctx().request_labels, log.status,
                                absl::ToDoubleMilliseconds(log.duration), log.bytes_received,
                                log.bytes_sent);
  }
}

namespace {

class ProxyConnectionImpl final : public Connection,
                                  public ByteStream::Observer,
                                  public std::enable_shared_from_this<ProxyConnectionImpl> {
 public:
  ProxyConnectionImpl(ProxyContext* ctx, std::unique_ptr<ByteStream> downstream,
                      DownstreamInfo info, std::function<void()> on_closed)
      : ctx_(ctx),
        downstream_(std::move(downstream)),
        info_(std::move(info)),
        on_closed_(std::move(on_closed)) {}

  void Start() {
    self_ = shared_from_this();
    if (ctx_->options.tcp_only) handler_ = NewTcpHandler(this);
    downstream_->SetObserver(this);
    Rearm();
  }

  // Connection
  ProxyContext& ctx() override { return *ctx_; }
  const DownstreamInfo& info() const override { return info_; }
  ByteStream& downstream() override { return *downstream_; }
  void Retire(std::unique_ptr<ByteStream> stream, bool abort) override {
    if (!stream) return;
    if (!abort) stream->ShutdownWrite();
    stream->Close(abort);
    graveyard_.push_back(std::move(stream));
    ScheduleCleanup();
  }
  void Finish(bool abort) override {
    if (finished_) {
      // A reset (or the owner shutting down) ends a linger at once.
      if (abort && lingering_) Release(true);
      return;
    }
    finished_ = true;
    if (handler_) handler_->Shutdown();
    if (!abort && downstream_->buffered() > 0) {
      // The last response is still queued: send it before closing, for a bounded time.
      downstream_->ShutdownWrite();
      lingering_ = true;
      return Linger(ctx_->clock->Now() + kLingerLimit);
    }
    Release(abort);
  }
  void Rearm() override {
    if (finished_) return;
    // Before the first bytes name a protocol, the connection is idle.
    absl::Time due = handler_ ? handler_->NextDeadline() : started_ + ctx_->options.idle_timeout;
    if (due == absl::InfiniteFuture() || due >= timer_due_) return;
    timer_due_ = due;
    std::weak_ptr<ProxyConnectionImpl> weak = weak_from_this();
    ctx_->loop->RunAfter(std::max(due - ctx_->clock->Now(), absl::ZeroDuration()), [weak, due] {
      auto self = weak.lock();
      if (!self || self->finished_ || self->timer_due_ != due) return;
      self->timer_due_ = absl::InfiniteFuture();
      self->OnTimer();
    });
  }

  // ByteStream::Observer for the downstream.
  void OnData(absl::string_view data) override {
    if (finished_) return;
    if (!handler_) {
      sniff_.append(data.data(), data.size());
      const size_t n = std::min(sniff_.size(), kH2PrefaceLen);
      if (sniff_.compare(0, n, kH2Preface, n) == 0) {
        if (sniff_.size() < kH2PrefaceLen) return;
        handler_ = NewHttp2Handler(this);
      } else if (!ctx_->options.detect_protocol) {
        handler_ = NewHttp1Handler(this);
      } else {
        switch (SniffHttp1(sniff_)) {
          case Sniff::kNeedMore:
            return;
          case Sniff::kHttp:
            handler_ = NewHttp1Handler(this);
            break;
          case Sniff::kNotHttp:
            handler_ = NewTcpHandler(this);
            break;
        }
      }
      std::string buffered = std::move(sniff_);
      handler_->OnDownstreamData(buffered);
    } else {
      handler_->OnDownstreamData(data);
    }
    if (!finished_) Rearm();
  }
  void OnWritable() override {
    if (handler_ && !finished_) handler_->OnDownstreamWritable();
  }
  void OnEnd() override {
    if (finished_) return;
    if (!handler_ && ctx_->options.detect_protocol && !sniff_.empty()) {
      // Too short to say and the client is done: not an HTTP request, so TCP.
      handler_ = NewTcpHandler(this);
      std::string buffered = std::move(sniff_);
      handler_->OnDownstreamData(buffered);
      if (finished_) return;
    }
    if (!handler_) return Finish(false);
    handler_->OnDownstreamEnd();
  }
  void OnError(const absl::Status& status) override {
    AMBIT_LOG("waypoint", Debug) << "downstream " << downstream_->Describe() << ": " << status;
    if (handler_ && !finished_) handler_->OnDownstreamEnd();
    Finish(true);
  }

 private:
  void OnTimer() {
    if (!handler_) {
      // Not even the first bytes of a request arrived in time.
      if (ctx_->clock->Now() >= started_ + ctx_->options.idle_timeout) {
        return Finish(false);
      }
    } else {
      handler_->Tick(ctx_->clock->Now());
    }
    if (!finished_) Rearm();
  }
  void Linger(absl::Time give_up) {
    std::weak_ptr<ProxyConnectionImpl> weak = weak_from_this();
    ctx_->loop->RunAfter(absl::Milliseconds(50), [weak, give_up] {
      auto self = weak.lock();
      if (!self) return;
      if (!self->lingering_) return;
      if (self->downstream_->buffered() > 0 && self->ctx_->clock->Now() < give_up) {
        return self->Linger(give_up);
      }
      self->Release(false);
    });
  }

  // Closes the downstream and drops the connection's reference to itself, from the loop.
  void Release(bool abort) {
    lingering_ = false;
    downstream_->Close(abort);
    std::shared_ptr<ProxyConnectionImpl> self = std::move(self_);
    if (!self) return;
    ctx_->loop->Defer([self] {
      if (self->on_closed_) self->on_closed_();
    });
  }

  void ScheduleCleanup() {
    if (cleanup_scheduled_) return;
    cleanup_scheduled_ = true;
    std::weak_ptr<ProxyConnectionImpl> weak = weak_from_this();
    ctx_->loop->Defer([weak] {
      if (auto self = weak.lock()) {
        self->graveyard_.clear();
        self->cleanup_scheduled_ = false;
      }
    });
  }

  ProxyContext* ctx_;
  std::unique_ptr<ByteStream> downstream_;
  DownstreamInfo info_;
  std::function<void()> on_closed_;
  std::shared_ptr<ProxyConnectionImpl> self_;
  std::unique_ptr<Handler> handler_;
  std::string sniff_;
  std::vector<std::unique_ptr<ByteStream>> graveyard_;
  bool cleanup_scheduled_ = false;
  bool finished_ = false;
  bool lingering_ = false;  // finished, sending what is still queued before closing
  absl::Time timer_due_ = absl::InfiniteFuture();
  absl::Time started_ = ctx_->clock->Now();
};

}  // namespace
}  // namespace internal

void ServeConnection(ProxyContext* ctx, std::unique_ptr<ByteStream> downstream, DownstreamInfo info,
                     std::function<void()> on_closed) {
  auto conn = std::make_shared<internal::ProxyConnectionImpl>(
      ctx, std::move(downstream), std::move(info), std::move(on_closed));
  conn->Start();
}

}  // namespace ambit::waypoint
