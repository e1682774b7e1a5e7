// Drives the waypoint's ext_authz clients (NewHttpAuthorizerClient / NewGrpcAuthorizerClient) on
// an EpollLoop against an authorizer on loopback, for tests (test_ext_authz_grpc.py): the clients'
// real code, connections and timers, without a waypoint around them. Not a product binary.
//
//   authz_probe --kind grpc --addr 127.0.0.1:PORT [provider flags] [check flags]
//               [--count N] [--concurrency C] [--interactive]
//
// Sends --count checks (at most --concurrency at a time) through one client, then exits. With
// --interactive it also reads stdin: each line sends another batch of --count checks through the
// same client (so through the same connection, if it is still usable), with the line, when not
// empty, as the x-ext-authz header's value; end of input ends the run once every answer is in.
// Prints one JSON line per answer on stdout:
//   {"seq", "outcome": "allow"|"deny"|"error", "status", "headers": [[n, v]...], "body",
//    "upstream_edits": [{"op", "name", "value"}...], "downstream_edits": [...], "detail",
//    "latency_us"}
// and "done" when every check is answered. Exit status 0 unless a flag is wrong.

#include <sys/epoll.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/common/epoll_loop.h"
#include "agent/common/ip_address.h"
#include "agent/waypoint/ext_authz_client.h"
#include "agent/waypoint/socket_stream.h"

ABSL_FLAG(std::string, kind, "grpc", "http or grpc");
ABSL_FLAG(std::string, addr, "", "the authorizer, 127.0.0.1:PORT");
// The provider.
ABSL_FLAG(std::string, service, "ext-authz.foo.svc.cluster.local", "provider service");
ABSL_FLAG(int, port, 0, "provider port (0: the port of --addr)");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(5), "provider timeout");
ABSL_FLAG(std::string, path_prefix, "", "pathPrefix (http)");
ABSL_FLAG(std::vector<std::string>, include_headers, {}, "includeRequestHeadersInCheck (http)");
ABSL_FLAG(std::vector<std::string>, upstream_headers, {}, "headersToUpstreamOnAllow (http)");
ABSL_FLAG(std::vector<std::string>, downstream_deny_headers, {},
          "headersToDownstreamOnDeny (http)");
ABSL_FLAG(std::vector<std::string>, downstream_allow_headers, {},
          "headersToDownstreamOnAllow (http)");
ABSL_FLAG(bool, include_body, false, "includeRequestBodyInCheck");
ABSL_FLAG(uint32_t, max_request_bytes, 8192, "includeRequestBodyInCheck.maxRequestBytes");
ABSL_FLAG(bool, pack_as_bytes, false, "includeRequestBodyInCheck.packAsBytes");
// The checked request.
ABSL_FLAG(std::string, method, "GET", "method");
ABSL_FLAG(std::string, path, "/", "path and query");
ABSL_FLAG(std::string, host, "productpage.foo.svc.cluster.local", "host");
ABSL_FLAG(std::string, protocol, "HTTP/1.1", "protocol");
ABSL_FLAG(std::string, headers, "", "request headers, `name: value`, one per line");
ABSL_FLAG(std::string, ext_authz, "", "the x-ext-authz header (empty: none)");
ABSL_FLAG(std::string, body, "", "request body (sent when --include_body)");
ABSL_FLAG(std::string, source, "198.18.0.10:40000", "source address");
ABSL_FLAG(std::string, destination, "198.18.0.20:8080", "destination address");
ABSL_FLAG(std::string, source_principal, "spiffe://cluster.local/ns/foo/sa/sleep", "");
ABSL_FLAG(std::string, destination_principal, "spiffe://cluster.local/ns/foo/sa/waypoint", "");
ABSL_FLAG(std::string, request_id, "", "x-request-id");
// The run.
ABSL_FLAG(int, count, 1, "checks per batch");
ABSL_FLAG(int, concurrency, 1, "checks in flight at most");
ABSL_FLAG(bool, interactive, false, "one more batch per line of stdin");

