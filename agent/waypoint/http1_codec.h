#pragma once

// HTTP/1.1 message parsing (requests from downstream, responses from upstream) and serialization.
//
// The parser is nodejs http-parser 2.9.4 (Debian `libhttp-parser-dev`): Debian 12 packages no
// llhttp, and http-parser is the parser Envoy used before llhttp, small, allocation-free and
// fuzzed for a decade; picohttpparser (not packaged) would only split the head and leave body
// framing (chunked, Content-Length) to us. http-parser alone is too lenient for a proxy that sits
// in front of other HTTP implementations, so the head goes through our own checks first
// (`ValidateHead`): the header block is bounded before it is parsed (431), obs-fold, bare LF and
// whitespace before the colon are refused, and after parsing every framing ambiguity that enables
// request smuggling is a 400 (Content-Length with Transfer-Encoding, repeated or non-numeric
// Content-Length, a Transfer-Encoding other than `chunked`, Transfer-Encoding on HTTP/1.0, no or
// several Host headers).
//
// Thread-compatible: one parser per direction of one connection.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

struct http_parser;
struct http_parser_settings;

namespace ambit::waypoint {

using HeaderList = std::vector<std::pair<std::string, std::string>>;

// Limits on what a peer may send, as Envoy's defaults.
struct Http1Limits {
  size_t max_header_bytes = 60 << 10;  // request line + headers; more is 431
  size_t max_headers = 100;            // more is 431
};

// A parsed message head. For requests `method` and `target` are set, for responses `status`.
struct MessageHead {
  std::string method;
  std::string target;  // request-target as sent (origin-form normally)
  int status = 0;
  int http_minor = 1;  // HTTP/1.<minor>
  HeaderList headers;  // names in lower case, in order, values trimmed
  bool keep_alive = true;
  bool chunked = false;
  std::optional<uint64_t> content_length;
  bool upgrade = false;          // Connection: upgrade + Upgrade (requests), 101 (responses)
  bool expect_continue = false;  // Expect: 100-continue

  // The first value of `name` (lower case), or null.
  const std::string* Find(absl::string_view name) const;
};

// Why a message was refused, with the status a server answers.
struct HttpError {
  int status = 400;
  std::string detail;  // for the access log, e.g. "content-length with transfer-encoding"
};

class Http1Sink {
 public:
  virtual ~Http1Sink() = default;
  virtual void OnHead(MessageHead head) = 0;
  virtual void OnBody(absl::string_view data) = 0;
  // The message ended. The parser stops here (`Feed` returns) until Resume(), so a pipelined
  // request waits until the current exchange is done.
  virtual void OnMessageComplete() = 0;
};

class Http1Parser {
 public:
  enum class Kind { kRequest, kResponse };
  Http1Parser(Kind kind, Http1Sink* sink, Http1Limits limits = {});
  ~Http1Parser();
  Http1Parser(const Http1Parser&) = delete;
  Http1Parser& operator=(const Http1Parser&) = delete;

  // Parses as much of `data` as it can. Returns the bytes consumed; fewer than data.size() when a
  // message completed (paused) or the head switched to an upgraded protocol (`upgraded()`: the
  // rest belongs to it). On error, `error()` is set and nothing more is parsed.
  size_t Feed(absl::string_view data);
  // Responses only: the peer closed; ends a body delimited by the close. Sets error() when a
  // message was cut short.
  void FeedEof();
  // After OnMessageComplete: ready for the next message.
  void Resume();
  // Responses only: the request was HEAD (the response has no body whatever it says).
  void ExpectNoBody() { no_body_ = true; }

  const std::optional<HttpError>& error() const { return error_; }
  bool paused() const { return paused_; }
  bool upgraded() const { return upgraded_; }
  // True between a head and its message's end.
  bool in_message() const { return in_message_; }
  // True once a head was seen for the current message (even if not complete).
  bool head_started() const { return !head_buf_.empty() || in_message_; }

 private:
  static const http_parser_settings& Settings();
  static int OnMessageBegin(http_parser* p);
  static int OnUrl(http_parser* p, const char* at, size_t len);
  static int OnStatus(http_parser* p, const char* at, size_t len);
  static int OnHeaderField(http_parser* p, const char* at, size_t len);
  static int OnHeaderValue(http_parser* p, const char* at, size_t len);
  static int OnHeadersComplete(http_parser* p);
  static int OnBodyData(http_parser* p, const char* at, size_t len);
  static int OnComplete(http_parser* p);

  void Fail(int status, std::string detail);
  // Runs http-parser over `data`; returns bytes consumed.
  size_t Execute(absl::string_view data);
  int FinishHead();

  Kind kind_;
  Http1Sink* sink_;
  Http1Limits limits_;
  std::unique_ptr<http_parser> parser_;
  std::string head_buf_;  // bytes of a head not yet complete
  MessageHead head_;
  bool last_was_value_ = false;
  bool no_body_ = false;
  bool paused_ = false;
  bool upgraded_ = false;
  bool in_message_ = false;
  std::optional<HttpError> error_;
};

// Checks a complete header block (request or status line, header lines, the empty line) for the
// syntax http-parser lets through: obs-fold, bare CR or LF, whitespace or controls in a name,
// too many headers. nullopt when acceptable.
std::optional<HttpError> ValidateHeadBlock(absl::string_view block, const Http1Limits& limits);

// Checks the framing of a parsed request head (see the file comment). nullopt when acceptable.
std::optional<HttpError> ValidateRequestFraming(const MessageHead& head);

// True for the hop-by-hop headers a proxy never forwards (RFC 9110 7.6.1), plus the framing
// headers the serializer writes itself.
bool IsHopByHop(absl::string_view lower_name);

// True when `headers` has one named `lower_name`.
bool HasHeader(const HeaderList& headers, absl::string_view lower_name);

// "GET /x HTTP/1.1\r\n" + headers + "\r\n". `headers` is sent as given.
std::string SerializeRequestHead(absl::string_view method, absl::string_view target,
                                 const HeaderList& headers);
// "HTTP/1.1 <status> <reason>\r\n" + headers + "\r\n".
std::string SerializeResponseHead(int status, const HeaderList& headers);
// One chunk of a chunked body ("<hex>\r\n<data>\r\n"); empty data gives the last chunk.
std::string EncodeChunk(absl::string_view data);

// The standard reason phrase of a status code ("OK", "Forbidden", ...); "Unknown" otherwise.
absl::string_view ReasonPhrase(int status);

}  // namespace ambit::waypoint
