#include "agent/tls/https_fetch.h"

#include <string>

#include "gtest/gtest.h"

namespace ambit::tls {
namespace {

TEST(ParseFetchUriTest, SchemesHostsPortsAndTargets) {
  auto u = ParseFetchUri("https://issuer.example.com/.well-known/jwks.json?x=1#frag");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_TRUE(u->tls);
  EXPECT_EQ(u->host, "issuer.example.com");
  EXPECT_FALSE(u->host_is_ip);
  EXPECT_EQ(u->port, 443);
  EXPECT_EQ(u->target, "/.well-known/jwks.json?x=1");
  EXPECT_EQ(u->authority, "issuer.example.com");

  u = ParseFetchUri("HTTP://198.18.0.1:8080");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_FALSE(u->tls);
  EXPECT_TRUE(u->host_is_ip);
  EXPECT_EQ(u->port, 8080);
  EXPECT_EQ(u->target, "/");

  u = ParseFetchUri("https://[2001:2::1]:8443?q");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->host, "2001:2::1");
  EXPECT_TRUE(u->host_is_ip);
  EXPECT_EQ(u->port, 8443);
  EXPECT_EQ(u->target, "/?q");
  EXPECT_EQ(u->authority, "[2001:2::1]:8443");
}

TEST(ParseFetchUriTest, RefusesWhatIsNotAnHttpUri) {
  for (const char* bad :
       {"", "jwks.json", "ftp://h/x", "file:///etc/passwd", "https://", "https:///x",
        "https://u:p@h/x", "https://h:0/x", "https://h:65536/x", "https://h:x/", "https://[::1/x",
        "https://[zz::1]/x", "https://[::1]x/", "https://h/a b", "https://h/a\r\nx: y",
        "https://h\r\n/x", "https://h%2f/x", "https://::1/x", "https://a:b:443/x"}) {
    EXPECT_FALSE(ParseFetchUri(bad).ok()) << bad;
  }
}

TEST(ParseHttpResponseTest, FramingsAndStatuses) {
  auto body = ParseHttpResponse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(*body, "hello");

  body = ParseHttpResponse(
      "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(*body, "hello");

  // To the end of the connection.
  body = ParseHttpResponse("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(*body, "hello");

  // Bytes after the response are not read.
  body = ParseHttpResponse("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiHTTP/1.1 500 x\r\n\r\n");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(*body, "hi");

  body = ParseHttpResponse("HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\nno");
  EXPECT_EQ(body.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(body.status().message().find("404"), std::string::npos);

  body =
      ParseHttpResponse("HTTP/1.1 301 Moved\r\nLocation: https://x/y\r\ncontent-length: 0\r\n\r\n");
  EXPECT_NE(body.status().message().find("redirect to \"https://x/y\""), std::string::npos)
      << body.status();
}

TEST(ParseHttpResponseTest, LimitsAndMalformedInput) {
  EXPECT_EQ(
      ParseHttpResponse("HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello!", 5).status().code(),
      absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ParseHttpResponse("HTTP/1.1 200 OK\r\n\r\n123456", 5).status().code(),
            absl::StatusCode::kResourceExhausted);
  // Truncated: content-length promises more than arrives before the close.
  EXPECT_FALSE(ParseHttpResponse("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello").ok());
  EXPECT_FALSE(ParseHttpResponse("").ok());
  EXPECT_FALSE(ParseHttpResponse("garbage\r\n\r\n").ok());
  EXPECT_FALSE(ParseHttpResponse("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n"
                                 "\r\nab")
                   .ok());
  EXPECT_FALSE(
      ParseHttpResponse("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").ok());
}

}  // namespace
}  // namespace ambit::tls