namespace ambit::waypoint {
namespace {

std::string Json(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c >= 0x7f) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out + "\"";
}

std::string EditsJson(const std::vector<HeaderEdit>& edits) {
  std::vector<std::string> parts;
  for (const HeaderEdit& e : edits) {
    const char* op = e.op == HeaderEdit::Op::kSet      ? "set"
                     : e.op == HeaderEdit::Op::kAppend ? "append"
                                                       : "remove";
    parts.push_back(absl::StrCat("{\"op\":\"", op, "\",\"name\":", Json(e.name),
                                 ",\"value\":", Json(e.value), "}"));
  }
  return absl::StrCat("[", absl::StrJoin(parts, ","), "]");
}

const char* OutcomeName(AuthzCheckResponse::Outcome o) {
  switch (o) {
    case AuthzCheckResponse::Outcome::kAllow:
      return "allow";
    case AuthzCheckResponse::Outcome::kDeny:
      return "deny";
    case AuthzCheckResponse::Outcome::kError:
      return "error";
  }
  return "error";
}

class Probe final : public EventHandler {
 public:
  Probe(EpollLoop* loop, AuthorizerClient* client, AuthzCheckRequest base)
      : loop_(loop), client_(client), base_(std::move(base)) {}

  void AddBatch(const std::string& ext_authz) {
    for (int i = 0; i < absl::GetFlag(FLAGS_count); ++i) queue_.push_back(ext_authz);
    Pump();
  }

  void WatchStdin() {
    stdin_open_ = true;
    if (!loop_->Watch(STDIN_FILENO, EPOLLIN, this).ok()) stdin_open_ = false;
  }

  void OnEvents(uint32_t) override {
    char buf[4096];
    ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));
    if (n <= 0) {
      loop_->Unwatch(STDIN_FILENO);
      stdin_open_ = false;
      MaybeStop();
      return;
    }
    line_.append(buf, n);
    size_t nl;
    while ((nl = line_.find('\n')) != std::string::npos) {
      std::string l = line_.substr(0, nl);
      line_.erase(0, nl + 1);
      AddBatch(std::string(absl::StripAsciiWhitespace(l)));
    }
  }

  void Pump() {
    while (!queue_.empty() &&
           static_cast<int>(in_flight_.size()) < absl::GetFlag(FLAGS_concurrency)) {
      AuthzCheckRequest r = base_;
      std::string v = queue_.front();
      queue_.erase(queue_.begin());
      if (v.empty()) v = absl::GetFlag(FLAGS_ext_authz);
      if (!v.empty()) r.headers.emplace_back("x-ext-authz", v);
      r.time = absl::Now();
      const int seq = next_seq_++;
      in_flight_[seq] = client_->Check(r, [this, seq](AuthzCheckResponse a) { OnAnswer(seq, a); });
    }
  }

  void MaybeStop() {
    if (queue_.empty() && in_flight_.empty() && !stdin_open_) {
      std::cout << "done" << std::endl;
      loop_->Stop();
    }
  }

 private:
  void OnAnswer(int seq, const AuthzCheckResponse& a) {
    std::vector<std::string> headers;
    for (const auto& [n, v] : a.deny_headers) {
      headers.push_back(absl::StrCat("[", Json(n), ",", Json(v), "]"));
    }
    std::cout << "{\"seq\":" << seq << ",\"outcome\":\"" << OutcomeName(a.outcome)
              << "\",\"status\":" << a.status << ",\"headers\":[" << absl::StrJoin(headers, ",")
              << "],\"body\":" << Json(a.deny_body)
              << ",\"upstream_edits\":" << EditsJson(a.upstream_edits)
              << ",\"downstream_edits\":" << EditsJson(a.downstream_edits)
              << ",\"detail\":" << Json(a.detail)
              << ",\"latency_us\":" << absl::ToInt64Microseconds(a.latency) << "}" << std::endl;
    // The handle goes after this callback returns.
    auto node = in_flight_.extract(seq);
    std::shared_ptr<AsyncCheck> handle(std::move(node.mapped()));
    loop_->Defer([handle] {});
    Pump();
    MaybeStop();
  }

  EpollLoop* loop_;
  AuthorizerClient* client_;
  AuthzCheckRequest base_;
  std::vector<std::string> queue_;
  std::map<int, std::unique_ptr<AsyncCheck>> in_flight_;
  int next_seq_ = 0;
  bool stdin_open_ = false;
  std::string line_;
};

