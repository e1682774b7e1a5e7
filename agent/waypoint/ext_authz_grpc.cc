// The envoyExtAuthzGrpc client: Envoy's envoy.service.auth.v3.Authorization/Check, unary, over
// one h2c (prior knowledge) HTTP/2 connection per client that every check shares.
//
// Why a gRPC client of our own on nghttp2 instead of the gRPC library: ambit-waypoint links
// BoringSSL, and Debian's gRPC links OpenSSL 3; the two export the same unversioned symbol names,
// so a process holding both binds gRPC's TLS calls to BoringSSL and crashes. A unary call is small
// enough to speak directly: HEADERS (POST, content-type application/grpc, te: trailers,
// grpc-timeout), one length-prefixed message, then the answer's head, one message and trailers
// carrying grpc-status. Only the protobuf messages are generated (envoy_ext_authz_proto).
//
// Connections: checks go to the current connection while it is usable; after an error, the
// peer's close or a GOAWAY it takes no new stream, and the next check dials a new one. Streams
// the peer refused unprocessed (REFUSED_STREAM, or above a GOAWAY's last stream id) are sent once
// more on a fresh connection, since the authorizer never saw them. Every check has its own
// deadline on a loop timer that resets its stream.

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/waypoint/deadline_list.h"
#include "agent/waypoint/ext_authz_client.h"
#include "agent/waypoint/ext_authz_grpc_internal.h"

