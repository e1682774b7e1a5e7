// The ext_authz client for Istio's envoyExtAuthzHttp providers: one HTTP/1.1 request per check,
// shaped and read as Envoy's ext_authz HTTP service does it, so an authorizer written for Istio
// works unchanged. Connections are kept for the next checks (keep-alive), one check at a time on
// each, at most kMaxIdle idle ones per client.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/authz/request.h"
#include "agent/common/log.h"
#include "agent/waypoint/deadline_list.h"
#include "agent/waypoint/ext_authz_client.h"
#include "agent/waypoint/ext_authz_http_internal.h"

namespace ambit::waypoint {
namespace internal {
namespace {

// Idle keep-alive connections a client keeps; more are closed after their answer.
constexpr size_t kMaxIdle = 16;

bool SafeValue(absl::string_view v) {
  return v.find_first_of(absl::string_view("\r\n\0", 3)) == absl::string_view::npos;
}

// Headers no check request or answer carries through: the connection's own and pseudo-headers.
bool NeverCopied(absl::string_view lower_name) {
  return lower_name.empty() || lower_name[0] == ':' || lower_name == "host" ||
         IsHopByHop(lower_name);
}

AuthzCheckResponse Error(std::string detail) {
  AuthzCheckResponse r;
  r.outcome = AuthzCheckResponse::Outcome::kError;
  r.detail = std::move(detail);
  return r;
}

}  // namespace

bool HeaderNameMatches(const std::vector<std::string>& patterns, absl::string_view lower_name) {
  for (const std::string& p : patterns) {
    if (p == "*") return true;
    if (p.size() > 1 && p.back() == '*') {
      if (absl::StartsWithIgnoreCase(lower_name, absl::string_view(p).substr(0, p.size() - 1))) {
        return true;
      }
    } else if (p.size() > 1 && p.front() == '*') {
      if (absl::EndsWithIgnoreCase(lower_name, absl::string_view(p).substr(1))) return true;
    } else if (absl::EqualsIgnoreCase(p, lower_name)) {
      return true;
    }
  }
  return false;
}

std::string BuildHttpCheckRequest(const authz::ExtAuthzProvider& provider,
                                  const AuthzCheckRequest& request) {
  HeaderList headers;
  headers.emplace_back("host", request.host);
  for (const auto& [k, v] : request.headers) {
    std::string lowered;
    const absl::string_view name = authz::AsciiLowerView(k, &lowered);
    if (NeverCopied(name) || !SafeValue(v)) continue;
    // Envoy always allows Authorization (besides Host, method, path and Content-Length, which the
    // check request carries as its own).
    if (name == "authorization" || HeaderNameMatches(provider.include_request_headers, name)) {
      headers.emplace_back(name, v);
    }
  }
  for (const auto& [k, v] : provider.include_additional_headers) {
    const std::string name = absl::AsciiStrToLower(k);
    if (NeverCopied(name) || !SafeValue(v)) continue;
    // Istio: an additional header overrides the client's header of the same name.
    std::erase_if(headers, [&name](const auto& kv) { return kv.first == name; });
    headers.emplace_back(name, v);
  }
  const std::string& body = request.body ? *request.body : std::string();
  headers.emplace_back("content-length", absl::StrCat(body.size()));
  std::string target = absl::StrCat(provider.path_prefix, request.path);
  if (target.empty()) target = "/";
  const std::string method = request.method.empty() ? std::string("GET") : request.method;
  return absl::StrCat(SerializeRequestHead(method, target, headers), body);
}

AuthzCheckResponse MapHttpAnswer(const authz::ExtAuthzProvider& provider, const MessageHead& head,
                                 std::string body) {
  AuthzCheckResponse r;
  const int status = head.status;
  if (status == 200) {
    r.outcome = AuthzCheckResponse::Outcome::kAllow;
    r.detail = "HTTP 200";
    std::vector<std::string> set_upstream;
    for (const auto& [name, value] : head.headers) {
      if (NeverCopied(name) || !SafeValue(value)) continue;
      if (HeaderNameMatches(provider.headers_to_upstream_on_allow, name)) {
        // The first of a name replaces the request's headers of that name, the next ones join it.
        const bool first =
            std::find(set_upstream.begin(), set_upstream.end(), name) == set_upstream.end();
        if (first) set_upstream.push_back(name);
        r.upstream_edits.push_back(
            HeaderEdit{first ? HeaderEdit::Op::kSet : HeaderEdit::Op::kAppend, name, value});
      }
      if (HeaderNameMatches(provider.headers_to_downstream_on_allow, name)) {
        r.downstream_edits.push_back(HeaderEdit{HeaderEdit::Op::kAppend, name, value});
      }
    }
    return r;
  }
  if (status >= 500 && status <= 599) {
    // Envoy counts a 5xx as the authorizer failing, not deciding: failOpen and statusOnError
    // apply and its body is not shown to the client.
    return Error(absl::StrCat("the authorizer answered HTTP ", status));
  }
  if (status < 200 || status > 599) {
    return Error(absl::StrCat("malformed answer: HTTP status ", status));
  }
  r.outcome = AuthzCheckResponse::Outcome::kDeny;
  r.status = status;
  r.detail = absl::StrCat("HTTP ", status);
  r.deny_body = std::move(body);
  const bool all = provider.headers_to_downstream_on_deny.empty();
  for (const auto& [name, value] : head.headers) {
    if (NeverCopied(name) || !SafeValue(value)) continue;
    if (all) {
      // Envoy rewrites Server on every response it sends; the authorizer's does not leak.
      if (name == "server") continue;
    } else if (name != "www-authenticate" && name != "location" &&
               !HeaderNameMatches(provider.headers_to_downstream_on_deny, name)) {
      continue;
    }
    r.deny_headers.emplace_back(name, value);
  }
  return r;
}

HttpAnswerReader::HttpAnswerReader(bool head_request)
    : parser_(Http1Parser::Kind::kResponse, this, Http1Limits{kMaxAnswerHeaderBytes, 100}) {
  if (head_request) parser_.ExpectNoBody();
  head_request_ = head_request;
}

void HttpAnswerReader::Fail(std::string why) {
  if (state_ != State::kMore) return;
  state_ = State::kError;
  error_ = std::move(why);
}

void HttpAnswerReader::OnHead(MessageHead head) {
  head_ = std::move(head);
  have_head_ = true;
}

void HttpAnswerReader::OnBody(absl::string_view data) {
  if (body_.size() + data.size() > kMaxAnswerBodyBytes) {
    too_large_ = true;
    return;
  }
  body_.append(data.data(), data.size());
}

void HttpAnswerReader::OnMessageComplete() { complete_ = true; }

HttpAnswerReader::State HttpAnswerReader::Feed(absl::string_view data) {
  if (state_ != State::kMore) return state_;
  if (!data.empty()) saw_bytes_ = true;
  while (state_ == State::kMore) {
    const size_t n = parser_.Feed(data);
    if (parser_.error()) {
      Fail(absl::StrCat("malformed answer: ", parser_.error()->detail));
    } else if (too_large_) {
      Fail("malformed answer: body larger than 1 MiB");
    } else if (parser_.upgraded()) {
      Fail("malformed answer: the authorizer switched protocols");
    } else if (complete_ && have_head_ && head_.status >= 100 && head_.status < 200) {
      // An interim answer (100 Continue, 103 Early Hints): the final one follows.
      complete_ = have_head_ = false;
      head_ = MessageHead{};
      body_.clear();
      parser_.Resume();
      if (head_request_) parser_.ExpectNoBody();
      data.remove_prefix(n);
      continue;
    } else if (complete_) {
      leftover_ = n < data.size();
      state_ = State::kDone;
    } else if (n < data.size()) {
      Fail("malformed answer: unparsed bytes");
    }
    break;
  }
  return state_;
}

HttpAnswerReader::State HttpAnswerReader::FeedEof() {
  if (state_ != State::kMore) return state_;
  if (!saw_bytes_) {
    Fail("connection closed before the answer");
    return state_;
  }
  parser_.FeedEof();
  if (complete_ && have_head_ && !too_large_) {
    state_ = State::kDone;
  } else if (too_large_) {
    Fail("malformed answer: body larger than 1 MiB");
  } else {
    Fail(absl::StrCat("malformed answer: ",
                      parser_.error() ? parser_.error()->detail : std::string("cut short")));
  }
  return state_;
}

AuthzCheckResponse ReadHttpAnswer(const authz::ExtAuthzProvider& provider, absl::string_view bytes,
                                  bool eof) {
  HttpAnswerReader reader(false);
  HttpAnswerReader::State s = reader.Feed(bytes);
  if (s == HttpAnswerReader::State::kMore && eof) s = reader.FeedEof();
  if (s == HttpAnswerReader::State::kDone) {
    return MapHttpAnswer(provider, reader.head(), std::move(reader.body()));
  }
  if (s == HttpAnswerReader::State::kMore) return Error("malformed answer: cut short");
  return Error(reader.error());
}

}  // namespace internal

namespace {

using internal::HttpAnswerReader;

class HttpAuthorizerClient final : public AuthorizerClient {
 public:
  HttpAuthorizerClient(authz::ExtAuthzProvider provider, UpstreamConnector* connector,
                       EventLoop* loop, const Clock* clock)
      : provider_(std::move(provider)), connector_(connector), loop_(loop), clock_(clock) {}