int Main() {
  absl::StatusOr<SocketAddress> addr = SocketAddress::Parse(absl::GetFlag(FLAGS_addr));
  if (!addr.ok()) {
    std::cerr << "authz_probe: --addr: " << addr.status() << "\n";
    return 2;
  }
  authz::ExtAuthzProvider p;
  p.name = "probe";
  const std::string kind = absl::GetFlag(FLAGS_kind);
  if (kind != "http" && kind != "grpc") {
    std::cerr << "authz_probe: --kind is http or grpc\n";
    return 2;
  }
  p.kind =
      kind == "grpc" ? authz::ExtAuthzProvider::Kind::kGrpc : authz::ExtAuthzProvider::Kind::kHttp;
  p.service = absl::GetFlag(FLAGS_service);
  p.service_key = "foo/ext-authz";
  p.port = absl::GetFlag(FLAGS_port) != 0 ? absl::GetFlag(FLAGS_port) : addr->port;
  p.timeout = absl::GetFlag(FLAGS_timeout);
  p.path_prefix = absl::GetFlag(FLAGS_path_prefix);
  p.include_request_headers = absl::GetFlag(FLAGS_include_headers);
  p.headers_to_upstream_on_allow = absl::GetFlag(FLAGS_upstream_headers);
  p.headers_to_downstream_on_deny = absl::GetFlag(FLAGS_downstream_deny_headers);
  p.headers_to_downstream_on_allow = absl::GetFlag(FLAGS_downstream_allow_headers);
  if (absl::GetFlag(FLAGS_include_body)) {
    p.include_request_body = authz::ExtAuthzBodyOptions{absl::GetFlag(FLAGS_max_request_bytes),
                                                        false, absl::GetFlag(FLAGS_pack_as_bytes)};
  }

  AuthzCheckRequest r;
  r.method = absl::GetFlag(FLAGS_method);
  r.path = absl::GetFlag(FLAGS_path);
  r.host = absl::GetFlag(FLAGS_host);
  r.protocol = absl::GetFlag(FLAGS_protocol);
  for (absl::string_view line :
       absl::StrSplit(absl::GetFlag(FLAGS_headers), '\n', absl::SkipWhitespace())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits(':', 1));
    r.headers.emplace_back(std::string(absl::StripAsciiWhitespace(kv.first)),
                           std::string(absl::StripAsciiWhitespace(kv.second)));
  }
  if (absl::GetFlag(FLAGS_include_body)) {
    r.body = absl::GetFlag(FLAGS_body);
    r.headers.emplace_back("content-length", absl::StrCat(r.body->size()));
  }
  for (auto [flag, out] : {std::pair{absl::GetFlag(FLAGS_source), &r.source},
                           std::pair{absl::GetFlag(FLAGS_destination), &r.destination}}) {
    if (flag.empty()) continue;
    absl::StatusOr<SocketAddress> a = SocketAddress::Parse(flag);
    if (!a.ok()) {
      std::cerr << "authz_probe: " << a.status() << "\n";
      return 2;
    }
    *out = *a;
  }
  r.source_principal = absl::GetFlag(FLAGS_source_principal);
  r.destination_principal = absl::GetFlag(FLAGS_destination_principal);
  r.request_id = absl::GetFlag(FLAGS_request_id);

  absl::StatusOr<std::unique_ptr<EpollLoop>> loop = EpollLoop::Create();
  if (!loop.ok()) {
    std::cerr << "authz_probe: " << loop.status() << "\n";
    return 1;
  }
  TcpConnector connector(loop->get(), *addr);
  std::unique_ptr<AuthorizerClient> client =
      kind == "grpc" ? NewGrpcAuthorizerClient(p, &connector, loop->get(), &RealClock::Get())
                     : NewHttpAuthorizerClient(p, &connector, loop->get(), &RealClock::Get());
  Probe probe(loop->get(), client.get(), r);
  if (absl::GetFlag(FLAGS_interactive)) probe.WatchStdin();
  probe.AddBatch("");
  probe.MaybeStop();
  (*loop)->Run();
  // The client and its connections go before the loop they are registered with.
  client.reset();
  for (int i = 0; i < 3; ++i) (*loop)->RunOnce(absl::ZeroDuration());
  return 0;
}

}  // namespace
}  // namespace ambit::waypoint

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return ambit::waypoint::Main();
}