namespace ambit::waypoint {

namespace grpc_internal {
namespace {

namespace authv3 = envoy::service::auth::v3;
namespace corev3 = envoy::config::core::v3;

void FillPeer(authv3::AttributeContext::Peer* peer, const std::optional<SocketAddress>& address,
              const std::string& principal) {
  if (address.has_value()) {
    corev3::SocketAddress* sa = peer->mutable_address()->mutable_socket_address();
    sa->set_address(address->ip.ToString());
    sa->set_port_value(address->port);
  }
  peer->set_principal(principal);
}

// RFC 9110 token characters, the only ones a header name may hold.
bool IsTokenChar(char c) {
  // (strchr finds the terminating NUL too: NUL is no token character.)
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
         (c != '\0' && std::strchr("!#$%&'*+-.^_`|~", c) != nullptr);
}

bool ValidHeaderName(absl::string_view name) {
  if (name.empty()) return false;
  for (char c : name) {
    if (!IsTokenChar(c)) return false;
  }
  return true;
}

bool ValidHeaderValue(absl::string_view value) {
  for (char c : value) {
    if (c == '\r' || c == '\n' || c == '\0') return false;
  }
  return true;
}

bool HasHeader(const HeaderList& headers, absl::string_view name) {
  for (const auto& [n, v] : headers) {
    if (n == name) return true;
  }
  return false;
}

AuthzCheckResponse Error(std::string detail) {
  AuthzCheckResponse r;
  r.outcome = AuthzCheckResponse::Outcome::kError;
  r.detail = std::move(detail);
  return r;
}

// HeaderValueOption as Envoy's ext_authz applies it: the deprecated `append` wins when set
// (true: append, false: overwrite); unset, it means false in a CheckResponse (the proto's note),
// so the default APPEND_IF_EXISTS_OR_ADD overwrites too. ADD_IF_ABSENT and OVERWRITE_IF_EXISTS
// depend on the headers already there: `existing` (the checked request's, for upstream edits) says
// whether they are; for the response (unknown here) both act as an overwrite. Returns false for a
// header no HTTP message may carry.
bool ToEdit(const corev3::HeaderValueOption& option, const HeaderList* existing,
            std::vector<HeaderEdit>& out, std::string* error) {
  std::string name = absl::AsciiStrToLower(option.header().key());
  const std::string& value =
      option.header().raw_value().empty() ? option.header().value() : option.header().raw_value();
  if (!ValidHeaderName(name) || !ValidHeaderValue(value)) {
    *error = absl::StrCat("header \"", absl::CHexEscape(option.header().key()),
                          "\" is not a valid HTTP header");
    return false;
  }
  HeaderEdit::Op op = HeaderEdit::Op::kSet;
  // `append` is deprecated in Envoy's API but still honoured first, as Envoy does.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  const bool has_append = option.has_append();
  const bool append = has_append && option.append().value();
#pragma GCC diagnostic pop
  if (has_append) {
    op = append ? HeaderEdit::Op::kAppend : HeaderEdit::Op::kSet;
  } else {
    switch (option.append_action()) {
      case corev3::HeaderValueOption::ADD_IF_ABSENT:
        if (existing != nullptr && HasHeader(*existing, name)) return true;
        break;
      case corev3::HeaderValueOption::OVERWRITE_IF_EXISTS:
        if (existing != nullptr && !HasHeader(*existing, name)) return true;
        break;
      default:
        break;
    }
  }
  out.push_back(HeaderEdit{op, std::move(name), value});
  return true;
}

constexpr const char* kCodeNames[] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

}  // namespace

std::string GrpcCodeName(int code) {
  if (code >= 0 && code < static_cast<int>(std::size(kCodeNames))) return kCodeNames[code];
  return absl::StrCat("code ", code);
}

authv3::CheckRequest BuildCheckRequest(const AuthzCheckRequest& request,
                                       const authz::ExtAuthzProvider& provider) {
  authv3::CheckRequest check;
  authv3::AttributeContext* attrs = check.mutable_attributes();
  FillPeer(attrs->mutable_source(), request.source, request.source_principal);
  FillPeer(attrs->mutable_destination(), request.destination, request.destination_principal);
  authv3::AttributeContext::Request* req = attrs->mutable_request();
  const int64_t nanos = absl::ToUnixNanos(request.time);
  req->mutable_time()->set_seconds(nanos / 1000000000);
  req->mutable_time()->set_nanos(static_cast<int32_t>(nanos % 1000000000));
  authv3::AttributeContext::HttpRequest* http = req->mutable_http();
  http->set_id(request.request_id);
  http->set_method(request.method);
  http->set_path(request.path);
  http->set_host(request.host);
  http->set_scheme(request.scheme);
  http->set_protocol(request.protocol);
  // Envoy's map holds the pseudo-headers too, and repeats joined with ",".
  auto& headers = *http->mutable_headers();
  headers[":authority"] = request.host;
  headers[":method"] = request.method;
  headers[":path"] = request.path;
  headers[":scheme"] = request.scheme;
  int64_t size = -1;  // unknown, as Envoy says it
  for (const auto& [raw_name, value] : request.headers) {
    std::string name = absl::AsciiStrToLower(raw_name);
    if (name == "content-length") {
      int64_t n;
      if (absl::SimpleAtoi(value, &n) && n >= 0) size = n;
    }
    auto [it, inserted] = headers.try_emplace(name, value);
    if (!inserted && !name.starts_with(":")) absl::StrAppend(&it->second, ",", value);
  }
  http->set_size(size);
  if (request.body.has_value()) {
    // Envoy tells the authorizer whether it got all of the body.
    headers["x-envoy-auth-partial-body"] = request.body_truncated ? "true" : "false";
    const bool as_bytes =
        provider.include_request_body.has_value() && provider.include_request_body->pack_as_bytes;
    if (as_bytes) {
      http->set_raw_body(*request.body);
    } else {
      http->set_body(*request.body);
    }
  }
  return check;
}

std::string FrameMessage(absl::string_view message) {
  std::string out;
  out.reserve(5 + message.size());
  const uint32_t n = static_cast<uint32_t>(message.size());
  out.push_back('\0');  // not compressed
  out.push_back(static_cast<char>(n >> 24));
  out.push_back(static_cast<char>(n >> 16));
  out.push_back(static_cast<char>(n >> 8));
  out.push_back(static_cast<char>(n));
  out.append(message.data(), message.size());
  return out;
}

std::string GrpcTimeoutHeader(absl::Duration timeout) {
  constexpr int64_t kMaxDigits = 99999999;
  if (timeout < absl::ZeroDuration()) timeout = absl::ZeroDuration();
  struct Unit {
    absl::Duration d;
    char c;
  };
  for (const Unit& u : {Unit{absl::Nanoseconds(1), 'n'}, Unit{absl::Microseconds(1), 'u'},
                        Unit{absl::Milliseconds(1), 'm'}, Unit{absl::Seconds(1), 'S'},
                        Unit{absl::Minutes(1), 'M'}, Unit{absl::Hours(1), 'H'}}) {
    const int64_t n =
        absl::ToInt64Nanoseconds(absl::Ceil(timeout, u.d)) / absl::ToInt64Nanoseconds(u.d);
    if (n <= kMaxDigits) return absl::StrCat(n, std::string(1, u.c));
  }
  return absl::StrCat(kMaxDigits, "H");
}

std::string DecodeGrpcMessage(absl::string_view value) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    if (value[i] == '%' && i + 2 < value.size() && hex(value[i + 1]) >= 0 &&
        hex(value[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex(value[i + 1]) * 16 + hex(value[i + 2])));
      i += 2;
    } else {
      out.push_back(value[i]);
    }
  }
  return out;
}

