#pragma once

// Fetches a RequestAuthentication jwksUri for the waypoint: one blocking HTTP/1.1 GET over TLS
// (BoringSSL), the whole exchange (DNS aside, connect, handshake, request, complete answer)
// within the caller's timeout.
//
//  - TLS 1.2 or 1.3; the server's chain must verify against the system roots
//    (/etc/ssl/certs/ca-certificates.crt) or the CA file given at construction, and name the
//    host: a DNS SAN for a host name (sent as SNI too), an IP SAN for an IP literal.
//  - `http://` is fetched without TLS: istiod accepts both schemes for jwksUri
//    (pkg/config/security ParseJwksURI) and fetches either, so a RequestAuthentication that works
//    with Istio works here; `https://` is what anyone outside a lab should use. Any other
//    scheme is refused.
//  - Only a 200 answer is a key set. Redirects are not followed (a 3xx is an error naming the
//    Location), matching Envoy's remote JWKS fetcher, which also takes the URI as final.
//  - The body is at most 1 MiB (a JWKS is a few KiB); more is an error, not a truncated set.
//  - The process's own network namespace is used (the waypoint's host side), never a pod's.
//  - getaddrinfo is not bounded by the timeout (glibc's resolver has its own limits).
//
// Thread-safety: Fetch may run on several threads at once (the SSL_CTX is shared read-only).

#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/authn/jwks_provider.h"

namespace ambit::tls {

inline constexpr char kSystemRootsFile[] = "/etc/ssl/certs/ca-certificates.crt";
inline constexpr size_t kMaxJwksBody = 1 << 20;

// The parts of a jwksUri a fetch needs.
struct FetchUri {
  bool tls = true;
  std::string host;  // without brackets for IPv6
  bool host_is_ip = false;
  uint16_t port = 443;
  std::string target;     // path and query, "/" when empty
  std::string authority;  // for the Host header, as written in the URI
};

// Accepts http:// and https:// URIs with a host, an optional port and no userinfo; the fragment
// is dropped (never sent). Errors name the URI.
absl::StatusOr<FetchUri> ParseFetchUri(absl::string_view uri);

// An HTTP/1.1 response read incrementally (http-parser): Content-Length, chunked, or to the end
// of the connection. Stops with an error at the first status other than 200 (redirects named),
// at a body over max_body, or at malformed bytes.
class HttpResponseReader {
 public:
  explicit HttpResponseReader(size_t max_body = kMaxJwksBody);
  ~HttpResponseReader();
  HttpResponseReader(const HttpResponseReader&) = delete;
  HttpResponseReader& operator=(const HttpResponseReader&) = delete;

  // Feeds received bytes; an empty `data` means the peer closed the connection.
  absl::Status Feed(absl::string_view data);
  // The whole response has arrived.
  bool done() const { return done_; }
  std::string TakeBody() { return std::move(body_); }

 private:
  struct Parser;
  friend struct Parser;
  std::unique_ptr<Parser> parser_;
  size_t max_body_;
  int status_ = 0;
  bool done_ = false;
  std::string location_;
  std::string header_name_;
  bool in_location_ = false;
  absl::Status error_;
  std::string body_;
};

// The body of a complete 200 response in `bytes` (ending at the peer's close); for tests and
// the fuzz target.
absl::StatusOr<std::string> ParseHttpResponse(absl::string_view bytes,
                                              size_t max_body = kMaxJwksBody);

struct HttpsFetcherOptions {
  std::string ca_file;  // PEM roots; empty: kSystemRootsFile
  size_t max_body = kMaxJwksBody;
};

class HttpsJwksFetcher final : public authn::JwksFetcher {
 public:
  static absl::StatusOr<std::unique_ptr<HttpsJwksFetcher>> Create(HttpsFetcherOptions options);

  absl::StatusOr<std::string> Fetch(const std::string& uri, absl::Duration timeout) override;

 private:
  HttpsJwksFetcher(bssl::UniquePtr<SSL_CTX> ctx, HttpsFetcherOptions options)
      : ctx_(std::move(ctx)), options_(std::move(options)) {}

  bssl::UniquePtr<SSL_CTX> ctx_;
  HttpsFetcherOptions options_;
};

}  // namespace ambit::tls
