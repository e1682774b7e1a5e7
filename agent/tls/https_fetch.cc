#include "agent/tls/https_fetch.h"

#include <arpa/inet.h>
#include <http_parser.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "agent/common/status.h"
#include "agent/common/unique_fd.h"

namespace ambit::tls {
namespace {

std::string SslErrors() {
  std::string out;
  while (uint32_t e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no detail" : out;
}

absl::Duration Remaining(absl::Time deadline) { return deadline - absl::Now(); }

// Waits for fd to become ready for `events` until the deadline.
absl::Status WaitFor(int fd, short events, absl::Time deadline, absl::string_view what) {
  while (true) {
    const absl::Duration left = Remaining(deadline);
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat("timed out ", what));
    }
    pollfd p{fd, events, 0};
    const int ms = static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(left)));
    const int n = poll(&p, 1, ms);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::ErrnoToStatus(errno, "poll");
    if (n > 0) return absl::OkStatus();
  }
}

absl::StatusOr<UniqueFd> Connect(const FetchUri& u, absl::Time deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  // AI_ADDRCONFIG skips address families the host cannot reach, but an IP literal is taken as
  // written (loopback-only namespaces would otherwise resolve nothing).
  hints.ai_flags = u.host_is_ip ? AI_NUMERICHOST : AI_ADDRCONFIG;
  addrinfo* res = nullptr;
  const std::string port = absl::StrCat(u.port);
  if (int rc = getaddrinfo(u.host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(absl::StrCat("resolving ", u.host, ": ", gai_strerror(rc)));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> owner(res, &freeaddrinfo);
  absl::Status last = absl::UnavailableError(absl::StrCat(u.host, " has no address"));
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) {
      last = absl::ErrnoToStatus(errno, "socket");
      continue;
    }
    if (connect(fd.get(), ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
      last = absl::ErrnoToStatus(errno, absl::StrCat("connect to ", u.authority));
      continue;
    }
    if (absl::Status s = WaitFor(fd.get(), POLLOUT, deadline, "connecting"); !s.ok()) return s;
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      last = absl::ErrnoToStatus(err, absl::StrCat("connect to ", u.authority));
      continue;
    }
    return fd;
  }
  return last;
}

// One connection, plain or TLS, with every operation bounded by the deadline.
class Channel {
 public:
  Channel(UniqueFd fd, bssl::UniquePtr<SSL> ssl, absl::Time deadline)
      : fd_(std::move(fd)), ssl_(std::move(ssl)), deadline_(deadline) {}

  absl::Status Handshake() {
    if (!ssl_) return absl::OkStatus();
    while (true) {
      const int rc = SSL_connect(ssl_.get());
      if (rc == 1) return absl::OkStatus();
      AMBIT_RETURN_IF_ERROR(WaitOrFail(rc, "TLS handshake"));
    }
  }

  absl::Status WriteAll(absl::string_view data) {
    while (!data.empty()) {
      if (ssl_) {
        const int rc = SSL_write(ssl_.get(), data.data(), static_cast<int>(data.size()));
        if (rc > 0) {
          data.remove_prefix(static_cast<size_t>(rc));
          continue;
        }
        AMBIT_RETURN_IF_ERROR(WaitOrFail(rc, "sending the request"));
      } else {
        const ssize_t n = send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
        if (n > 0) {
          data.remove_prefix(static_cast<size_t>(n));
          continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
          return absl::ErrnoToStatus(errno, "sending the request");
        }
        AMBIT_RETURN_IF_ERROR(WaitFor(fd_.get(), POLLOUT, deadline_, "sending the request"));
      }
    }
    return absl::OkStatus();
  }