AuthzCheckResponse MapCheckResponse(const authv3::CheckResponse& response,
                                    const HeaderList* request_headers) {
  AuthzCheckResponse r;
  const int code = response.status().code();
  std::string error;
  if (code == 0) {
    r.outcome = AuthzCheckResponse::Outcome::kAllow;
    r.detail = "gRPC OK";
    if (response.has_ok_response()) {
      const authv3::OkHttpResponse& ok = response.ok_response();
      for (const auto& h : ok.headers()) {
        if (!ToEdit(h, request_headers, r.upstream_edits, &error)) {
          return Error("malformed answer: " + error);
        }
      }
      for (const std::string& name : ok.headers_to_remove()) {
        std::string lower = absl::AsciiStrToLower(name);
        // Envoy ignores pseudo-headers and Host here: removing them would break the request.
        if (lower.starts_with(":") || lower == "host") continue;
        if (!ValidHeaderName(lower)) {
          return Error(absl::StrCat("malformed answer: headers_to_remove \"",
                                    absl::CHexEscape(name), "\" is not a header name"));
        }
        r.upstream_edits.push_back(HeaderEdit{HeaderEdit::Op::kRemove, std::move(lower), ""});
      }
      for (const auto& h : ok.response_headers_to_add()) {
        if (!ToEdit(h, nullptr, r.downstream_edits, &error)) {
          return Error("malformed answer: " + error);
        }
      }
    }
    return r;
  }
  if (response.has_error_response()) {
    // Envoy: the authorizer failed; the filter's failOpen / statusOnError decide.
    return Error(
        absl::StrCat("the authorizer answered an error_response (gRPC ", GrpcCodeName(code), ")"));
  }
  r.outcome = AuthzCheckResponse::Outcome::kDeny;
  r.detail = absl::StrCat("gRPC ", GrpcCodeName(code), " (", code, ")");
  r.status = 403;
  if (response.has_denied_response()) {
    const authv3::DeniedHttpResponse& denied = response.denied_response();
    const int status = static_cast<int>(denied.status().code());
    // A status outside what a response can carry falls back to Envoy's default.
    if (status >= 200 && status <= 599) r.status = status;
    std::vector<HeaderEdit> edits;
    for (const auto& h : denied.headers()) {
      if (!ToEdit(h, nullptr, edits, &error)) return Error("malformed answer: " + error);
    }
    for (HeaderEdit& e : edits) r.deny_headers.emplace_back(std::move(e.name), std::move(e.value));
    r.deny_body = denied.body();
  }
  return r;
}

