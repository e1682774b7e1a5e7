#include "agent/waypoint/http1_codec.h"

#include <http_parser.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace ambit::waypoint {
namespace {

Http1Parser* Self(http_parser* p) { return static_cast<Http1Parser*>(p->data); }

// RFC 9110 5.6.2 tchar.
bool IsTokenChar(char c) {
  if (absl::ascii_isalnum(static_cast<unsigned char>(c))) return true;
  return absl::string_view("!#$%&'*+-.^_`|~").find(c) != absl::string_view::npos;
}

}  // namespace

const std::string* MessageHead::Find(absl::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k == name) return &v;
  }
  return nullptr;
}

Http1Parser::Http1Parser(Kind kind, Http1Sink* sink, Http1Limits limits)
    : kind_(kind), sink_(sink), limits_(limits), parser_(std::make_unique<http_parser>()) {
  http_parser_init(parser_.get(), kind == Kind::kRequest ? HTTP_REQUEST : HTTP_RESPONSE);
  parser_->data = this;
}

Http1Parser::~Http1Parser() = default;

void Http1Parser::Fail(int status, std::string detail) {
  if (!error_) error_ = HttpError{status, std::move(detail)};
}

size_t Http1Parser::Feed(absl::string_view data) {
  if (error_ || paused_ || upgraded_) return 0;
  size_t consumed = 0;
  while (consumed < data.size() && !error_ && !paused_ && !upgraded_) {
    absl::string_view rest = data.substr(consumed);
    if (in_message_) {
      consumed += Execute(rest);
      continue;
    }
    // Collecting a head: it is bounded and checked before http-parser sees it.
    if (head_buf_.empty()) {
      // RFC 9112 2.2: empty lines before a request line are ignored.
      size_t skip = 0;
      while (skip < rest.size() && (rest[skip] == '\r' || rest[skip] == '\n')) ++skip;
      if (skip > 4) return Fail(400, "empty lines before the request line"), consumed;
      consumed += skip;
      rest.remove_prefix(skip);
      if (rest.empty()) break;
    }
    const size_t before = head_buf_.size();
    // Look for the end of the head in what we have plus the new bytes, bounded by the limit.
    const size_t room = limits_.max_header_bytes + 4 - std::min(before, limits_.max_header_bytes);
    head_buf_.append(rest.data(), std::min(rest.size(), room));
    size_t end = head_buf_.find("\r\n\r\n", before >= 3 ? before - 3 : 0);
    if (end == std::string::npos) {
      if (head_buf_.size() > limits_.max_header_bytes) {
        return Fail(431, "request headers too large"), consumed;
      }
      for (size_t i = before; i < head_buf_.size(); ++i) {
        const auto c = static_cast<unsigned char>(head_buf_[i]);
        if (c == '\n' && (i == 0 || head_buf_[i - 1] != '\r')) {
          return Fail(400, "bare LF in the header block"), consumed;
        }
        // Not HTTP (TLS, binary): refused at once instead of waiting for a head that never ends.
        if ((c < 0x20 && c != '\r' && c != '\n' && c != '\t') || c == 0x7f ||
            (i == 0 && !IsTokenChar(static_cast<char>(c)))) {
          return Fail(400, "not an HTTP/1 message"), consumed;
        }
      }
      consumed += head_buf_.size() - before;
      continue;
    }
    end += 4;
    if (end > limits_.max_header_bytes + 4) return Fail(431, "request headers too large"), consumed;
    const size_t taken = end - before;  // of `rest`
    head_buf_.resize(end);
    if (auto bad = ValidateHeadBlock(head_buf_, limits_)) {
      error_ = std::move(bad);
      return consumed;
    }
    std::string block = std::move(head_buf_);
    head_buf_.clear();
    in_message_ = true;
    size_t parsed = Execute(block);
    if (!error_ && parsed != block.size() && !paused_ && !upgraded_) {
      Fail(400, "malformed message head");
    }
    consumed += taken;
  }
  return consumed;
}

