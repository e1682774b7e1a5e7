// HBONE streams over real loopback TCP + TLS, both ends on one EpollLoop.

#include "agent/hbone/session.h"

#include <sys/socket.h>

#include <algorithm>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "agent/common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/hbone/hbone_fixture.h"

namespace ambit::hbone::testing {
namespace {

using ::testing::HasSubstr;

constexpr size_t kMiB = 1 << 20;

class SessionTest : public HboneFixture {
 protected:
  // Server streams answer 200 and, when `payload_for` gives bytes for the request's port, send
  // them and half-close.
  void ServeWith(std::function<std::string(uint16_t port)> payload_for, bool close = true) {
    server_->on_connect = [this, payload_for, close](HboneSession& session, StreamId id,
                                                     const ConnectRequest& request) {
      auto stream = std::make_unique<TestStream>();
      stream->session = &session;
      stream->id = id;
      TestStream* raw = stream.get();
      server_->streams.push_back(std::move(stream));
      EXPECT_TRUE(session.Respond(id, 200).ok());
      std::string payload = payload_for(request.destination.port);
      if (!payload.empty() || close) raw->Send(std::move(payload), close);
      return raw;
    };
  }
};

TEST_F(SessionTest, ConnectCarriesAuthorityHeadersAndIdentity) {
  StartServer();
  auto client = Dial();
  ConnectHeaders headers{"for=\"198.18.0.1:43210\"", "k8s.namespace.name=default",
                         "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"};
  TestStream* stream = Open(*client, "198.18.0.2:8080", headers);
  ASSERT_TRUE(Run([&] { return stream->status != 0; }));
  EXPECT_EQ(stream->status, 200);
  ASSERT_EQ(server_->requests.size(), 1u);
  const ConnectRequest& request = server_->requests[0];
  EXPECT_EQ(request.authority, "198.18.0.2:8080");
  EXPECT_EQ(request.destination.ToString(), "198.18.0.2:8080");
  EXPECT_EQ(request.headers.forwarded, headers.forwarded);
  EXPECT_EQ(request.headers.baggage, headers.baggage);
  EXPECT_EQ(request.headers.traceparent, headers.traceparent);
  EXPECT_EQ(request.peer_identity, kClientId);
  EXPECT_EQ(client->active_streams(), 1u);
}

TEST_F(SessionTest, OneMiBEachWayWithChecksums) {
  StartServer();
  const std::string down = RandomBytes(kMiB, 1);
  const std::string up = RandomBytes(kMiB, 2);
  ServeWith([&](uint16_t) { return down; });
  auto client = Dial();
  TestStream* stream = Open(*client);
  stream->Send(up, /*then_close=*/true);  // before the 200: buffered, sent with the request
  ASSERT_TRUE(Run(
      [&] { return stream->done() && !server_->streams.empty() && server_->streams[0]->done(); }));
  TestStream* server_stream = server_->streams[0].get();
  EXPECT_TRUE(stream->closed);
  EXPECT_TRUE(server_stream->closed);
  EXPECT_EQ(Sha256Hex(stream->received), Sha256Hex(down));
  EXPECT_EQ(Sha256Hex(server_stream->received), Sha256Hex(up));
  EXPECT_TRUE(stream->end_stream);
  EXPECT_TRUE(server_stream->end_stream);
  ASSERT_TRUE(Run([&] { return client->active_streams() == 0 && client_events_.idle == 1; }));
}

// Bulk DATA goes from a stream's buffer to TLS directly; a socket that fills in the middle of a
// frame leaves the rest queued and written later, in order. A tiny send buffer makes that happen
// on almost every frame, on three streams at once.
TEST_F(SessionTest, BulkThroughAFullSocketArrivesIntactOnEveryStream) {
  StartServer();
  std::vector<std::string> downs;
  for (int i = 0; i < 3; ++i) downs.push_back(RandomBytes(3 * kMiB + 777 * i, 20 + i));
  ServeWith([&](uint16_t port) { return downs[port - 1]; });
  auto fd = ConnectLoopback(server_->port());
  ASSERT_TRUE(fd.ok()) << fd.status();
  int small = 4096;  // the kernel doubles it: a few TLS records fit
  ASSERT_EQ(setsockopt(fd->get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
  auto session = HboneSession::CreateClient(loop_.get(), *std::move(fd), client_ctx_, kServerId,
                                            &client_events_, {});
  ASSERT_TRUE(session.ok()) << session.status();
  std::shared_ptr<HboneSession> client = *std::move(session);
  std::vector<std::string> ups;
  std::vector<TestStream*> streams;
  for (int i = 0; i < 3; ++i) {
    ups.push_back(RandomBytes(3 * kMiB + 1000 * i, 30 + i));
    streams.push_back(Open(*client, absl::StrCat("127.0.0.1:", i + 1)));
    streams.back()->Send(ups.back(), /*then_close=*/true);
  }
  ASSERT_TRUE(Run(
      [&] {
        if (server_->streams.size() < 3) return false;
        for (TestStream* s : streams) {
          if (!s->done()) return false;
        }
        for (auto& s : server_->streams) {
          if (!s->done()) return false;
        }
        return true;
      },
      absl::Seconds(60)));
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(streams[i]->closed);
    EXPECT_EQ(Sha256Hex(streams[i]->received), Sha256Hex(downs[i])) << "stream " << i;
  }
  for (auto& s : server_->streams) {
    int i = -1;
    for (int j = 0; j < 3; ++j) {
      if (s->received.size() == ups[j].size()) i = j;
    }
    ASSERT_GE(i, 0) << s->received.size() << " bytes on a server stream";
    EXPECT_EQ(Sha256Hex(s->received), Sha256Hex(ups[i])) << "stream " << i;
  }
}

// A streaming session keeps its output buffers (releasing them between bursts regrew them
// several times a millisecond); once its stream goes quiet, still open, they are released.
TEST_F(SessionTest, OutputBuffersOfAQuietStreamAreReleased) {
  StartServer();
  ServeWith([](uint16_t) { return std::string(); }, /*close=*/false);
  auto client = Dial();
  TestStream* stream = Open(*client);
  ASSERT_TRUE(Run([&] { return stream->status == 200; }));
  const std::string bulk = RandomBytes(8 * kMiB, 40);
  stream->Send(bulk, /*then_close=*/false);
  size_t most = 0;
  ASSERT_TRUE(Run([&] {
    most = std::max(most, client->output_buffer_bytes());
    return !server_->streams.empty() && server_->streams[0]->received.size() == bulk.size();
  }));
  EXPECT_GT(most, size_t{64} << 10);
  Run([] { return false; }, absl::Milliseconds(2500));
  EXPECT_LE(client->output_buffer_bytes(), size_t{64} << 10);
  EXPECT_EQ(client->active_streams(), 1u);
  EXPECT_EQ(Sha256Hex(server_->streams[0]->received), Sha256Hex(bulk));
}

TEST_F(SessionTest, ClientHalfClosesFirstServerKeepsSending) {
  StartServer();
  ServeWith([](uint16_t) { return std::string(); }, /*close=*/false);
  auto client = Dial();
  TestStream* stream = Open(*client);
  stream->Send("request", /*then_close=*/true);
  ASSERT_TRUE(Run([&] { return !server_->streams.empty() && server_->streams[0]->end_stream; }));
  TestStream* server_stream = server_->streams[0].get();
  EXPECT_EQ(server_stream->received, "request");
  EXPECT_FALSE(stream->end_stream);
  // The client's half is closed; the server's still carries data.
  const std::string reply = RandomBytes(300 << 10, 3);
  server_stream->Send(reply, /*then_close=*/false);
  ASSERT_TRUE(Run([&] { return stream->received.size() == reply.size(); }));
  EXPECT_EQ(stream->received, reply);
  EXPECT_FALSE(stream->end_stream);
  EXPECT_FALSE(stream->done());
  server_->streams[0]->Send("bye", /*then_close=*/true);
  ASSERT_TRUE(Run([&] { return stream->done() && server_stream->done(); }));
  EXPECT_TRUE(stream->end_stream);
  EXPECT_TRUE(stream->closed);
  EXPECT_TRUE(server_stream->closed);
}

TEST_F(SessionTest, ServerHalfClosesFirstClientKeepsSending) {
  StartServer();
  ServeWith([](uint16_t) { return std::string("greeting"); }, /*close=*/true);
  auto client = Dial();
  TestStream* stream = Open(*client);
  ASSERT_TRUE(Run([&] { return stream->end_stream; }));
  EXPECT_EQ(stream->received, "greeting");
  TestStream* server_stream = server_->streams[0].get();
  EXPECT_FALSE(server_stream->end_stream);
  const std::string upload = RandomBytes(300 << 10, 4);
  stream->Send(upload, /*then_close=*/false);
  ASSERT_TRUE(Run([&] { return server_stream->received.size() == upload.size(); }));
  EXPECT_EQ(server_stream->received, upload);
  EXPECT_FALSE(server_stream->end_stream);
  stream->Send("", /*then_close=*/true);
  ASSERT_TRUE(Run([&] { return stream->done() && server_stream->done(); }));
  EXPECT_TRUE(server_stream->end_stream);
  EXPECT_TRUE(stream->closed);
  EXPECT_TRUE(server_stream->closed);
}

TEST_F(SessionTest, ClientResetReachesServer) {
  StartServer();
  auto client = Dial();
  TestStream* stream = Open(*client);
  ASSERT_TRUE(Run([&] { return stream->status == 200; }));
  client->Reset(stream->id, kCancel);
  ASSERT_TRUE(Run([&] { return server_->streams[0]->done(); }));
  EXPECT_EQ(server_->streams[0]->reset, kCancel);
  EXPECT_FALSE(stream->done());  // our own reset is silent
  ASSERT_TRUE(Run([&] { return client->active_streams() == 0; }));
  // The session still serves.
  TestStream* again = Open(*client);
  ASSERT_TRUE(Run([&] { return again->status == 200; }));
}

TEST_F(SessionTest, ServerResetReachesClient) {
  StartServer();
  auto client = Dial();
  TestStream* stream = Open(*client);
  ASSERT_TRUE(Run([&] { return stream->status == 200; }));
  ASSERT_EQ(server_->sessions.size(), 1u);
  server_->sessions[0]->Reset(server_->streams[0]->id, kConnectError);
  ASSERT_TRUE(Run([&] { return stream->done(); }));
  EXPECT_EQ(stream->reset, kConnectError);
}

TEST_F(SessionTest, ErrorStatusesEndTheStreamOnly) {
  StartServer();
  server_->on_connect = [](HboneSession& session, StreamId id,
                           const ConnectRequest& request) -> StreamObserver* {
    if (request.destination.port == 401) {
      EXPECT_TRUE(session.Respond(id, 401).ok());
    }
    return nullptr;  // no response yet: 503
  };
  auto client = Dial();
  TestStream* denied = Open(*client, "127.0.0.1:401");
  TestStream* failed = Open(*client, "127.0.0.1:502");
  denied->Send("data the server never sees", true);
  ASSERT_TRUE(Run(
      [&] { return denied->status != 0 && failed->status != 0 && client->active_streams() == 0; }));
  EXPECT_EQ(denied->status, 401);
  EXPECT_EQ(failed->status, 503);
  EXPECT_FALSE(denied->done());
  ASSERT_EQ(server_->sessions.size(), 1u);
  ASSERT_TRUE(Run([&] { return server_->sessions[0]->active_streams() == 0; }));
  EXPECT_TRUE(client->established());
}

TEST_F(SessionTest, SlowReaderDoesNotStallOtherStreams) {
  StartServer();
  // Five readers that never consume: 5 x 4 MiB stream windows exceed the 16 MiB connection
  // window, so this passes only if the connection window is not what holds them back.
  const std::string big = RandomBytes(4 * kMiB + kMiB / 2, 5);
  const std::string small = RandomBytes(kMiB, 6);
  ServeWith([&](uint16_t port) { return port == 1 ? big : small; });
  auto client = Dial();
  std::vector<TestStream*> stalled;
  for (int i = 0; i < 5; ++i) {
    stalled.push_back(Open(*client, "127.0.0.1:1"));
    stalled.back()->auto_consume = false;
  }
  ASSERT_TRUE(Run([&] {
    for (TestStream* s : stalled) {
      if (s->received.size() < 4 * kMiB) return false;
    }
    return true;
  })) <<
      [&] {
        std::string sizes;
        for (TestStream* s : stalled) absl::StrAppend(&sizes, s->received.size(), " ");
        for (auto& s : server_->streams) {
          absl::StrAppend(&sizes, "| buf=", server_->sessions[0]->buffered(s->id),
                          " sent=", s->all_sent(), " w=", s->writable_calls);
        }
        return sizes;
      }();
  TestStream* fast = Open(*client, "127.0.0.1:2");
  fast->Send("", /*then_close=*/true);
  ASSERT_TRUE(Run([&] { return fast->done(); }));
  EXPECT_TRUE(fast->closed);
  EXPECT_EQ(Sha256Hex(fast->received), Sha256Hex(small));
  for (TestStream* s : stalled) {
    EXPECT_EQ(s->received.size(), 4 * kMiB);  // exactly one stream window, not a byte more
    EXPECT_FALSE(s->done());
  }
  // Consuming releases them.
  for (TestStream* s : stalled) s->auto_consume = true;
  for (TestStream* s : stalled) s->ConsumeAll();
  ASSERT_TRUE(Run([&] {
    for (TestStream* s : stalled) {
      if (!s->end_stream) return false;
    }
    return true;
  }));
  for (TestStream* s : stalled) EXPECT_EQ(Sha256Hex(s->received), Sha256Hex(big));
}

TEST_F(SessionTest, BackPressureBoundsWhatWriteTakes) {
  StartServer();
  ServeWith([](uint16_t) { return std::string(); }, /*close=*/false);
  auto client = Dial();
  TestStream* stream = Open(*client);
  ASSERT_TRUE(Run([&] { return stream->status == 200; }));
  server_->streams[0]->auto_consume = false;
  // The server never consumes: 4 MiB window + the 256 KiB send buffer + what sits in socket and
  // TLS buffers is all the client can ever push.
  const std::string flood = RandomBytes(16 * kMiB, 7);
  stream->Send(flood, false);
  Run([] { return false; }, absl::Milliseconds(500));
  EXPECT_FALSE(stream->all_sent());
  EXPECT_LE(client->buffered(stream->id), SessionOptions().stream_send_buffer);
  EXPECT_EQ(server_->streams[0]->received.size(), 4 * kMiB);
  int writable_before = stream->writable_calls;
  server_->streams[0]->auto_consume = true;
  server_->streams[0]->ConsumeAll();
  ASSERT_TRUE(Run([&] { return stream->writable_calls > writable_before; }));
}

TEST_F(SessionTest, StreamsBeyondTheLimitAreRefused) {
  StartServer();
  SessionOptions options;
  options.assumed_peer_max_streams = 1000;  // behave like a client that ignores the limit
  auto client = Dial(kServerId, options);
  std::vector<TestStream*> streams;
  for (int i = 0; i < 150; ++i) streams.push_back(Open(*client));
  ASSERT_TRUE(Run([&] {
    for (TestStream* s : streams) {
      if (s->status == 0 && !s->done()) return false;
    }
    return true;
  }));
  int ok = 0;
  int refused = 0;
  for (TestStream* s : streams) {
    if (s->status == 200) ++ok;
    if (s->reset == kRefusedStream) ++refused;
  }
  EXPECT_EQ(ok, 100);
  EXPECT_EQ(refused, 50);
  EXPECT_EQ(server_->stats.refused_streams, 50u);
  EXPECT_EQ(server_->requests.size(), 100u);
  EXPECT_TRUE(client->established());
  EXPECT_FALSE(client->can_open_stream());  // 100 open, at the server's limit
}

TEST_F(SessionTest, CanOpenStreamFollowsTheServerLimit) {
  SessionOptions server_options;
  server_options.max_concurrent_streams = 2;
  StartServer(server_options);
  auto client = Dial();
  EXPECT_TRUE(client->can_open_stream());
  TestStream* a = Open(*client);
  ASSERT_TRUE(Run([&] { return a->status == 200; }));
  EXPECT_TRUE(client->can_open_stream());
  TestStream* b = Open(*client);
  ASSERT_TRUE(Run([&] { return b->status == 200; }));
  EXPECT_FALSE(client->can_open_stream());
  // A third waits in nghttp2's queue until a slot frees.
  TestStream* c = Open(*client);
  Run([] { return false; }, absl::Milliseconds(200));
  EXPECT_EQ(c->status, 0);
  client->Reset(a->id);
  ASSERT_TRUE(Run([&] { return c->status == 200; }));
}

TEST_F(SessionTest, OversizedHeaderListFailsOnlyItsStream) {
  StartServer();
  SessionOptions options;
  options.max_header_list_bytes = kMiB;  // let this client send what the server refuses
  auto client = Dial(kServerId, options);
  ConnectHeaders huge{std::string(30 << 10, 'f'), std::string(30 << 10, 'b'),
                      std::string(30 << 10, 't')};
  TestStream* big = Open(*client, "127.0.0.1:8080", huge);
  TestStream* fine = Open(*client);
  ASSERT_TRUE(Run([&] { return big->status != 0 && fine->status != 0; }));
  EXPECT_EQ(big->status, 431);
  EXPECT_EQ(fine->status, 200);
  EXPECT_EQ(server_->stats.oversized_headers, 1u);
  EXPECT_EQ(server_->requests.size(), 1u);
  TestStream* after = Open(*client);
  ASSERT_TRUE(Run([&] { return after->status == 200; }));
  EXPECT_TRUE(client->established());
}

TEST_F(SessionTest, SingleHeaderFieldOverNghttp2LimitEndsTheSession) {
  // nghttp2's HPACK decoder refuses any single field over 64 KiB as a compression error: a
  // connection error, not a stream error. Documented in session.h.
  StartServer();
  SessionOptions options;
  options.max_header_list_bytes = kMiB;
  auto client = Dial(kServerId, options);
  ConnectHeaders huge{"", std::string(100 << 10, 'b'), ""};
  TestStream* big = Open(*client, "127.0.0.1:8080", huge);
  ASSERT_TRUE(Run([&] { return big->done() && client_events_.closed; }));
  EXPECT_FALSE(client_events_.close_status.ok());
  ASSERT_EQ(server_->closed.size(), 1u);
  EXPECT_THAT(server_->closed[0].message(), HasSubstr("GOAWAY(COMPRESSION_ERROR)"));
  EXPECT_EQ(server_->stats.protocol_errors, 1u);
}

TEST_F(SessionTest, ShutdownEndsGracefullyAfterStreams) {
  StartServer();
  ServeWith([](uint16_t) { return std::string("x"); });
  auto client = Dial();
  TestStream* stream = Open(*client);
  ASSERT_TRUE(Run([&] { return stream->end_stream; }));
  client->Shutdown();
  EXPECT_FALSE(client->can_open_stream());
  EXPECT_FALSE(client->Connect("127.0.0.1:1", {}, stream).ok());
  // The open stream still finishes; then both sides close cleanly.
  stream->Send("", true);
  ASSERT_TRUE(Run([&] { return client_events_.closed && server_->closed.size() == 1; }));
  EXPECT_TRUE(stream->closed);
  EXPECT_TRUE(client_events_.close_status.ok()) << client_events_.close_status;
  EXPECT_TRUE(server_->closed[0].ok()) << server_->closed[0];
}

TEST_F(SessionTest, ServerGoingAwayResetsStreamsItNeverSaw) {
  StartServer();
  auto client = Dial();
  TestStream* first = Open(*client);
  ASSERT_TRUE(Run([&] { return first->status == 200; }));
  server_->sessions[0]->Shutdown();
  ASSERT_TRUE(Run([&] { return !client->can_open_stream(); }));
  EXPECT_FALSE(client->Connect("127.0.0.1:1", {}, first).ok());
  first->Send("", true);
  server_->streams[0]->Send("", true);
  ASSERT_TRUE(Run([&] { return client_events_.closed; }));
  EXPECT_TRUE(first->closed);
  EXPECT_TRUE(client_events_.close_status.ok()) << client_events_.close_status;
}

// The server goes away in two steps: a CONNECT that crossed its shutdown notice on the wire is
// still served (nothing is refused, so nothing needs a retry), no new stream is opened after the
// client saw the notice, and the session ends cleanly once both streams finish.
TEST_F(SessionTest, ServerGoingAwayServesStreamsThatCrossedTheNotice) {
  StartServer();
  auto client = Dial();
  TestStream* first = Open(*client);
  ASSERT_TRUE(Run([&] { return first->status == 200; }));
  ASSERT_EQ(server_->requests.size(), 1u);
  // Both in one turn of the loop: the CONNECT crosses the notice on the wire.
  server_->sessions[0]->Shutdown();
  TestStream* late = Open(*client);
  ASSERT_TRUE(Run([&] { return late->status == 200; }));
  EXPECT_FALSE(late->reset.has_value());
  EXPECT_EQ(server_->requests.size(), 2u);
  EXPECT_EQ(server_->stats.refused_streams, 0u);
  ASSERT_TRUE(Run([&] { return !client->can_open_stream(); }));
  EXPECT_FALSE(client->Connect("127.0.0.1:1", {}, first).ok());
  for (TestStream* s : {first, late}) s->Send("", true);
  for (auto& s : server_->streams) s->Send("", true);
  ASSERT_TRUE(Run([&] { return client_events_.closed && server_->closed.size() == 1; }));
  EXPECT_TRUE(first->closed);
  EXPECT_TRUE(late->closed);
  EXPECT_TRUE(client_events_.close_status.ok()) << client_events_.close_status;
  EXPECT_TRUE(server_->closed[0].ok()) << server_->closed[0];
}

// GoAway::kNow (credentials no longer good): a stream the client opened before it saw the
// server's GOAWAY is refused with RST_STREAM(REFUSED_STREAM) (safe to retry elsewhere), never
// handed to the server's delegate, while the stream the GOAWAY covers still finishes.
TEST_F(SessionTest, ServerGoingAwayRefusesStreamsOpenedAfterIt) {
  StartServer();
  auto client = Dial();
  TestStream* first = Open(*client);
  ASSERT_TRUE(Run([&] { return first->status == 200; }));
  ASSERT_EQ(server_->requests.size(), 1u);
  // Both in one turn of the loop: the CONNECT crosses the GOAWAY on the wire.
  server_->sessions[0]->Shutdown(HboneSession::GoAway::kNow);
  TestStream* late = Open(*client);
  ASSERT_TRUE(Run([&] { return late->done(); }));
  EXPECT_EQ(late->reset, kRefusedStream);
  EXPECT_EQ(late->status, 0);
  EXPECT_EQ(server_->requests.size(), 1u);
  EXPECT_GE(server_->stats.refused_streams, 1u);
  EXPECT_FALSE(client->can_open_stream());
  first->Send("", true);
  server_->streams[0]->Send("", true);
  ASSERT_TRUE(Run([&] { return client_events_.closed && server_->closed.size() == 1; }));
  EXPECT_TRUE(first->closed);
}

// A data plane draining for its successor shuts down every session, also one still in its
// handshake: a connection it had just taken from a listener's queue, or had just opened for a
// connection it took. A client session keeps the CONNECT already queued on it: the handshake
// finishes, the CONNECT is answered and served to its end, and then the session closes cleanly.
TEST_F(SessionTest, ClientShutDownBeforeItsHandshakeServesWhatWasQueued) {
  StartServer();
  ServeWith([](uint16_t) { return std::string("pong"); });
  auto client = Dial();
  TestStream* queued = Open(*client);
  ASSERT_FALSE(client->established());
  client->Shutdown();
  EXPECT_FALSE(client->closed());
  EXPECT_FALSE(client->can_open_stream());
  ASSERT_TRUE(Run([&] { return queued->end_stream; }));
  EXPECT_EQ(queued->status, 200);
  EXPECT_EQ(queued->received, "pong");
  EXPECT_FALSE(queued->reset.has_value());
  queued->Send("", true);
  ASSERT_TRUE(Run([&] { return client_events_.closed && server_->closed.size() == 1; }));
  EXPECT_TRUE(client_events_.close_status.ok()) << client_events_.close_status;
  EXPECT_TRUE(server_->closed[0].ok()) << server_->closed[0];
}

// The server side of the same: a session still in its handshake when the server drains is not
// cut off (its client would see a reset for the CONNECT it is about to send). Once open it gets
// the shutdown notice: a CONNECT that crossed it is served, none is opened after it.
TEST_F(SessionTest, ServerShutDownBeforeItsHandshakeServesThenGoesAway) {
  StartServer();
  auto client = Dial();
  ASSERT_TRUE(Run([&] { return server_->sessions.size() == 1; }));
  ASSERT_FALSE(server_->sessions[0]->established());
  server_->sessions[0]->Shutdown();
  EXPECT_FALSE(server_->sessions[0]->closed());
  TestStream* first = Open(*client);
  ASSERT_TRUE(Run([&] { return first->done() || first->status != 0; }));
  EXPECT_EQ(first->status, 200);
  EXPECT_FALSE(first->reset.has_value());
  ASSERT_TRUE(Run([&] { return !client->can_open_stream(); }));
  first->Send("", true);
  server_->streams[0]->Send("", true);
  ASSERT_TRUE(Run([&] { return client_events_.closed && server_->closed.size() == 1; }));
  EXPECT_TRUE(first->closed);
  EXPECT_TRUE(client_events_.close_status.ok()) << client_events_.close_status;
  EXPECT_TRUE(server_->closed[0].ok()) << server_->closed[0];
}

// kNow before the handshake (credentials no longer good) still closes at once.
TEST_F(SessionTest, ShutdownNowBeforeTheHandshakeCloses) {
  StartServer();
  auto client = Dial();
  TestStream* queued = Open(*client);
  client->Shutdown(HboneSession::GoAway::kNow);
  EXPECT_TRUE(client->closed());
  EXPECT_EQ(queued->reset, kConnectError);
}

// Expiry of the peer's certificate is known to both sides once the handshake is done.
TEST_F(SessionTest, PeerCertificateNotAfterIsKnown) {
  StartServer();
  auto client = Dial();
  EXPECT_EQ(client->peer_not_after(), absl::InfiniteFuture());
  ASSERT_TRUE(Run([&] { return client->established() && server_->established == 1; }));
  ASSERT_NE(server_svid_.not_after, absl::Time());
  EXPECT_EQ(client->peer_not_after(), server_svid_.not_after);
  EXPECT_EQ(server_->sessions[0]->peer_not_after(), client_svid_.not_after);
}

TEST_F(SessionTest, PeerDisappearingResetsOpenStreams) {
  StartServer();
  auto client = Dial();
  TestStream* stream = Open(*client);
  ASSERT_TRUE(Run([&] { return stream->status == 200; }));
  server_->sessions.clear();  // the server process "dies": its socket closes
  ASSERT_TRUE(Run([&] { return client_events_.closed; }));
  EXPECT_EQ(stream->reset, kConnectError);
  EXPECT_FALSE(client_events_.close_status.ok());
}

// Rapid reset: each CONNECT is reset by the client before the server answered it (as while the
// tunnel is still connecting upstream). The delegate, which would connect upstream, sees exactly
// the burst; the next CONNECT ends the session with GOAWAY(ENHANCE_YOUR_CALM).
TEST_F(SessionTest, RapidResetIsStoppedBeforeTheDelegate) {
  SessionOptions server_options;
  server_options.stream_open_burst = 10;
  server_options.stream_open_rate = 0.001;  // no refill within the test
  StartServer(server_options);
  server_->on_connect = [this](HboneSession& session, StreamId id,
                               const ConnectRequest&) -> StreamObserver* {
    auto stream = std::make_unique<TestStream>();  // unanswered, like a pending upstream connect
    stream->session = &session;
    stream->id = id;
    server_->streams.push_back(std::move(stream));
    return server_->streams.back().get();
  };
  auto client = Dial();
  for (int i = 0; i < 30 && client->can_open_stream(); ++i) {
    TestStream* stream = Open(*client);
    ASSERT_TRUE(Run([&] {
      return server_->requests.size() > static_cast<size_t>(i) || client_events_.closed;
    }));
    client->Reset(stream->id, kCancel);
  }
  ASSERT_TRUE(Run([&] { return client_events_.closed; }));
  EXPECT_EQ(server_->requests.size(), 10u);
  EXPECT_EQ(server_->stats.stream_rate_limited, 1u);
  EXPECT_EQ(server_->stats.floods, 1u);
  EXPECT_THAT(std::string(client_events_.close_status.message()), HasSubstr("ENHANCE_YOUR_CALM"));
  ASSERT_TRUE(Run([&] { return !server_->closed.empty(); }));
  EXPECT_THAT(std::string(server_->closed[0].message()), HasSubstr("more than 10 CONNECT streams"));
}

// Streams answered 2xx give their token back: a pooled connection carrying many short tunnels
// one after another is never limited.
TEST_F(SessionTest, AnsweredStreamsAreNotRateLimited) {
  SessionOptions server_options;
  server_options.stream_open_burst = 5;
  server_options.stream_open_rate = 0.001;
  StartServer(server_options);
  ServeWith([](uint16_t) { return std::string("ok"); });
  auto client = Dial();
  for (int i = 0; i < 40; ++i) {
    TestStream* stream = Open(*client);
    stream->Send("", true);
    ASSERT_TRUE(Run([&] { return stream->closed || stream->done(); })) << "stream " << i;
    ASSERT_EQ(stream->status, 200) << "stream " << i;
  }
  EXPECT_EQ(server_->requests.size(), 40u);
  EXPECT_EQ(server_->stats.stream_rate_limited, 0u);
  EXPECT_FALSE(client_events_.closed);
}

// The bucket refills by the session's clock, not the wall clock: with a clock moved by hand the
// refill is exact, whatever the machine's speed.
TEST_F(SessionTest, StreamTokensRefillByTheSessionClock) {
  FakeClock clock;
  SessionOptions server_options;
  server_options.stream_open_burst = 3;
  server_options.stream_open_rate = 1;  // one token per second of `clock`
  server_options.clock = &clock;
  StartServer(server_options);
  server_->on_connect = [](HboneSession&, StreamId, const ConnectRequest&) -> StreamObserver* {
    return nullptr;  // 503: the token is not given back
  };
  auto client = Dial();
  auto refused = [&](int count) {
    for (int i = 0; i < count; ++i) {
      TestStream* stream = Open(*client);
      ASSERT_TRUE(Run([&] { return stream->status != 0 || client_events_.closed; }));
      ASSERT_EQ(stream->status, 503) << "stream " << i;
    }
  };
  refused(3);  // the burst
  clock.Advance(absl::Seconds(2));
  refused(2);  // two tokens came back, and only two
  EXPECT_FALSE(client_events_.closed);
  Open(*client);
  ASSERT_TRUE(Run([&] { return client_events_.closed; }));
  EXPECT_EQ(server_->requests.size(), 5u);
  EXPECT_EQ(server_->stats.stream_rate_limited, 1u);
  EXPECT_THAT(std::string(client_events_.close_status.message()), HasSubstr("ENHANCE_YOUR_CALM"));
}

// Refused streams (503 here; a port scan) are not given back: they are limited like resets.
TEST_F(SessionTest, FailingStreamsAreRateLimited) {
  SessionOptions server_options;
  server_options.stream_open_burst = 5;
  server_options.stream_open_rate = 0.001;
  StartServer(server_options);
  server_->on_connect = [](HboneSession&, StreamId, const ConnectRequest&) -> StreamObserver* {
    return nullptr;  // 503
  };
  auto client = Dial();
  std::vector<TestStream*> streams;
  for (int i = 0; i < 8 && client->can_open_stream(); ++i) {
    streams.push_back(Open(*client));
    ASSERT_TRUE(Run([&] { return streams.back()->status != 0 || client_events_.closed; }));
  }
  ASSERT_TRUE(Run([&] { return client_events_.closed; }));
  EXPECT_EQ(server_->requests.size(), 5u);
  ASSERT_GE(streams.size(), 6u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(streams[i]->status, 503) << "stream " << i;
  EXPECT_THAT(std::string(client_events_.close_status.message()), HasSubstr("ENHANCE_YOUR_CALM"));
}

TEST_F(SessionTest, ManySessionsShareStats) {
  StartServer();
  HboneStats stats;
  SessionOptions options;
  options.stats = &stats;
  ClientEvents e1, e2;
  auto c1 = Dial(kServerId, options, nullptr, &e1);
  auto c2 = Dial(kServerId, options, nullptr, &e2);
  ASSERT_TRUE(Run([&] { return e1.established && e2.established && server_->established == 2; }));
  EXPECT_EQ(stats.sessions_established, 2u);
  EXPECT_EQ(server_->stats.sessions_established, 2u);
}

// Which ended CONNECTs are opened again on another session: only one the peer refused unprocessed
// (REFUSED_STREAM: RST_STREAM, or above its GOAWAY's last stream id), before any response, once.
TEST(RetryRefusedConnectTest, OnlyRefusedUnansweredStreamsOnce) {
  struct Row {
    uint32_t code;
    bool got_response;
    bool retried;
    bool retry;
  };
  const Row rows[] = {
      {kRefusedStream, false, false, true},   // refused by GOAWAY or RST_STREAM: not processed
      {kRefusedStream, false, true, false},   // refused again: the error goes to the client
      {kRefusedStream, true, false, false},   // answered: processed
      {kCancel, false, false, false},         // the peer gave up on it: may have been processed
      {kConnectError, false, false, false},   // the session died
      {kNoError, false, false, false},        //
      {kProtocolError, false, false, false},  //
      {kInternalError, false, false, false},  //
      {kEnhanceYourCalm, false, false, false},
  };
  for (const Row& r : rows) {
    EXPECT_EQ(RetryRefusedConnect(r.code, r.got_response, r.retried), r.retry)
        << "code " << r.code << " got_response " << r.got_response << " retried " << r.retried;
  }
}

}  // namespace
}  // namespace ambit::hbone::testing