AuthzCheckResponse MapAnswer(const GrpcAnswer& answer, const HeaderList* request_headers) {
  if (answer.http_status == 0) return Error("the authorizer sent no response head");
  if (answer.http_status != 200) {
    return Error(absl::StrCat("the authorizer answered HTTP ", answer.http_status));
  }
  if (!answer.grpc_status.has_value()) return Error("malformed answer: no grpc-status");
  int code;
  if (!absl::SimpleAtoi(*answer.grpc_status, &code) || code < 0) {
    return Error(absl::StrCat("malformed answer: grpc-status \"",
                              absl::CHexEscape(*answer.grpc_status), "\""));
  }
  if (code != 0) {
    std::string msg = DecodeGrpcMessage(answer.grpc_message);
    if (msg.size() > 256) msg.resize(256);
    return Error(absl::StrCat("gRPC ", GrpcCodeName(code), " (", code, ")", msg.empty() ? "" : ": ",
                              absl::CHexEscape(msg)));
  }
  if (!absl::StartsWith(answer.content_type, "application/grpc")) {
    return Error(absl::StrCat("malformed answer: content-type \"",
                              absl::CHexEscape(answer.content_type), "\""));
  }
  if (answer.data_too_large) {
    return Error(absl::StrCat("malformed answer: larger than ", kMaxResponseMessage, " bytes"));
  }
  absl::string_view data = answer.data;
  if (data.size() < 5) return Error("malformed answer: no complete message");
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  if (p[0] != 0) return Error("malformed answer: a compressed message, none was accepted");
  const uint32_t len =
      (uint32_t{p[1]} << 24) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 8) | uint32_t{p[4]};
  if (len > kMaxResponseMessage) {
    return Error(absl::StrCat("malformed answer: larger than ", kMaxResponseMessage, " bytes"));
  }
  if (data.size() - 5 < len) return Error("malformed answer: a truncated message");
  if (data.size() - 5 > len) return Error("malformed answer: more than one message");
  authv3::CheckResponse response;
  if (!response.ParseFromArray(data.data() + 5, static_cast<int>(len))) {
    return Error("malformed answer: not a CheckResponse");
  }
  return MapCheckResponse(response, request_headers);
}

}  // namespace grpc_internal

namespace {

using grpc_internal::GrpcAnswer;

class GrpcAuthorizerClient;
class Connection;

// One check: the request frame, the answer so far, and who to tell.
struct Call {
  std::string frame;  // the length-prefixed CheckRequest
  size_t sent = 0;
  HeaderList checked_headers;  // for ADD_IF_ABSENT / OVERWRITE_IF_EXISTS
  std::function<void(AuthzCheckResponse)> done;
  absl::Time start;
  bool finished = false;  // done is scheduled (or cancelled): nothing more happens
  bool retried = false;
  std::weak_ptr<Connection> conn;
  int32_t stream_id = -1;
  GrpcAnswer answer;
  // The client's deadline list (in flight only), for the handle to leave it on cancel.
  GrpcAuthorizerClient* client = nullptr;
  std::weak_ptr<bool> client_alive;
  DeadlineList<Call>::Entry deadline_entry;
};

class CallHandle final : public AsyncCheck {
 public:
  explicit CallHandle(std::shared_ptr<Call> call) : call_(std::move(call)) {}
  ~CallHandle() override;