size_t Http1Parser::Execute(absl::string_view data) {
  size_t n = http_parser_execute(parser_.get(), &Settings(), data.data(), data.size());
  const auto err = static_cast<http_errno>(parser_->http_errno);
  if (err == HPE_PAUSED) {
    // on_message_complete paused after consuming its last byte.
    return n;
  }
  if (err != HPE_OK) {
    if (!error_) {
      int status = kind_ == Kind::kRequest ? 400 : 502;
      Fail(status, absl::StrCat("malformed HTTP/1: ", http_errno_description(err)));
    }
    return n;
  }
  if (parser_->upgrade) {
    upgraded_ = true;
    return n;
  }
  return n;
}

void Http1Parser::FeedEof() {
  if (error_ || upgraded_) return;
  if (!in_message_) {
    if (!head_buf_.empty()) Fail(kind_ == Kind::kRequest ? 400 : 502, "message head cut short");
    return;
  }
  http_parser_execute(parser_.get(), &Settings(), nullptr, 0);
  const auto err = static_cast<http_errno>(parser_->http_errno);
  if (err != HPE_OK && err != HPE_PAUSED) {
    Fail(kind_ == Kind::kRequest ? 400 : 502,
         absl::StrCat("message cut short: ", http_errno_description(err)));
  } else if (in_message_) {
    Fail(kind_ == Kind::kRequest ? 400 : 502, "message cut short");
  }
}

void Http1Parser::Resume() {
  if (!paused_) return;
  paused_ = false;
  http_parser_pause(parser_.get(), 0);
}

int Http1Parser::OnMessageBegin(http_parser* p) {
  Http1Parser* self = Self(p);
  self->head_ = MessageHead{};
  self->last_was_value_ = false;
  return 0;
}

int Http1Parser::OnUrl(http_parser* p, const char* at, size_t len) {
  Self(p)->head_.target.append(at, len);
  return 0;
}

int Http1Parser::OnStatus(http_parser*, const char*, size_t) { return 0; }

int Http1Parser::OnHeaderField(http_parser* p, const char* at, size_t len) {
  Http1Parser* self = Self(p);
  if (self->last_was_value_ || self->head_.headers.empty()) {
    self->head_.headers.emplace_back();
  }
  self->last_was_value_ = false;
  self->head_.headers.back().first.append(at, len);
  return 0;
}

int Http1Parser::OnHeaderValue(http_parser* p, const char* at, size_t len) {
  Http1Parser* self = Self(p);
  if (self->head_.headers.empty()) return 1;
  self->last_was_value_ = true;
  self->head_.headers.back().second.append(at, len);
  return 0;
}

int Http1Parser::FinishHead() {
  http_parser* p = parser_.get();
  MessageHead& h = head_;
  for (auto& [name, value] : h.headers) {
    absl::AsciiStrToLower(&name);
    value = std::string(absl::StripAsciiWhitespace(value));
  }
  h.http_minor = p->http_minor;
  if (p->http_major != 1) {
    Fail(505, "HTTP version not supported");
    return -1;
  }
  if (kind_ == Kind::kRequest) {
    h.method = http_method_str(static_cast<http_method>(p->method));
    if (p->method == HTTP_CONNECT) {
      Fail(405, "CONNECT is not proxied by the waypoint");
      return -1;
    }
    if (auto bad = ValidateRequestFraming(h)) {
      error_ = std::move(bad);
      return -1;
    }
  } else {
    h.status = p->status_code;
    // Upstream framing must be unambiguous too, or the response could desynchronize the
    // connection; the same checks apply (Host aside).
    int te = 0, cl = 0;
    for (const auto& [k, v] : h.headers) {
      te += k == "transfer-encoding";
      cl += k == "content-length";
    }
    if ((te > 0 && cl > 0) || cl > 1 || te > 1) {
      Fail(502, "upstream response with ambiguous framing");
      return -1;
    }
  }
  h.chunked = (p->flags & F_CHUNKED) != 0;
  if (const std::string* cl = h.Find("content-length")) {
    uint64_t n = 0;
    if (absl::SimpleAtoi(*cl, &n)) h.content_length = n;
  }
  // http-parser recognizes framing headers with its own matcher (it once took
  // "Transfer-Encodingr-Encoding" for Transfer-Encoding). The body is framed by what the parser
  // saw, so its view and ours must agree, or the message is refused as ambiguous.
  const std::string* te = h.Find("transfer-encoding");
  const bool our_chunked = te != nullptr && absl::EqualsIgnoreCase(*te, "chunked");
  const bool parser_cl = (p->flags & F_CONTENTLENGTH) != 0;
  if (h.chunked != our_chunked || parser_cl != h.content_length.has_value() ||
      (parser_cl && !h.chunked && p->content_length != *h.content_length)) {
    Fail(kind_ == Kind::kRequest ? 400 : 502, "ambiguous message framing");
    return -1;
  }
  h.keep_alive = http_should_keep_alive(p) != 0;
  if (kind_ == Kind::kRequest) {
    h.upgrade = (p->flags & F_UPGRADE) && (p->flags & F_CONNECTION_UPGRADE);
    if (const std::string* e = h.Find("expect")) {
      h.expect_continue = absl::EqualsIgnoreCase(*e, "100-continue");
    }
  } else {
    h.upgrade = h.status == 101;
  }
  sink_->OnHead(std::move(h));
  head_ = MessageHead{};
  // A response to HEAD (or 1xx/204/304, which http-parser knows) has no body.
  return (kind_ == Kind::kResponse && no_body_) ? 1 : 0;
}