  ~HttpAuthorizerClient() override {
    for (auto& c : conns_) {
      if (c->stream) c->stream->Close(true);
    }
    // Streams may still be on the stack of a callback that led here: freed after this pass.
    loop_->Defer([conns = std::move(conns_)] {});
    for (auto& op : deadlines_.TakeAll()) {
      Deliver(op, internal_error("the authorizer client was shut down"));
    }
  }

  std::unique_ptr<AsyncCheck> Check(const AuthzCheckRequest& request,
                                    std::function<void(AuthzCheckResponse)> done) override {
    auto op = std::make_shared<Op>();
    op->wire = internal::BuildHttpCheckRequest(provider_, request);
    op->head = request.method == "HEAD";
    op->done = std::move(done);
    op->start = clock_->Now();
    deadlines_.Add(op, op->start);
    Start(op);
    return std::make_unique<Handle>(this, alive_, op);
  }

  const authz::ExtAuthzProvider& provider() const override { return provider_; }

 private:
  struct Conn;

  struct Op {
    std::string wire;
    bool head = false;
    std::function<void(AuthzCheckResponse)> done;
    absl::Time start;
    DeadlineList<Op>::Entry deadline_entry;
    Conn* conn = nullptr;
    bool retried = false;
    bool finished = false;
    bool cancelled = false;
  };