 private:
  std::shared_ptr<Call> call_;
};

class Connection final : public ByteStream::Observer,
                         public std::enable_shared_from_this<Connection> {
 public:
  Connection(GrpcAuthorizerClient* client, std::weak_ptr<bool> client_alive, EventLoop* loop)
      : client_(client), loop_(loop), client_alive_(std::move(client_alive)) {}
  ~Connection() override {
    if (stream_ != nullptr) stream_->Close(/*abort=*/true);
    if (h2_ != nullptr) nghttp2_session_del(h2_);
  }

  absl::Status Start(UpstreamConnector* connector);
  // Whether a new stream may go here.
  bool usable() const {
    return !dead_ && h2_ != nullptr && nghttp2_session_check_request_allowed(h2_) != 0;
  }
  bool idle() const { return calls_.empty(); }
  void Submit(const std::shared_ptr<Call>& call, const std::string& authority,
              const std::string& timeout);
  // The check ended on our side (deadline or cancel): reset its stream.
  void Reset(Call* call);
  void Detach() { client_ = nullptr; }

  // ByteStream::Observer
  void OnConnected() override {}
  void OnData(absl::string_view data) override;
  void OnEnd() override;
  void OnError(const absl::Status& status) override;

 private:
  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                          nghttp2_data_source* source, void*);
  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                      size_t namelen, const uint8_t* value, size_t valuelen, uint8_t, void* self);
  static int OnDataChunk(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data,
                         size_t len, void* self);
  static int OnStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code, void* self);

  void Flush();
  // The connection is gone: every check on it ends with `why` (or is retried when the peer never
  // saw it), and the client forgets it.
  void Die(const std::string& why);
  void EndCall(int32_t stream_id, uint32_t error_code);

  GrpcAuthorizerClient* client_;
  EventLoop* loop_;
  std::unique_ptr<ByteStream> stream_;
  nghttp2_session* h2_ = nullptr;
  absl::flat_hash_map<int32_t, std::shared_ptr<Call>> calls_;
  bool dead_ = false;
  bool connected_ = false;
  std::string last_error_;
  std::weak_ptr<bool> client_alive_;
};

class GrpcAuthorizerClient final : public AuthorizerClient {
 public:
  GrpcAuthorizerClient(authz::ExtAuthzProvider provider, UpstreamConnector* connector,
                       EventLoop* loop, const Clock* clock)
      : provider_(std::move(provider)),
        connector_(connector),
        loop_(loop),
        clock_(clock),
        timeout_header_(grpc_internal::GrpcTimeoutHeader(provider_.timeout)) {
    // :authority names the Service as its host, as a gRPC channel to "<service>:<port>" does.
    std::string host = provider_.service;
    if (auto slash = host.find('/'); slash != std::string::npos) host = host.substr(slash + 1);
    authority_ = absl::StrCat(host, ":", provider_.port);
  }
  ~GrpcAuthorizerClient() override {
    for (auto& c : connections_) c->Detach();
  }

  std::unique_ptr<AsyncCheck> Check(const AuthzCheckRequest& request,
                                    std::function<void(AuthzCheckResponse)> done) override {
    auto call = std::make_shared<Call>();
    call->frame = grpc_internal::FrameMessage(
        grpc_internal::BuildCheckRequest(request, provider_).SerializeAsString());
    call->checked_headers = request.headers;
    call->done = std::move(done);
    call->start = clock_->Now();
    call->client = this;
    call->client_alive = alive_;
    deadlines_.Add(call, call->start);
    Dispatch(call);
    return std::make_unique<CallHandle>(std::move(call));
  }

  const authz::ExtAuthzProvider& provider() const override { return provider_; }

  // Sends `call` on the current connection, dialling one when there is none usable.
  void Dispatch(const std::shared_ptr<Call>& call) {
    if (call->finished) return;
    if (current_ == nullptr || !current_->usable()) {
      auto conn = std::make_shared<Connection>(this, alive_, loop_);
      if (absl::Status s = conn->Start(connector_); !s.ok()) {
        Finish(call, {}, absl::StrCat("cannot talk to the authorizer: ", s.message()));
        return;
      }
      connections_.push_back(conn);
      current_ = conn;
    }
    current_->Submit(call, authority_, timeout_header_);
    // A connect that failed at once leaves a dead connection with nothing on it.
    if (current_ != nullptr && !current_->usable() && current_->idle()) Retire(current_.get());
  }

  // Leaves the deadline list (a cancelled check).
  void Untrack(Call* call) { deadlines_.Remove(call); }

