// The waypoint's gRPC ext_authz client reading an authorizer's answers: the real client
// (NewGrpcAuthorizerClient: nghttp2 session, header and trailer handling, message bounds,
// GOAWAY and refused-stream retries) over a fake connection whose peer sends the input, then the
// answer decoding alone (gRPC frames -> CheckResponse -> verdict). Input layout:
//   byte 0: the peer's bytes arrive in pieces of (byte 0) + 1 bytes
//   byte 1: low 2 bits + 1: concurrent checks (streams 1, 3, 5, 7); bit 2: include a body
//   rest:   the authorizer's HTTP/2 bytes (server SETTINGS, HEADERS, DATA, trailers...)
// Properties besides "no crash, leak or hang": every check is answered exactly once once the
// connection ends; a deny carries a status a response can have; every header edit has a lower-case
// token name and a value without CR, LF or NUL.

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/common/clock.h"
#include "agent/waypoint/ext_authz_client.h"
#include "agent/waypoint/ext_authz_grpc_internal.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/waypoint_fuzz.h"

namespace ambit::fuzz {
namespace {

// Deferred work runs when the harness drains it; timers never fire (the connection's end
// finishes every check instead).
class DrainLoop final : public EventLoop {
 public:
  absl::Status Watch(int, uint32_t, EventHandler*) override { return absl::OkStatus(); }
  absl::Status Modify(int, uint32_t, EventHandler*) override { return absl::OkStatus(); }
  void Unwatch(int) override {}
  void Defer(std::function<void()> fn) override { deferred_.push_back(std::move(fn)); }
  void RunAfter(absl::Duration, std::function<void()>) override {}
  void Drain() {
    for (int i = 0; i < 10000 && !deferred_.empty(); ++i) {
      std::function<void()> fn = std::move(deferred_.front());
      deferred_.pop_front();
      fn();
    }
  }

 private:
  std::deque<std::function<void()>> deferred_;
};

bool CleanName(const std::string& n) {
  if (n.empty()) return false;
  for (char c : n) {
    if (c >= 'A' && c <= 'Z') return false;
    if (c <= ' ' || c == ':' || c == '\x7f') return false;
  }
  return true;
}

bool CleanValue(const std::string& v) {
  return v.find_first_of(std::string("\r\n\0", 3)) == std::string::npos;
}

void CheckVerdict(const waypoint::AuthzCheckResponse& r) {
  using Outcome = waypoint::AuthzCheckResponse::Outcome;
  if (r.outcome == Outcome::kDeny) FUZZ_REQUIRE(r.status >= 200 && r.status <= 599);
  for (const auto* edits : {&r.upstream_edits, &r.downstream_edits}) {
    for (const waypoint::HeaderEdit& e : *edits) {
      FUZZ_REQUIRE(CleanName(e.name));
      FUZZ_REQUIRE(CleanValue(e.value));
    }
  }
  for (const auto& [n, v] : r.deny_headers) {
    FUZZ_REQUIRE(CleanName(n));
    FUZZ_REQUIRE(CleanValue(v));
  }
}

void Run(const uint8_t* data, size_t size) {
  Input in(data, size);
  const size_t chunk = static_cast<size_t>(in.Byte()) + 1;
  const uint8_t shape = in.Byte();
  const int checks = (shape & 3) + 1;
  const std::string peer(in.Rest());

  DrainLoop loop;
  FakeConnector connector;
  FakeClock clock;
  authz::ExtAuthzProvider p;
  p.name = "fuzz";
  p.kind = authz::ExtAuthzProvider::Kind::kGrpc;
  p.service = "foo/ext-authz.foo.svc.cluster.local";
  p.port = 9000;
  p.timeout = absl::Seconds(1);
  if (shape & 4) p.include_request_body = authz::ExtAuthzBodyOptions{1024, true, true};
  auto client = waypoint::NewGrpcAuthorizerClient(p, &connector, &loop, &clock);

  waypoint::AuthzCheckRequest req;
  req.method = "POST";
  req.path = "/x";
  req.host = "productpage";
  req.headers = {{"x-present", "1"}};
  if (shape & 4) req.body = "hello";
  std::vector<int> answered(checks, 0);
  std::vector<std::unique_ptr<waypoint::AsyncCheck>> handles;
  for (int i = 0; i < checks; ++i) {
    handles.push_back(client->Check(req, [&answered, i](waypoint::AuthzCheckResponse r) {
      ++answered[i];
      CheckVerdict(r);
      // For looking at what the seeds reach.
      if (std::getenv("AMBIT_FUZZ_VERBOSE") != nullptr) {
        std::fprintf(stderr, "check %d: outcome %d status %d: %s\n", i, static_cast<int>(r.outcome),
                     r.status, r.detail.c_str());
      }
    }));
  }
  loop.Drain();
  FUZZ_REQUIRE(!connector.streams.empty());
  {
    auto s = connector.streams[0];
    if (s->observer != nullptr) s->observer->OnConnected();
    for (size_t pos = 0; pos < peer.size() && s->observer != nullptr; pos += chunk) {
      s->observer->OnData(absl::string_view(peer).substr(pos, chunk));
      loop.Drain();
    }
  }
  // Every connection ends (retries open new ones: bounded by the number of checks).
  for (size_t i = 0; i < connector.streams.size() && i < 16; ++i) {
    auto s = connector.streams[i];
    if (s->observer != nullptr) s->observer->OnEnd();
    loop.Drain();
  }
  for (int i = 0; i < checks; ++i) FUZZ_REQUIRE(answered[i] == 1);
  handles.clear();
  client.reset();
  loop.Drain();

  // The answer decoding alone, on the same bytes as the DATA of an OK answer.
  waypoint::grpc_internal::GrpcAnswer answer;
  answer.http_status = 200;
  answer.content_type = "application/grpc";
  answer.grpc_status = "0";
  answer.data = peer;
  CheckVerdict(waypoint::grpc_internal::MapAnswer(answer, &req.headers));
}

}  // namespace
}  // namespace ambit::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ambit::fuzz::Run(data, size);
  return 0;
}
