// Protocol detection on undeclared ports: which first bytes are an HTTP/1.x request.

#include <string>

#include "agent/waypoint/proxy_internal.h"
#include "gtest/gtest.h"

namespace ambit::waypoint::internal {
namespace {

TEST(SniffHttp1Test, RequestLinesAreHttp) {
  EXPECT_EQ(SniffHttp1("GET / HTTP/1.1\r\n"), Sniff::kHttp);
  EXPECT_EQ(SniffHttp1("POST /a?b=c HTTP/1.0\r\nHost: x\r\n"), Sniff::kHttp);
  EXPECT_EQ(SniffHttp1("PROPFIND /dav HTTP/1.1\n"), Sniff::kHttp);  // any method token
}

TEST(SniffHttp1Test, OtherBytesAreNot) {
  EXPECT_EQ(SniffHttp1("hello"), Sniff::kNotHttp);  // lower case: no method
  EXPECT_EQ(SniffHttp1(std::string("\0\x01", 2)), Sniff::kNotHttp);
  EXPECT_EQ(SniffHttp1("GET / HTTP/2.0\r\n"), Sniff::kNotHttp);  // not HTTP/1.x
  EXPECT_EQ(SniffHttp1("GET /\r\n"), Sniff::kNotHttp);           // HTTP/0.9 is not served
  EXPECT_EQ(SniffHttp1("GET  HTTP/1.1\r\n"), Sniff::kNotHttp);   // no target
  EXPECT_EQ(SniffHttp1(" GET / HTTP/1.1\r\n"), Sniff::kNotHttp);
  EXPECT_EQ(SniffHttp1("SSH-2.0-OpenSSH\r\n"), Sniff::kNotHttp);
  EXPECT_EQ(SniffHttp1("ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/1.1\r\n"), Sniff::kNotHttp);
}

TEST(SniffHttp1Test, WaitsForTheLineUntilItIsTooLongToBeAnythingElse) {
  EXPECT_EQ(SniffHttp1(""), Sniff::kNeedMore);
  EXPECT_EQ(SniffHttp1("GE"), Sniff::kNeedMore);
  EXPECT_EQ(SniffHttp1("GET /path"), Sniff::kNeedMore);
  // A request line longer than any other protocol's greeting is HTTP's to refuse (414).
  EXPECT_EQ(SniffHttp1("GET /" + std::string(9000, 'a')), Sniff::kHttp);
}

}  // namespace
}  // namespace ambit::waypoint::internal