  // Some bytes, or an empty string at the end of the stream.
  absl::StatusOr<std::string> Read() {
    char buf[16384];
    while (true) {
      if (ssl_) {
        const int rc = SSL_read(ssl_.get(), buf, sizeof(buf));
        if (rc > 0) return std::string(buf, static_cast<size_t>(rc));
        const int err = SSL_get_error(ssl_.get(), rc);
        if (err == SSL_ERROR_ZERO_RETURN) return std::string();
        // A close without close_notify ends the stream too: many servers (Python's among them)
        // skip it. Truncation cannot forge a key set: a body framed by length or chunks is
        // complete before this point, and a cut read-until-close JWKS is bad JSON or holds
        // fewer keys, which only rejects more tokens.
        if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) return std::string();
        AMBIT_RETURN_IF_ERROR(WaitOrFail(rc, "reading the response"));
      } else {
        const ssize_t n = recv(fd_.get(), buf, sizeof(buf), 0);
        if (n > 0) return std::string(buf, static_cast<size_t>(n));
        if (n == 0) return std::string();
        if (errno != EAGAIN && errno != EINTR) {
          return absl::ErrnoToStatus(errno, "reading the response");
        }
        AMBIT_RETURN_IF_ERROR(WaitFor(fd_.get(), POLLIN, deadline_, "reading the response"));
      }
    }
  }

 private:
  absl::Status WaitOrFail(int rc, absl::string_view what) {
    switch (SSL_get_error(ssl_.get(), rc)) {
      case SSL_ERROR_WANT_READ:
        return WaitFor(fd_.get(), POLLIN, deadline_, absl::StrCat("in ", what));
      case SSL_ERROR_WANT_WRITE:
        return WaitFor(fd_.get(), POLLOUT, deadline_, absl::StrCat("in ", what));
      case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0) {
          return absl::UnavailableError(absl::StrCat(what, ": the connection closed (",
                                                     errno ? strerror(errno) : "EOF", ")"));
        }
        [[fallthrough]];
      default: {
        std::string detail = SslErrors();
        const long verify = SSL_get_verify_result(ssl_.get());
        if (verify != X509_V_OK) {
          absl::StrAppend(&detail, "; certificate: ", X509_verify_cert_error_string(verify));
        }
        return absl::UnavailableError(absl::StrCat(what, " failed: ", detail));
      }
    }
  }

  UniqueFd fd_;
  bssl::UniquePtr<SSL> ssl_;
  absl::Time deadline_;
};

}  // namespace

absl::StatusOr<FetchUri> ParseFetchUri(absl::string_view uri) {
  auto bad = [uri](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("jwksUri \"", uri, "\": ", why));
  };
  FetchUri u;
  absl::string_view rest = uri;
  const size_t colon = rest.find("://");
  if (colon == absl::string_view::npos) return bad("not an absolute http(s) URI");
  const std::string scheme = absl::AsciiStrToLower(rest.substr(0, colon));
  if (scheme == "https") {
    u.tls = true;
    u.port = 443;
  } else if (scheme == "http") {
    u.tls = false;
    u.port = 80;
  } else {
    return bad(absl::StrCat("scheme \"", scheme, "\" is not supported (http or https)"));
  }
  rest.remove_prefix(colon + 3);
  if (size_t hash = rest.find('#'); hash != absl::string_view::npos) rest = rest.substr(0, hash);
  const size_t slash = rest.find_first_of("/?");
  absl::string_view authority = rest.substr(0, slash);
  u.target = slash == absl::string_view::npos ? "/" : std::string(rest.substr(slash));
  if (u.target[0] == '?') u.target.insert(0, "/");
  for (char c : u.target) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      return bad("the path holds a space or control character");
    }
  }
  if (authority.find('@') != absl::string_view::npos) return bad("userinfo is not allowed");
  if (authority.empty()) return bad("no host");
  u.authority = std::string(authority);
  absl::string_view host = authority;
  absl::string_view port;
  if (host[0] == '[') {
    const size_t close = host.find(']');
    if (close == absl::string_view::npos) return bad("unterminated IPv6 literal");
    port = host.substr(close + 1);
    host = host.substr(1, close - 1);
    if (!port.empty() && port[0] != ':') return bad("junk after the IPv6 literal");
    if (!port.empty()) port.remove_prefix(1);
    in6_addr a6;
    if (inet_pton(AF_INET6, std::string(host).c_str(), &a6) != 1) return bad("bad IPv6 literal");
    u.host_is_ip = true;
  } else {
    if (size_t c = host.rfind(':'); c != absl::string_view::npos) {
      port = host.substr(c + 1);
      host = host.substr(0, c);
    }
    in_addr a4;
    u.host_is_ip = inet_pton(AF_INET, std::string(host).c_str(), &a4) == 1;
  }
  if (host.empty()) return bad("no host");
  for (char c : host) {
    const bool v6 = u.host_is_ip && c == ':';  // only inside brackets, checked above
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_' &&
        !v6) {
      return bad("the host has characters a host name cannot have");
    }
  }
  u.host = std::string(host);
  if (!port.empty()) {
    uint32_t p = 0;
    if (!absl::SimpleAtoi(port, &p) || p == 0 || p > 65535) return bad("bad port");
    u.port = static_cast<uint16_t>(p);
  }
  return u;
}