  struct Conn final : ByteStream::Observer {
    HttpAuthorizerClient* client = nullptr;
    std::unique_ptr<ByteStream> stream;
    std::shared_ptr<Op> op;  // the check in flight, if any
    std::optional<HttpAnswerReader> reader;
    bool reused = false;  // answered a check before
    bool dead = false;

    void OnData(absl::string_view data) override { client->OnConnData(this, data); }
    void OnEnd() override { client->OnConnClosed(this, "connection closed by the authorizer"); }
    void OnError(const absl::Status& status) override {
      client->OnConnClosed(this, std::string(status.message()));
    }
  };

  struct Handle final : AsyncCheck {
    Handle(HttpAuthorizerClient* c, std::weak_ptr<bool> a, std::weak_ptr<Op> o)
        : client(c), alive(std::move(a)), op(std::move(o)) {}
    ~Handle() override {
      std::shared_ptr<Op> o = op.lock();
      if (!o) return;
      o->cancelled = true;
      o->done = nullptr;
      if (alive.lock() && !o->finished) client->Cancel(o);
    }
    HttpAuthorizerClient* client;
    std::weak_ptr<bool> alive;
    std::weak_ptr<Op> op;
  };

  static AuthzCheckResponse internal_error(std::string detail) {
    AuthzCheckResponse r;
    r.outcome = AuthzCheckResponse::Outcome::kError;
    r.detail = std::move(detail);
    return r;
  }

  void Start(const std::shared_ptr<Op>& op) {
    Conn* c = nullptr;
    if (!idle_.empty()) {
      c = idle_.back();
      idle_.pop_back();
    } else {
      auto fresh = std::make_shared<Conn>();
      fresh->client = this;
      conns_.push_back(fresh);
      fresh->stream = connector_->Connect(fresh.get());
      if (!fresh->stream || fresh->dead) {
        // The connector failed at once.
        if (fresh->stream) fresh->stream->Close(true);
        Forget(fresh.get());
        return Finish(op,
                      internal_error(absl::StrCat("cannot connect to ", connector_->Describe())));
      }
      c = fresh.get();
    }
    c->op = op;
    c->reader.emplace(op->head);
    op->conn = c;
    c->stream->Write(op->wire);
  }

  void OnConnData(Conn* c, absl::string_view data) {
    if (c->dead) return;
    if (!c->op) {
      // An idle connection has nothing to say.
      return Retire(c, /*abort=*/true);
    }
    const HttpAnswerReader::State s = c->reader->Feed(data);
    if (s == HttpAnswerReader::State::kMore) return;
    std::shared_ptr<Op> op = c->op;
    if (s == HttpAnswerReader::State::kError) {
      std::string why = c->reader->error();
      Retire(c, /*abort=*/true);
      return Finish(op, internal_error(std::move(why)));
    }
    AuthzCheckResponse r =
        internal::MapHttpAnswer(provider_, c->reader->head(), std::move(c->reader->body()));
    const bool reusable = c->reader->head().keep_alive && !c->reader->leftover();
    c->op.reset();
    c->reader.reset();
    op->conn = nullptr;
    c->reused = true;
    if (reusable && idle_.size() < internal::kMaxIdle) {
      idle_.push_back(c);
    } else {
      Retire(c, /*abort=*/false);
    }
    Finish(op, std::move(r));
  }