  // Schedules `done` with the answer (or, when `error` is set, with an error saying so).
  void Finish(const std::shared_ptr<Call>& call, AuthzCheckResponse response,
              const std::string& error) {
    if (call->finished) return;
    call->finished = true;
    Untrack(call.get());
    if (!error.empty()) {
      response = AuthzCheckResponse{};
      response.detail = error;
    }
    response.latency = clock_->Now() - call->start;
    // The authorizer enforces the same deadline (grpc-timeout) and may give up a moment before
    // our timer fires: whatever failed at the deadline failed because of it.
    if (response.outcome == AuthzCheckResponse::Outcome::kError &&
        response.latency >= provider_.timeout && !absl::StartsWith(response.detail, "timeout")) {
      response.detail = absl::StrCat("timeout after ", absl::FormatDuration(provider_.timeout),
                                     " (", response.detail, ")");
    }
    // Always from the loop: never from inside Check, nor inside nghttp2's callbacks.
    loop_->Defer([call, response = std::move(response)]() mutable {
      if (call->done == nullptr) return;  // cancelled in between
      auto done = std::move(call->done);
      call->done = nullptr;
      done(std::move(response));
    });
  }

  // A dead or drained connection: forget it once the current batch of events is over.
  void Retire(Connection* conn) {
    for (auto it = connections_.begin(); it != connections_.end(); ++it) {
      if (it->get() != conn) continue;
      std::shared_ptr<Connection> keep = *it;
      connections_.erase(it);
      if (current_.get() == conn) current_ = nullptr;
      keep->Detach();
      loop_->Defer([keep] {});
      return;
    }
  }

 private:
  authz::ExtAuthzProvider provider_;
  UpstreamConnector* connector_;
  EventLoop* loop_;
  const Clock* clock_;
  std::string authority_;
  std::string timeout_header_;
  std::shared_ptr<Connection> current_;
  std::list<std::shared_ptr<Connection>> connections_;  // current_ and draining ones
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  DeadlineList<Call> deadlines_{
      loop_, clock_, provider_.timeout, [this](const std::shared_ptr<Call>& c) {
        if (auto conn = c->conn.lock()) conn->Reset(c.get());
        Finish(c, {}, absl::StrCat("timeout after ", absl::FormatDuration(provider_.timeout)));
      }};
};

CallHandle::~CallHandle() {
  call_->done = nullptr;
  if (call_->finished) return;
  call_->finished = true;
  if (call_->client_alive.lock() != nullptr) call_->client->Untrack(call_.get());
  if (auto conn = call_->conn.lock()) conn->Reset(call_.get());
}

absl::Status Connection::Start(UpstreamConnector* connector) {
  nghttp2_session_callbacks* cbs;
  if (nghttp2_session_callbacks_new(&cbs) != 0) return absl::ResourceExhaustedError("nghttp2");
  nghttp2_session_callbacks_set_on_header_callback(cbs, OnHeader);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, OnDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, OnStreamClose);
  nghttp2_option* opt;
  if (nghttp2_option_new(&opt) != 0) {
    nghttp2_session_callbacks_del(cbs);
    return absl::ResourceExhaustedError("nghttp2");
  }
  nghttp2_option_set_max_settings(opt, 32);
  nghttp2_option_set_max_continuations(opt, 8);
  nghttp2_option_set_no_closed_streams(opt, 1);
  int rv = nghttp2_session_client_new2(&h2_, cbs, this, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);
  if (rv != 0) {
    h2_ = nullptr;
    return absl::InternalError(absl::StrCat("nghttp2 session: ", nghttp2_strerror(rv)));
  }
  const nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                             {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 64 << 10}};
  rv = nghttp2_submit_settings(h2_, NGHTTP2_FLAG_NONE, settings, std::size(settings));
  if (rv != 0) return absl::InternalError(absl::StrCat("HTTP/2 settings: ", nghttp2_strerror(rv)));
  stream_ = connector->Connect(this);
  return absl::OkStatus();
}