// ---------------------------------------------------------------- response reader

struct HttpResponseReader::Parser {
  http_parser parser;
  http_parser_settings settings;

  static HttpResponseReader* Self(http_parser* p) {
    return static_cast<HttpResponseReader*>(p->data);
  }
  static int OnHeaderField(http_parser* p, const char* at, size_t len) {
    HttpResponseReader* r = Self(p);
    if (r->in_location_) r->in_location_ = false;
    r->header_name_.append(at, len);
    return 0;
  }
  static int OnHeaderValue(http_parser* p, const char* at, size_t len) {
    HttpResponseReader* r = Self(p);
    if (!r->header_name_.empty()) {
      r->in_location_ = absl::EqualsIgnoreCase(r->header_name_, "location");
      r->header_name_.clear();
    }
    if (r->in_location_ && r->location_.size() < 512) r->location_.append(at, len);
    return 0;
  }
  static int OnHeadersComplete(http_parser* p) {
    HttpResponseReader* r = Self(p);
    r->status_ = static_cast<int>(p->status_code);
    if (r->status_ == 200) return 0;
    if (r->status_ >= 300 && r->status_ < 400) {
      r->error_ = absl::FailedPreconditionError(
          absl::StrCat("the server answered ", r->status_, " (redirect to \"", r->location_,
                       "\"); redirects are not followed: set jwksUri to the final URI"));
    } else {
      r->error_ = absl::FailedPreconditionError(
          absl::StrCat("the server answered ", r->status_, ", not 200"));
    }
    return 1;
  }
  static int OnBody(http_parser* p, const char* at, size_t len) {
    HttpResponseReader* r = Self(p);
    if (r->body_.size() + len > r->max_body_) {
      r->error_ = absl::ResourceExhaustedError(
          absl::StrCat("the body is larger than ", r->max_body_, " bytes"));
      return 1;
    }
    r->body_.append(at, len);
    return 0;
  }
  static int OnMessageComplete(http_parser* p) {
    Self(p)->done_ = true;
    // One response per connection: anything after it is not ours to read.
    http_parser_pause(p, 1);
    return 0;
  }
};

HttpResponseReader::HttpResponseReader(size_t max_body)
    : parser_(std::make_unique<Parser>()), max_body_(max_body) {
  http_parser_init(&parser_->parser, HTTP_RESPONSE);
  parser_->parser.data = this;
  http_parser_settings_init(&parser_->settings);
  parser_->settings.on_header_field = &Parser::OnHeaderField;
  parser_->settings.on_header_value = &Parser::OnHeaderValue;
  parser_->settings.on_headers_complete = &Parser::OnHeadersComplete;
  parser_->settings.on_body = &Parser::OnBody;
  parser_->settings.on_message_complete = &Parser::OnMessageComplete;
}

HttpResponseReader::~HttpResponseReader() = default;

