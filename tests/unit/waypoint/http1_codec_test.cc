#include "agent/waypoint/http1_codec.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace ambit::waypoint {
namespace {

struct Recorder : Http1Sink {
  std::vector<MessageHead> heads;
  std::string body;
  int complete = 0;
  void OnHead(MessageHead h) override { heads.push_back(std::move(h)); }
  void OnBody(absl::string_view d) override { body.append(d.data(), d.size()); }
  void OnMessageComplete() override { ++complete; }
};

// Feeds `input` (optionally byte by byte) and returns the error status, 0 for none.
int ParseRequest(const std::string& input, Recorder& r, bool bytewise = false,
                 Http1Limits limits = {}) {
  Http1Parser p(Http1Parser::Kind::kRequest, &r, limits);
  std::string rest = input;
  while (!rest.empty() && !p.error()) {
    const size_t n = p.Feed(bytewise ? rest.substr(0, 1) : rest);
    rest.erase(0, n);
    if (p.paused()) p.Resume();
    if (n == 0 && !p.paused()) break;
  }
  return p.error() ? p.error()->status : 0;
}

TEST(Http1CodecTest, ParsesPipelinedRequestsWithBodies) {
  for (bool bytewise : {false, true}) {
    Recorder r;
    const std::string in =
        "GET /a?x=1 HTTP/1.1\r\nHost: svc\r\nX-Multi: 1\r\nx-multi: 2\r\n\r\n"
        "POST /b HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello"
        "PUT /c HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n";
    ASSERT_EQ(ParseRequest(in, r, bytewise), 0);
    ASSERT_EQ(r.heads.size(), 3u);
    EXPECT_EQ(r.complete, 3);
    EXPECT_EQ(r.heads[0].method, "GET");
    EXPECT_EQ(r.heads[0].target, "/a?x=1");
    EXPECT_EQ(r.heads[0].headers.size(), 3u);
    EXPECT_EQ(r.heads[0].headers[1].first, "x-multi");
    EXPECT_EQ(r.heads[1].content_length, 5u);
    EXPECT_TRUE(r.heads[2].chunked);
    EXPECT_EQ(r.body, "helloabcde");
  }
}

TEST(Http1CodecTest, RefusesAmbiguousFraming) {
  const std::pair<const char*, int> cases[] = {
      {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
       400},
      {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
       400},
      {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400},
      {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,1\r\n\r\nx", 400},
      {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501},
      {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 501},
      {"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nHost: a\r\nX\x01: b\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", 400},
      {"GET / HTTP/1.1\nHost: a\n\n", 400},
      {"GET / HTTP/1.1\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400},
      {"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", 400},
      {"GET http:/x HTTP/1.1\r\nHost: a\r\n\r\n", 400},
      {"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505},
      {"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405},
      // http-parser's name matcher took this for Transfer-Encoding (found by fuzzing).
      {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encodingr-Encoding: c: chunked\r\n\r\n"
       "0\r\n\r\n",
       400},
  };
  for (const auto& [in, want] : cases) {
    for (bool bytewise : {false, true}) {
      Recorder r;
      EXPECT_EQ(ParseRequest(in, r, bytewise), want) << in;
      EXPECT_TRUE(r.heads.empty()) << in;
    }
  }
}

TEST(Http1CodecTest, HeaderLimits) {
  Http1Limits limits;
  limits.max_header_bytes = 200;
  limits.max_headers = 3;
  Recorder r;
  EXPECT_EQ(ParseRequest("GET / HTTP/1.1\r\nHost: a\r\nX: " + std::string(300, 'a') + "\r\n\r\n", r,
                         false, limits),
            431);
  EXPECT_EQ(
      ParseRequest("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", r, false, limits),
      431);
  EXPECT_EQ(ParseRequest("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n", r, false, limits), 0);
  // A head that never ends is cut off at the limit, without waiting for its end.
  Recorder r2;
  Http1Parser p(Http1Parser::Kind::kRequest, &r2, limits);
  p.Feed("GET / HTTP/1.1\r\nHost: a\r\nX: ");
  p.Feed(std::string(500, 'b'));
  ASSERT_TRUE(p.error());
  EXPECT_EQ(p.error()->status, 431);
}

TEST(Http1CodecTest, UpgradeStopsAtTheHead) {
  Recorder r;
  Http1Parser p(Http1Parser::Kind::kRequest, &r);
  const std::string in =
      "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nRAW";
  const size_t n = p.Feed(in);
  EXPECT_FALSE(p.error());
  ASSERT_EQ(r.heads.size(), 1u);
  EXPECT_TRUE(r.heads[0].upgrade);
  EXPECT_EQ(in.substr(n), "RAW");
}

TEST(Http1CodecTest, ResponsesHeadAndEofDelimitedBodies) {
  Recorder r;
  Http1Parser p(Http1Parser::Kind::kResponse, &r);
  p.ExpectNoBody();
  p.Feed("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
  EXPECT_EQ(r.complete, 1);
  p.Resume();
  p.Feed("HTTP/1.1 100 Continue\r\n\r\n");
  EXPECT_EQ(r.complete, 2);
  EXPECT_EQ(r.heads.back().status, 100);
  p.Resume();
  p.Feed("HTTP/1.1 200 OK\r\n\r\nuntil close");
  EXPECT_EQ(r.complete, 2);
  p.FeedEof();
  EXPECT_FALSE(p.error());
  EXPECT_EQ(r.complete, 3);
  EXPECT_EQ(r.body, "until close");
}

TEST(Http1CodecTest, UpstreamAmbiguousFramingIs502) {
  Recorder r;
  Http1Parser p(Http1Parser::Kind::kResponse, &r);
  p.Feed("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
  ASSERT_TRUE(p.error());
  EXPECT_EQ(p.error()->status, 502);
}

// Found by fuzzing the ext_authz client: a control character in a reason phrase was refused
// when the head came in pieces and accepted when it came whole.
TEST(Http1CodecTest, ControlsInTheStartLineAreRefusedHoweverTheBytesArrive) {
  const std::string head = "HTTP/1.1 403 F\x7frbidden\r\ncontent-length: 0\r\n\r\n";
  for (size_t split : {size_t{0}, size_t{10}, head.size() - 1}) {
    Recorder r;
    Http1Parser p(Http1Parser::Kind::kResponse, &r);
    if (split > 0) p.Feed(head.substr(0, split));
    if (!p.error()) p.Feed(head.substr(split));
    EXPECT_TRUE(p.error()) << "split at " << split;
    EXPECT_TRUE(r.heads.empty());
  }
  Recorder req;
  EXPECT_EQ(ParseRequest("GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", req), 400);
}

TEST(Http1CodecTest, Serialization) {
  EXPECT_EQ(SerializeRequestHead("GET", "/x", {{"host", "a"}}),
            "GET /x HTTP/1.1\r\nhost: a\r\n\r\n");
  EXPECT_EQ(SerializeResponseHead(403, {{"content-length", "0"}}),
            "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n");
  EXPECT_EQ(EncodeChunk("hello world!!!!!!"), "11\r\nhello world!!!!!!\r\n");
  EXPECT_EQ(EncodeChunk(""), "0\r\n\r\n");
  EXPECT_TRUE(IsHopByHop("transfer-encoding"));
  EXPECT_FALSE(IsHopByHop("host"));
}

}  // namespace
}  // namespace ambit::waypoint