void Connection::Submit(const std::shared_ptr<Call>& call, const std::string& authority,
                        const std::string& timeout) {
  auto nv = [](absl::string_view n, absl::string_view v) {
    return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(n.data())),
                      reinterpret_cast<uint8_t*>(const_cast<char*>(v.data())), n.size(), v.size(),
                      NGHTTP2_NV_FLAG_NONE};
  };
  const nghttp2_nv headers[] = {
      nv(":method", "POST"),
      nv(":scheme", "http"),
      nv(":path", grpc_internal::kCheckPath),
      nv(":authority", authority),
      nv("content-type", "application/grpc"),
      nv("te", "trailers"),
      nv("grpc-timeout", timeout),
      nv("user-agent", "ambit-waypoint"),
  };
  if (dead_) {
    if (client_ != nullptr) client_->Finish(call, {}, last_error_);
    return;
  }
  nghttp2_data_provider body{};
  body.source.ptr = call.get();
  body.read_callback = ReadBody;
  const int32_t id =
      nghttp2_submit_request(h2_, nullptr, headers, std::size(headers), &body, nullptr);
  if (id < 0) {
    if (client_ != nullptr) {
      client_->Finish(call, {}, absl::StrCat("cannot start a stream: ", nghttp2_strerror(id)));
    }
    return;
  }
  call->conn = weak_from_this();
  call->stream_id = id;
  call->sent = 0;
  call->answer = GrpcAnswer{};
  calls_[id] = call;
  Flush();
}

void Connection::Reset(Call* call) {
  // The call stays in calls_ (nghttp2 may still read its body) until the stream closes.
  auto it = calls_.find(call->stream_id);
  if (it == calls_.end() || it->second.get() != call || dead_) return;
  nghttp2_submit_rst_stream(h2_, NGHTTP2_FLAG_NONE, call->stream_id, NGHTTP2_CANCEL);
  Flush();
}

ssize_t Connection::ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                             uint32_t* flags, nghttp2_data_source* source, void*) {
  auto* call = static_cast<Call*>(source->ptr);
  const size_t n = std::min(length, call->frame.size() - call->sent);
  std::memcpy(buf, call->frame.data() + call->sent, n);
  call->sent += n;
  if (call->sent == call->frame.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(n);
}

int Connection::OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                         size_t namelen, const uint8_t* value, size_t valuelen, uint8_t,
                         void* self) {
  auto* c = static_cast<Connection*>(self);
  auto it = c->calls_.find(frame->hd.stream_id);
  if (it == c->calls_.end()) return 0;
  GrpcAnswer& a = it->second->answer;
  absl::string_view n(reinterpret_cast<const char*>(name), namelen);
  absl::string_view v(reinterpret_cast<const char*>(value), valuelen);
  const bool head = frame->headers.cat == NGHTTP2_HCAT_RESPONSE;
  if (head && n == ":status") {
    int status;
    // A 1xx head is followed by the real one; only a final status counts.
    if (absl::SimpleAtoi(v, &status) && status >= 200) a.http_status = status;
  } else if (head && n == "content-type") {
    a.content_type = std::string(v);
  } else if (n == "grpc-status") {
    a.grpc_status = std::string(v);
  } else if (n == "grpc-message") {
    a.grpc_message = std::string(v.substr(0, 1024));
  }
  return 0;
}

int Connection::OnDataChunk(nghttp2_session* session, uint8_t, int32_t stream_id,
                            const uint8_t* data, size_t len, void* self) {
  auto* c = static_cast<Connection*>(self);
  auto it = c->calls_.find(stream_id);
  if (it == c->calls_.end()) return 0;
  GrpcAnswer& a = it->second->answer;
  if (a.data_too_large) return 0;
  a.data.append(reinterpret_cast<const char*>(data), len);
  // Too large as announced by the prefix, or as arrived: stop reading it now.
  bool too_large = a.data.size() > grpc_internal::kMaxResponseMessage + 5;
  if (a.data.size() >= 5) {
    const auto* p = reinterpret_cast<const unsigned char*>(a.data.data());
    const uint32_t announced =
        (uint32_t{p[1]} << 24) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 8) | uint32_t{p[4]};
    too_large = too_large || announced > grpc_internal::kMaxResponseMessage;
  }
  if (too_large) {
    a.data_too_large = true;
    a.data.clear();
    a.data.shrink_to_fit();
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_CANCEL);
  }
  return 0;
}