absl::Status HttpResponseReader::Feed(absl::string_view data) {
  if (!error_.ok()) return error_;
  if (done_) return absl::OkStatus();
  const size_t n =
      http_parser_execute(&parser_->parser, &parser_->settings, data.data(), data.size());
  if (!error_.ok()) return error_;
  if (done_) return absl::OkStatus();
  const auto errno_code = HTTP_PARSER_ERRNO(&parser_->parser);
  if (errno_code != HPE_OK || n != data.size()) {
    error_ = absl::DataLossError(
        absl::StrCat("malformed HTTP response: ", http_errno_description(errno_code)));
    return error_;
  }
  if (data.empty()) {
    // The peer closed before the response was complete.
    error_ = absl::DataLossError(status_ == 0 ? "the connection closed before a response"
                                              : "the connection closed mid-response");
    return error_;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ParseHttpResponse(absl::string_view bytes, size_t max_body) {
  HttpResponseReader reader(max_body);
  AMBIT_RETURN_IF_ERROR(reader.Feed(bytes));
  if (!reader.done()) AMBIT_RETURN_IF_ERROR(reader.Feed(absl::string_view()));
  return reader.TakeBody();
}

// ---------------------------------------------------------------- fetcher

absl::StatusOr<std::unique_ptr<HttpsJwksFetcher>> HttpsJwksFetcher::Create(
    HttpsFetcherOptions options) {
  if (options.ca_file.empty()) options.ca_file = kSystemRootsFile;
  bssl::UniquePtr<SSL_CTX> ctx(SSL_CTX_new(TLS_method()));
  if (!ctx) return absl::InternalError(absl::StrCat("SSL_CTX_new: ", SslErrors()));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (SSL_CTX_load_verify_locations(ctx.get(), options.ca_file.c_str(), nullptr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot load the CA certificates in ", options.ca_file, ": ", SslErrors()));
  }
  return std::unique_ptr<HttpsJwksFetcher>(new HttpsJwksFetcher(std::move(ctx), options));
}

absl::StatusOr<std::string> HttpsJwksFetcher::Fetch(const std::string& uri,
                                                    absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  AMBIT_ASSIGN_OR_RETURN(FetchUri u, ParseFetchUri(uri));
  auto context = [&uri](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat("GET ", uri, ": ", s.message()));
  };
  absl::StatusOr<UniqueFd> fd = Connect(u, deadline);
  if (!fd.ok()) return context(fd.status());
  bssl::UniquePtr<SSL> ssl;
  if (u.tls) {
    ssl.reset(SSL_new(ctx_.get()));
    if (!ssl) return absl::InternalError(absl::StrCat("SSL_new: ", SslErrors()));
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl.get());
    if (u.host_is_ip) {
      // An IP literal is checked against IP SANs and gets no SNI (RFC 6066 forbids it).
      if (X509_VERIFY_PARAM_set1_ip_asc(param, u.host.c_str()) != 1) {
        return context(absl::InvalidArgumentError("bad IP literal"));
      }
    } else {
      X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      if (X509_VERIFY_PARAM_set1_host(param, u.host.data(), u.host.size()) != 1 ||
          SSL_set_tlsext_host_name(ssl.get(), u.host.c_str()) != 1) {
        return context(absl::InvalidArgumentError("bad host name"));
      }
    }
    if (SSL_set_fd(ssl.get(), fd->get()) != 1) {
      return absl::InternalError(absl::StrCat("SSL_set_fd: ", SslErrors()));
    }
  }
  Channel ch(*std::move(fd), std::move(ssl), deadline);
  if (absl::Status s = ch.Handshake(); !s.ok()) return context(s);
  const std::string request =
      absl::StrCat("GET ", u.target, " HTTP/1.1\r\nhost: ", u.authority,
                   "\r\naccept: application/json\r\nuser-agent: ambit-waypoint\r\n"
                   "connection: close\r\n\r\n");
  if (absl::Status s = ch.WriteAll(request); !s.ok()) return context(s);
  HttpResponseReader reader(options_.max_body);
  while (!reader.done()) {
    absl::StatusOr<std::string> data = ch.Read();
    if (!data.ok()) return context(data.status());
    if (absl::Status s = reader.Feed(*data); !s.ok()) return context(s);
  }
  return reader.TakeBody();
}

}  // namespace ambit::tls
