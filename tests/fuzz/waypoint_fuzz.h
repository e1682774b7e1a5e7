#pragma once

// The waypoint's HTTP engine (agent/waypoint/proxy.h) with fake byte streams on both sides, for
// the waypoint_http1 and waypoint_h2c targets. Input layout:
//   byte 0: downstream chunk size - 1 (the client's bytes arrive in pieces of 1..256 bytes)
//   byte 1: upstream behaviour: 0 connect fails, 1 a fixed 200 response, 2 the sized bytes below,
//           3 a 101 (then echo), 4 never answers
//   byte 2: the downstream's write buffer reports "full" (backpressure) when odd
//   sized:  the upstream's response bytes (behaviour 2)
//   rest:   the client's bytes (the h2c target prefixes the HTTP/2 preface)
// Properties besides "no crash, leak or hang": everything the engine sends upstream, unless the
// exchange was upgraded, parses as a sequence of well-formed HTTP/1.1 requests by our own parser
// (the waypoint never forwards framing two servers could read differently).

#include <memory>
#include <string>
#include <vector>

#include "agent/authz/compile.h"
#include "agent/authz/engine.h"
#include "agent/common/epoll_loop.h"
#include "agent/waypoint/authz_filter.h"
#include "agent/waypoint/proxy.h"
#include "tests/fuzz/fuzz_util.h"

namespace ambit::fuzz {

// What a fake stream saw, shared with the harness so it outlives the stream.
struct FakeState {
  waypoint::ByteStream::Observer* observer = nullptr;
  std::string written;
  bool report_full = false;
  bool closed = false;
};

class FakeStream final : public waypoint::ByteStream {
 public:
  explicit FakeStream(std::shared_ptr<FakeState> state) : state_(std::move(state)) {}
  ~FakeStream() override {
    state_->closed = true;
    state_->observer = nullptr;
  }
  void SetObserver(Observer* o) override { state_->observer = o; }
  void Write(absl::string_view data) override {
    if (state_->closed) return;
    if (state_->written.size() < (1 << 20)) state_->written.append(data.data(), data.size());
  }
  size_t buffered() const override { return state_->report_full ? (1 << 20) : 0; }
  void SetReadEnabled(bool) override {}
  void ShutdownWrite() override {}
  void Close(bool) override {
    state_->closed = true;
    state_->observer = nullptr;
  }
  std::string Describe() const override { return "fake"; }