int Connection::OnStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code,
                              void* self) {
  static_cast<Connection*>(self)->EndCall(stream_id, error_code);
  return 0;
}

void Connection::EndCall(int32_t stream_id, uint32_t error_code) {
  auto it = calls_.find(stream_id);
  if (it == calls_.end()) return;
  std::shared_ptr<Call> call = std::move(it->second);
  calls_.erase(it);
  if (client_ == nullptr || call->finished) return;
  if (error_code == NGHTTP2_REFUSED_STREAM && !call->retried) {
    // The authorizer never processed it (RFC 9113 §8.7): safe to send again.
    call->retried = true;
    call->conn.reset();
    // Not from inside nghttp2's callbacks: the retry may land on this very session.
    GrpcAuthorizerClient* client = client_;
    loop_->Defer([client, call, alive = client_alive_] {
      if (alive.lock() != nullptr) client->Dispatch(call);
    });
    return;
  }
  if (call->answer.data_too_large) {
    client_->Finish(call, {},
                    absl::StrCat("malformed answer: larger than ",
                                 grpc_internal::kMaxResponseMessage, " bytes"));
    return;
  }
  if (error_code != NGHTTP2_NO_ERROR && !call->answer.grpc_status.has_value()) {
    client_->Finish(
        call, {},
        absl::StrCat("the authorizer reset the stream (", nghttp2_http2_strerror(error_code), ")"));
    return;
  }
  client_->Finish(call, grpc_internal::MapAnswer(call->answer, &call->checked_headers), "");
}

void Connection::OnData(absl::string_view data) {
  if (dead_) return;
  connected_ = true;
  ssize_t rv =
      nghttp2_session_mem_recv(h2_, reinterpret_cast<const uint8_t*>(data.data()), data.size());
  if (rv < 0) {
    Die(absl::StrCat("malformed answer: HTTP/2 ", nghttp2_strerror(static_cast<int>(rv))));
    return;
  }
  Flush();
}

void Connection::Flush() {
  if (dead_) return;
  for (;;) {
    const uint8_t* out;
    ssize_t n = nghttp2_session_mem_send(h2_, &out);
    if (n < 0) {
      Die(absl::StrCat("HTTP/2 ", nghttp2_strerror(static_cast<int>(n))));
      return;
    }
    if (n == 0) break;
    stream_->Write(absl::string_view(reinterpret_cast<const char*>(out), n));
  }
  if (!dead_ && nghttp2_session_want_read(h2_) == 0 && nghttp2_session_want_write(h2_) == 0) {
    Die("the authorizer closed the HTTP/2 connection");
    return;
  }
  // Draining after a GOAWAY with nothing left: let it go.
  if (!dead_ && calls_.empty() && !usable() && client_ != nullptr) {
    dead_ = true;
    stream_->Close();
    client_->Retire(this);
  }
}

void Connection::OnEnd() {
  Die(calls_.empty() ? "the authorizer closed the connection"
                     : "the authorizer closed the connection before answering");
}

void Connection::OnError(const absl::Status& status) {
  Die(connected_ ? absl::StrCat("connection to the authorizer failed: ", status.message())
                 : absl::StrCat("connection refused: ", status.message()));
}

void Connection::Die(const std::string& why) {
  if (dead_) return;
  dead_ = true;
  last_error_ = why;
  if (stream_ != nullptr) stream_->Close(/*abort=*/true);
  auto calls = std::move(calls_);
  calls_.clear();
  GrpcAuthorizerClient* client = client_;
  if (client == nullptr) return;
  client->Retire(this);
  for (auto& [id, call] : calls) {
    if (call->finished) continue;
    client->Finish(call, {}, why);
  }
}

}  // namespace

std::unique_ptr<AuthorizerClient> NewGrpcAuthorizerClient(authz::ExtAuthzProvider provider,
                                                          UpstreamConnector* connector,
                                                          EventLoop* loop, const Clock* clock) {
  return std::make_unique<GrpcAuthorizerClient>(std::move(provider), connector, loop, clock);
}

}  // namespace ambit::waypoint