  void OnConnClosed(Conn* c, std::string why) {
    if (c->dead) return;
    if (!c->stream) {
      // Reported from inside Connect: Start finds it.
      c->dead = true;
      return;
    }
    std::shared_ptr<Op> op = c->op;
    if (!op) return Retire(c, /*abort=*/true);
    HttpAnswerReader::State s = c->reader->FeedEof();
    if (s == HttpAnswerReader::State::kDone) {
      AuthzCheckResponse r =
          internal::MapHttpAnswer(provider_, c->reader->head(), std::move(c->reader->body()));
      Retire(c, /*abort=*/false);
      return Finish(op, std::move(r));
    }
    const bool nothing_read = !c->reader->saw_bytes();
    const bool was_reused = c->reused;
    if (!nothing_read) why = c->reader->error();
    Retire(c, /*abort=*/true);
    if (nothing_read && was_reused && !op->retried) {
      // A kept connection the authorizer closed as we reused it: once more on a fresh one.
      op->retried = true;
      return Start(op);
    }
    Finish(op, internal_error(std::move(why)));
  }

  void Cancel(const std::shared_ptr<Op>& op) {
    deadlines_.Remove(op.get());
    op->finished = true;
    // An answer may still come on its connection: it cannot carry the next check.
    if (op->conn != nullptr) Retire(op->conn, /*abort=*/true);
  }

  // Closes `c` (its callbacks stop) and frees it after this pass of the loop.
  void Retire(Conn* c, bool abort) {
    c->dead = true;
    std::erase(idle_, c);
    if (c->op) {
      c->op->conn = nullptr;
      c->op.reset();
    }
    if (c->stream) c->stream->Close(abort);
    Forget(c);
  }

  void Forget(Conn* c) {
    auto it = std::find_if(conns_.begin(), conns_.end(),
                           [c](const std::shared_ptr<Conn>& p) { return p.get() == c; });
    if (it == conns_.end()) return;
    loop_->Defer([keep = *it] {});
    conns_.erase(it);
  }

  void Finish(const std::shared_ptr<Op>& op, AuthzCheckResponse r) {
    if (op->finished) return;
    op->finished = true;
    deadlines_.Remove(op.get());
    if (op->conn != nullptr) {
      op->conn->op.reset();
      op->conn = nullptr;
    }
    r.latency = clock_->Now() - op->start;
    if (r.outcome == AuthzCheckResponse::Outcome::kError) {
      AMBIT_LOG("waypoint", Debug)
          << "ext_authz provider \"" << provider_.name << "\" check failed: " << r.detail;
    }
    Deliver(op, std::move(r));
  }

  // `done` always runs from the loop, never inside Check or a caller's own call into us.
  void Deliver(const std::shared_ptr<Op>& op, AuthzCheckResponse r) {
    op->finished = true;
    loop_->Defer([op, r = std::move(r)]() mutable {
      if (op->cancelled || !op->done) return;
      auto done = std::move(op->done);
      op->done = nullptr;
      done(std::move(r));
    });
  }

  authz::ExtAuthzProvider provider_;
  UpstreamConnector* connector_;
  EventLoop* loop_;
  const Clock* clock_;
  // Unfinished checks, oldest first.
  DeadlineList<Op> deadlines_{
      loop_, clock_, provider_.timeout, [this](const std::shared_ptr<Op>& o) {
        if (o->conn != nullptr) Retire(o->conn, /*abort=*/true);
        Finish(o, internal_error(
                      absl::StrCat("timeout after ", absl::FormatDuration(provider_.timeout))));
      }};
  std::vector<std::shared_ptr<Conn>> conns_;
  std::vector<Conn*> idle_;  // most recently used last
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace

std::unique_ptr<AuthorizerClient> NewHttpAuthorizerClient(authz::ExtAuthzProvider provider,
                                                          UpstreamConnector* connector,
                                                          EventLoop* loop, const Clock* clock) {
  return std::make_unique<HttpAuthorizerClient>(std::move(provider), connector, loop, clock);
}

}  // namespace ambit::waypoint