int Http1Parser::OnHeadersComplete(http_parser* p) { return Self(p)->FinishHead(); }

int Http1Parser::OnBodyData(http_parser* p, const char* at, size_t len) {
  Self(p)->sink_->OnBody(absl::string_view(at, len));
  return 0;
}

int Http1Parser::OnComplete(http_parser* p) {
  Http1Parser* self = Self(p);
  self->in_message_ = false;
  self->no_body_ = false;
  self->paused_ = true;
  http_parser_pause(p, 1);
  self->sink_->OnMessageComplete();
  return 0;
}

const http_parser_settings& Http1Parser::Settings() {
  static const http_parser_settings kSettings = [] {
    http_parser_settings s{};
    s.on_message_begin = &Http1Parser::OnMessageBegin;
    s.on_url = &Http1Parser::OnUrl;
    s.on_status = &Http1Parser::OnStatus;
    s.on_header_field = &Http1Parser::OnHeaderField;
    s.on_header_value = &Http1Parser::OnHeaderValue;
    s.on_headers_complete = &Http1Parser::OnHeadersComplete;
    s.on_body = &Http1Parser::OnBodyData;
    s.on_message_complete = &Http1Parser::OnComplete;
    return s;
  }();
  return kSettings;
}

std::optional<HttpError> ValidateHeadBlock(absl::string_view block, const Http1Limits& limits) {
  if (block.size() > limits.max_header_bytes + 4) {
    return HttpError{431, "request headers too large"};
  }
  size_t headers = 0;
  bool first = true;
  for (absl::string_view line : absl::StrSplit(block, "\r\n")) {
    if (first) {
      first = false;
      // The same refusal Feed applies to a head that arrives in pieces, so how the bytes were
      // split never changes the verdict (http-parser takes controls in a reason phrase).
      for (char c : line) {
        const auto u = static_cast<unsigned char>(c);
        if ((u < 0x20 && c != '\t') || u == 0x7f) {
          return HttpError{400, "control character in the start line"};
        }
      }
      continue;
    }
    if (line.empty()) continue;
    if (line.find('\r') != absl::string_view::npos || line.find('\n') != absl::string_view::npos) {
      return HttpError{400, "bare CR or LF in the header block"};
    }
    if (line[0] == ' ' || line[0] == '\t')
      return HttpError{400, "obsolete line folding (obs-fold)"};
    size_t colon = line.find(':');
    if (colon == absl::string_view::npos || colon == 0) {
      return HttpError{400, "header line without a name"};
    }
    const absl::string_view name = line.substr(0, colon);
    for (char c : name) {
      if (!IsTokenChar(c)) return HttpError{400, "invalid character in a header name"};
    }
    // http-parser's name matcher depends on case: it reads "transfer-encodingr-encoding" as
    // Transfer-Encoding but "Transfer-Encodingr-Encoding" not (found by fuzzing). A name that
    // merely starts like a framing header could be framing to one server and not to another.
    for (absl::string_view framing : {"content-length", "transfer-encoding"}) {
      if (name.size() > framing.size() && absl::StartsWithIgnoreCase(name, framing)) {
        return HttpError{400, "header name resembling a framing header"};
      }
    }
    for (char c : line.substr(colon + 1)) {
      const auto u = static_cast<unsigned char>(c);
      if ((u < 0x20 && c != '\t') || u == 0x7f) {
        return HttpError{400, "control character in a header value"};
      }
    }
    if (++headers > limits.max_headers) return HttpError{431, "too many request headers"};
  }
  return std::nullopt;
}

