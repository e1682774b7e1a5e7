// An external authorizer's HTTP answers as the waypoint's ext_authz HTTP client reads them
// (agent/waypoint/ext_authz_http.cc): any bytes from the authorizer's connection.
// Input: [split byte][config byte][answer bytes]. The config byte's bits pick the provider's
// header lists (1: headersToUpstreamOnAllow, 2: headersToDownstreamOnAllow, 4:
// headersToDownstreamOnDeny, 8: the connection closes after the bytes, 16: a HEAD check). The
// answer is mapped whole (ReadHttpAnswer), then played through a real client over a fake
// connection in two pieces split at (split byte * len / 256).
// Properties: no crash, leak or hang; the client answers exactly once, with the same outcome,
// status and body as the whole read (HEAD aside); an allow carries edits only of listed headers
// and a deny only a 2xx-4xx status other than 200 and a bounded body; no header that crosses
// holds CR, LF or NUL or is a framing header.

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "agent/common/clock.h"
#include "agent/waypoint/ext_authz_client.h"
#include "agent/waypoint/ext_authz_http_internal.h"
#include "tests/fakes/fake_byte_stream.h"
#include "tests/fakes/fake_event_loop.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using ambit::waypoint::AuthzCheckResponse;
using ambit::waypoint::HeaderEdit;
using ambit::waypoint::IsHopByHop;

bool Clean(absl::string_view name, absl::string_view value) {
  return !name.empty() && name != "host" && !IsHopByHop(name) &&
         value.find_first_of(absl::string_view("\r\n\0", 3)) == absl::string_view::npos;
}

void CheckShape(const ambit::authz::ExtAuthzProvider& p, const AuthzCheckResponse& r) {
  using Outcome = AuthzCheckResponse::Outcome;
  if (r.outcome == Outcome::kAllow) {
    for (const HeaderEdit& e : r.upstream_edits) {
      FUZZ_REQUIRE(Clean(e.name, e.value));
      FUZZ_REQUIRE(
          ambit::waypoint::internal::HeaderNameMatches(p.headers_to_upstream_on_allow, e.name));
    }
    for (const HeaderEdit& e : r.downstream_edits) {
      FUZZ_REQUIRE(Clean(e.name, e.value));
      FUZZ_REQUIRE(
          ambit::waypoint::internal::HeaderNameMatches(p.headers_to_downstream_on_allow, e.name));
    }
  } else if (r.outcome == Outcome::kDeny) {
    FUZZ_REQUIRE(r.status >= 201 && r.status <= 499);
    FUZZ_REQUIRE(r.deny_body.size() <= ambit::waypoint::internal::kMaxAnswerBodyBytes);
    for (const auto& [k, v] : r.deny_headers) FUZZ_REQUIRE(Clean(k, v));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t split_byte = data[0];
  const uint8_t config = data[1];
  const absl::string_view bytes(reinterpret_cast<const char*>(data) + 2, size - 2);
  const size_t split = bytes.size() * split_byte / 256;
  const bool eof = (config & 8) != 0;
  const bool head = (config & 16) != 0;

  ambit::authz::ExtAuthzProvider p;
  p.name = "fuzz";
  p.timeout = absl::Seconds(1);
  if (config & 1) p.headers_to_upstream_on_allow = {"x-up", "x-pre-*"};
  if (config & 2) p.headers_to_downstream_on_allow = {"*-down"};
  if (config & 4) p.headers_to_downstream_on_deny = {"x-deny"};

  const AuthzCheckResponse whole = ambit::waypoint::internal::ReadHttpAnswer(p, bytes, eof);
  CheckShape(p, whole);

  ambit::FakeClock clock;
  ambit::testing::FakeEventLoop loop(&clock);
  ambit::testing::FakeConnector connector;
  auto client = ambit::waypoint::NewHttpAuthorizerClient(p, &connector, &loop, &clock);
  ambit::waypoint::AuthzCheckRequest request;
  request.method = head ? "HEAD" : "GET";
  request.path = "/";
  request.host = "svc";
  int answers = 0;
  std::optional<AuthzCheckResponse> got;
  auto handle = client->Check(request, [&](AuthzCheckResponse r) {
    ++answers;
    got = std::move(r);
  });
  FUZZ_REQUIRE(connector.streams.size() == 1);
  auto conn = connector.streams[0];
  if (split > 0) conn->Data(bytes.substr(0, split));
  if (split < bytes.size()) conn->Data(bytes.substr(split));
  if (eof) conn->End();
  loop.RunDeferred();
  if (!got) loop.Advance(absl::Seconds(2));  // still waiting: the timeout ends it
  FUZZ_REQUIRE(answers == 1);
  CheckShape(p, *got);
  if (!head) {
    FUZZ_REQUIRE(got->outcome == whole.outcome);
    FUZZ_REQUIRE(got->status == whole.status);
    FUZZ_REQUIRE(got->deny_body == whole.deny_body);
  }
  return 0;
}