 private:
  std::shared_ptr<FakeState> state_;
};

class FakeConnector final : public waypoint::UpstreamConnector {
 public:
  std::unique_ptr<waypoint::ByteStream> Connect(waypoint::ByteStream::Observer* o) override {
    auto state = std::make_shared<FakeState>();
    state->observer = o;
    streams.push_back(state);
    return std::make_unique<FakeStream>(state);
  }
  std::string Describe() const override { return "127.0.0.1:8080"; }
  std::vector<std::shared_ptr<FakeState>> streams;
};

inline std::shared_ptr<const authz::Engine> FuzzEngine() {
  static const auto engine = [] {
    std::vector<authz::CompiledPolicy> policies;
    authz::Policy deny;
    deny.name = "deny-admin";
    deny.namespace_name = "default";
    deny.action = authz::Action::kDeny;
    authz::Rule deny_rule;
    deny_rule.to.push_back(authz::Operation{.paths = {"/admin/*"}});
    deny.rules = std::vector<authz::Rule>{deny_rule};
    authz::Policy custom;
    custom.name = "ext";
    custom.namespace_name = "default";
    custom.action = authz::Action::kCustom;
    custom.provider = "opa";
    authz::Rule custom_rule;
    custom_rule.to.push_back(authz::Operation{.methods = {"DELETE"}});
    custom.rules = std::vector<authz::Rule>{custom_rule};
    policies.push_back(*authz::Compile(deny));
    policies.push_back(*authz::Compile(custom));
    return std::shared_ptr<const authz::Engine>(*authz::Engine::Create(std::move(policies)));
  }();
  return engine;
}

inline void RunWaypoint(const uint8_t* data, size_t size, bool h2c) {
  Input in(data, size);
  const size_t chunk = static_cast<size_t>(in.Byte()) + 1;
  const uint8_t mode = in.Byte() % 5;
  const bool full = in.Byte() & 1;
  const std::string upstream_bytes(in.TakeSized());
  std::string client(in.Rest());
  if (h2c) client.insert(0, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

  static auto loop = std::move(*EpollLoop::Create());
  FakeConnector connector;
  waypoint::HttpMetrics metrics;
  waypoint::ProxyContext ctx;
  ctx.loop = loop.get();
  ctx.engine = FuzzEngine();
  ctx.target = authz::Workload{"default", {}, std::nullopt};
  ctx.filters.push_back(std::make_shared<waypoint::AuthzFilter>(ctx.engine, ctx.target));
  ctx.upstream = &connector;
  ctx.metrics = &metrics;
  ctx.access_log = [](const std::string& line) {
    FUZZ_REQUIRE(line.find('\n') == std::string::npos);
  };
  bool closed = false;
  auto d = std::make_shared<FakeState>();
  d->report_full = full;
  auto down = std::make_unique<FakeStream>(d);
  waypoint::ServeConnection(&ctx, std::move(down), waypoint::DownstreamInfo{},
                            [&] { closed = true; });

  size_t answered = 0;
  auto drive_upstreams = [&] {
    for (; answered < connector.streams.size(); ++answered) {
      FakeState* u = connector.streams[answered].get();
      if (u->closed || u->observer == nullptr) continue;
      switch (mode) {
        case 0:
          u->observer->OnError(absl::UnavailableError("connect refused"));
          break;
        case 1:
          u->observer->OnConnected();
          if (u->observer) u->observer->OnData("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
          break;
        case 2:
          u->observer->OnConnected();
          if (u->observer) u->observer->OnData(upstream_bytes);
          if (u->observer) u->observer->OnEnd();
          break;
        case 3:
          u->observer->OnConnected();
          if (u->observer) u->observer->OnData("HTTP/1.1 101 Switching Protocols\r\n\r\n");
          break;
        default:
          break;
      }
    }
  };
  for (size_t off = 0; off < client.size() && !closed && !d->closed; off += chunk) {
    if (d->observer == nullptr) break;
    d->observer->OnData(absl::string_view(client).substr(off, chunk));
    drive_upstreams();
    loop->RunOnce(absl::ZeroDuration());
  }
  if (!closed && !d->closed && d->observer != nullptr) {
    d->observer->OnWritable();
    if (d->observer) d->observer->OnEnd();
  }
  for (int i = 0; i < 4; ++i) loop->RunOnce(absl::ZeroDuration());
  if (mode != 3) {
    // Whatever went upstream is a clean sequence of requests.
    for (const auto& u : connector.streams) {
      struct Sink : waypoint::Http1Sink {
        void OnHead(waypoint::MessageHead) override {}
        void OnBody(absl::string_view) override {}
        void OnMessageComplete() override {}
      } sink;
      if (u->written.size() >= (1 << 20)) continue;  // truncated by the fake
      waypoint::Http1Parser p(waypoint::Http1Parser::Kind::kRequest, &sink);
      absl::string_view rest = u->written;
      while (!rest.empty() && !p.error() && !p.upgraded()) {
        const size_t n = p.Feed(rest);
        rest.remove_prefix(n);
        if (p.paused())
          p.Resume();
        else if (n == 0)
          break;
      }
      if (p.error()) {
        std::fprintf(stderr, "upstream bytes (%s):\n%s\n", p.error()->detail.c_str(),
                     u->written.c_str());
      }
      FUZZ_REQUIRE(!p.error());
    }
  }
  // Shut the connection down if it still lives, and free everything.
  if (!closed && d->observer != nullptr) d->observer->OnError(absl::AbortedError("fuzz end"));
  for (int i = 0; i < 4; ++i) loop->RunOnce(absl::ZeroDuration());
}

}  // namespace ambit::fuzz