std::optional<HttpError> ValidateRequestFraming(const MessageHead& head) {
  int content_length = 0, transfer_encoding = 0, host = 0;
  const std::string* te = nullptr;
  for (const auto& [k, v] : head.headers) {
    if (k == "content-length") {
      ++content_length;
      uint64_t n = 0;
      if (v.empty() || !std::all_of(v.begin(), v.end(), absl::ascii_isdigit) ||
          !absl::SimpleAtoi(v, &n)) {
        return HttpError{400, "invalid content-length"};
      }
    } else if (k == "transfer-encoding") {
      ++transfer_encoding;
      te = &v;
    } else if (k == "host") {
      ++host;
    }
  }
  if (content_length > 1) return HttpError{400, "repeated content-length"};
  if (transfer_encoding > 0 && content_length > 0) {
    return HttpError{400, "content-length with transfer-encoding"};
  }
  if (transfer_encoding > 1) return HttpError{400, "repeated transfer-encoding"};
  if (te != nullptr) {
    if (head.http_minor == 0) return HttpError{400, "transfer-encoding on HTTP/1.0"};
    if (!absl::EqualsIgnoreCase(*te, "chunked")) {
      return HttpError{501, "transfer-encoding other than chunked"};
    }
  }
  // HTTP/1.0 may omit Host, but never repeat it: the request goes upstream as HTTP/1.1.
  if (host > 1) return HttpError{400, "repeated host header"};
  if (head.http_minor >= 1 && host == 0) return HttpError{400, "no host header"};
  if (head.target.empty() || (head.target[0] != '/' && head.target != "*" &&
                              !absl::StartsWithIgnoreCase(head.target, "http://"))) {
    return HttpError{400, "unsupported request-target form"};
  }
  return std::nullopt;
}

bool IsHopByHop(absl::string_view n) {
  return n == "connection" || n == "keep-alive" || n == "proxy-connection" || n == "te" ||
         n == "trailer" || n == "transfer-encoding" || n == "upgrade" || n == "content-length" ||
         n == "expect" || n == "http2-settings";
}

std::string SerializeRequestHead(absl::string_view method, absl::string_view target,
                                 const HeaderList& headers) {
  std::string out = absl::StrCat(method, " ", target, " HTTP/1.1\r\n");
  for (const auto& [k, v] : headers) absl::StrAppend(&out, k, ": ", v, "\r\n");
  out += "\r\n";
  return out;
}

std::string SerializeResponseHead(int status, const HeaderList& headers) {
  std::string out = absl::StrCat("HTTP/1.1 ", status, " ", ReasonPhrase(status), "\r\n");
  for (const auto& [k, v] : headers) absl::StrAppend(&out, k, ": ", v, "\r\n");
  out += "\r\n";
  return out;
}

std::string EncodeChunk(absl::string_view data) {
  if (data.empty()) return "0\r\n\r\n";
  return absl::StrCat(absl::Hex(data.size()), "\r\n", data, "\r\n");
}

absl::string_view ReasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 101:
      return "Switching Protocols";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 204:
      return "No Content";
    case 206:
      return "Partial Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Payload Too Large";
    case 426:
      return "Upgrade Required";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Unknown";
  }
}

}  // namespace ambit::waypoint
