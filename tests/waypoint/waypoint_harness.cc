// The waypoint's HTTP engine on a loopback TCP listener, forwarding to a loopback upstream, with
// policies from a small file, so real clients (curl, Python http.client and h2, raw sockets) can
// exercise it before HBONE is wired in. Not a product binary: test_waypoint_http.py drives it.
//
// Prints "listening <port>" (and "metrics <port>" with --metrics-listen) on stdout once ready;
// access-log lines go to stderr. The metrics listener answers every connection with the
// Prometheus text of istio_requests_total and friends, then closes.
//
// Policy file: one AuthorizationPolicy per line, `ACTION name [field=v1,v2 ...]`, where ACTION is
// ALLOW, DENY, AUDIT or CUSTOM, and a field is one of the rule's source or operation fields
// (methods, paths, hosts, ports, principals, namespaces, ip_blocks and their not_ forms,
// provider=NAME for CUSTOM) or `when=<key>:<v1>|<v2>`. Every field lands in one rule; a line
// without fields is `rules: [{}]`. `#` starts a comment.
//
// `JWT name issuer=ISS [field=...]` adds one jwtRule to the RequestAuthentication `name` (lines
// with the same name add rules to one resource) in the destination's namespace, with no selector:
// audiences=a,b  jwks_file=PATH (inline jwks read from a file)  jwks_uri=URI  timeout=DURATION
// from_headers=name:prefix,...  from_params=p,...  from_cookies=c,...
// output_payload_to_header=H  forward_original_token=true|false  claim_to_headers=H:claim,...
// A jwks_uri is fetched over HTTPS (agent/tls/https_fetch.h) by a JwksRefresher, trusting
// --jwks-ca-file (default: the system roots).
//
// --ext-authz (repeatable, or several in one comma-separated list; each provider starts at its
// name=): the ext_authz providers CUSTOM lines name, each a client over loopback TCP:
// name=P,kind=http|grpc,addr=127.0.0.1:PORT[,timeout=200ms][,fail_open=true][,status_on_error=N]
// [,path_prefix=/check][,headers=a|b][,add=k:v|k2:v2][,body=MAX[:partial][:bytes]]
// [,upstream=h|..][,down_deny=h|..][,down_allow=h|..][,unresolved=why]
//
// `--hold-filter` adds a filter between authentication and authorization that waits
// (FilterResult::Wait) as the request's headers say: `x-hold-ms: N` waits N ms on a loop timer,
// `x-hold-body: MAX[,partial]` asks for the body first (a request with neither goes on at once);
// then `x-hold-deny: STATUS` answers STATUS `held and denied`, else the request goes on with
// `x-held-body-bytes` (and `x-held-truncated: 1`) added upstream and `x-held: yes` to the client.
// It logs `hold started`, `hold done` and `hold cancelled` with the request path, and sets the
// access log's `ext_authz=hold:<allow|deny>:<ms>`.

#include <netinet/in.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "agent/authn/authenticator.h"
#include "agent/authn/jwks_provider.h"
#include "agent/authn/signature.h"
#include "agent/authz/compile.h"
#include "agent/authz/engine.h"
#include "agent/common/epoll_loop.h"
#include "agent/common/flags.h"
#include "agent/common/log.h"
#include "agent/common/socket_util.h"
#include "agent/common/status.h"
#include "agent/common/unique_fd.h"
#include "agent/tls/https_fetch.h"
#include "agent/waypoint/authn_filter.h"
#include "agent/waypoint/authz_filter.h"
#include "agent/waypoint/ext_authz_client.h"
#include "agent/waypoint/jwks_refresher.h"
#include "agent/waypoint/proxy.h"
#include "agent/waypoint/socket_stream.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0", "loopback address for downstream clients");
ABSL_FLAG(std::string, upstream, "", "loopback address of the upstream server");
ABSL_FLAG(std::string, policy, "", "policy file (see the file comment)");
ABSL_FLAG(std::string, peer_identity, "",
          "SPIFFE ID every downstream peer is taken to have (HBONE will provide it)");
ABSL_FLAG(std::string, namespace_name, "default", "the destination workload's namespace");
ABSL_FLAG(bool, tcp, false, "the port is declared TCP: L4 policy and byte pass-through");
ABSL_FLAG(std::string, metrics_listen, "", "loopback address for the metrics text");
ABSL_FLAG(absl::Duration, idle_timeout, absl::Hours(1), "connection idle timeout");
ABSL_FLAG(absl::Duration, stream_idle_timeout, absl::Minutes(5), "stream idle timeout");
ABSL_FLAG(absl::Duration, request_headers_timeout, absl::Seconds(60), "request headers timeout");
ABSL_FLAG(absl::Duration, request_timeout, absl::ZeroDuration(), "request timeout (0: off)");
ABSL_FLAG(uint32_t, stream_open_burst, 200, "HTTP/2 stream-open bucket size");
ABSL_FLAG(double, stream_open_rate, 100, "HTTP/2 stream-open refill per second");
ABSL_FLAG(std::string, jwks_ca_file, "",
          "PEM roots trusted for jwksUri servers (empty: /etc/ssl/certs/ca-certificates.crt)");
ABSL_FLAG(absl::Duration, jwks_refresh_interval, absl::Minutes(20), "jwksUri refresh interval");
ABSL_FLAG(absl::Duration, jwks_retry_interval, absl::Seconds(5), "jwksUri retry after a failure");
ABSL_FLAG(absl::Duration, jwks_max_age, absl::Hours(1), "how long a fetched key set is used");
// ---- ext_authz providers ----
ABSL_FLAG(std::vector<std::string>, ext_authz, {},
          "ext_authz providers (see the file comment); repeatable");
// ---- end ext_authz providers ----
ABSL_FLAG(bool, hold_filter, false, "add the test filter that waits (see the file comment)");

namespace ambit::waypoint {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// One `JWT name issuer=... field=...` line (see the file comment).
absl::Status ParseJwtLine(const std::vector<std::string>& words, const std::string& ns,
                          const std::string& where,
                          std::vector<authn::RequestAuthentication>& out) {
  authn::RequestAuthentication* ra = nullptr;
  for (auto& r : out) {
    if (r.name == words[1]) ra = &r;
  }
  if (ra == nullptr) {
    ra = &out.emplace_back();
    ra->name = words[1];
    ra->namespace_name = ns;
    ra->source_file = where;
  }
  authn::JwtRule rule;
  for (size_t i = 2; i < words.size(); ++i) {
    std::pair<std::string, std::string> kv = absl::StrSplit(words[i], absl::MaxSplits('=', 1));
    const std::string& k = kv.first;
    const std::string& v = kv.second;
    std::vector<std::string> vals = absl::StrSplit(v, ',', absl::SkipEmpty());
    if (k == "issuer") {
      rule.issuer = v;
    } else if (k == "audiences") {
      rule.audiences = vals;
    } else if (k == "jwks_file") {
      AMBIT_ASSIGN_OR_RETURN(rule.jwks, ReadFile(v));
    } else if (k == "jwks_uri") {
      rule.jwks_uri = v;
    } else if (k == "timeout") {
      if (!absl::ParseDuration(v, &rule.timeout)) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": bad timeout"));
      }
    } else if (k == "from_headers") {
      for (const std::string& h : vals) {
        std::pair<std::string, std::string> np = absl::StrSplit(h, absl::MaxSplits(':', 1));
        // The prefix may end in a space, which the line format cannot hold: '+' stands for it.
        std::string prefix = np.second;
        for (char& c : prefix) {
          if (c == '+') c = ' ';
        }
        rule.from_headers.push_back({np.first, prefix});
      }
    } else if (k == "from_params") {
      rule.from_params = vals;
    } else if (k == "from_cookies") {
      rule.from_cookies = vals;
    } else if (k == "output_payload_to_header") {
      rule.output_payload_to_header = v;
    } else if (k == "forward_original_token") {
      rule.forward_original_token = v == "true";
    } else if (k == "claim_to_headers") {
      for (const std::string& hc : vals) {
        std::pair<std::string, std::string> p = absl::StrSplit(hc, absl::MaxSplits(':', 1));
        rule.output_claim_to_headers.push_back({p.first, p.second});
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat(where, ": unknown JWT field ", k));
    }
  }
  ra->jwt_rules.push_back(std::move(rule));
  return absl::OkStatus();
}

// AuthorizationPolicy lines go to the result, JWT lines to *jwt (ignored when null).
absl::StatusOr<std::vector<authz::CompiledPolicy>> LoadPolicies(
    const std::string& path, const std::string& ns,
    std::vector<authn::RequestAuthentication>* jwt = nullptr) {
  std::vector<authz::CompiledPolicy> out;
  if (path.empty()) return out;
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read policy file ", path));
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::vector<std::string> words = absl::StrSplit(line, ' ', absl::SkipWhitespace());
    if (words.empty()) continue;
    if (words.size() < 2) return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": name?"));
    if (words[0] == "JWT") {
      if (jwt == nullptr) continue;
      AMBIT_RETURN_IF_ERROR(ParseJwtLine(words, ns, absl::StrCat(path, ":", n), *jwt));
      continue;
    }
    authz::Policy p;
    p.namespace_name = ns;
    p.name = words[1];
    if (words[0] == "ALLOW") {
      p.action = authz::Action::kAllow;
    } else if (words[0] == "DENY") {
      p.action = authz::Action::kDeny;
    } else if (words[0] == "AUDIT") {
      p.action = authz::Action::kAudit;
    } else if (words[0] == "CUSTOM") {
      p.action = authz::Action::kCustom;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": unknown action"));
    }
    authz::Source src;
    authz::Operation op;
    authz::Rule rule;
    bool has_src = false, has_op = false;
    for (size_t i = 2; i < words.size(); ++i) {
      std::pair<std::string, std::string> kv = absl::StrSplit(words[i], absl::MaxSplits('=', 1));
      std::vector<std::string> vals = absl::StrSplit(kv.second, ',');
      const std::string& k = kv.first;
      auto set = [&](std::vector<std::string>& field, bool& flag) {
        field = vals;
        flag = true;
      };
      if (k == "provider")
        p.provider = kv.second;
      else if (k == "methods")
        set(op.methods, has_op);
      else if (k == "not_methods")
        set(op.not_methods, has_op);
      else if (k == "paths")
        set(op.paths, has_op);
      else if (k == "not_paths")
        set(op.not_paths, has_op);
      else if (k == "hosts")
        set(op.hosts, has_op);
      else if (k == "not_hosts")
        set(op.not_hosts, has_op);
      else if (k == "ports")
        set(op.ports, has_op);
      else if (k == "not_ports")
        set(op.not_ports, has_op);
      else if (k == "principals")
        set(src.principals, has_src);
      else if (k == "not_principals")
        set(src.not_principals, has_src);
      else if (k == "namespaces")
        set(src.namespaces, has_src);
      else if (k == "not_namespaces")
        set(src.not_namespaces, has_src);
      else if (k == "ip_blocks")
        set(src.ip_blocks, has_src);
      else if (k == "not_ip_blocks")
        set(src.not_ip_blocks, has_src);
      else if (k == "request_principals")
        set(src.request_principals, has_src);
      else if (k == "when") {
        std::pair<std::string, std::string> c = absl::StrSplit(kv.second, absl::MaxSplits(':', 1));
        rule.when.push_back(authz::Condition{c.first, absl::StrSplit(c.second, '|'), {}});
      } else {
        return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": unknown field ", k));
      }
    }
    if (has_src) rule.from.push_back(src);
    if (has_op) rule.to.push_back(op);
    p.rules = std::vector<authz::Rule>{rule};
    auto compiled = authz::Compile(p);
    if (!compiled.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", n, ": ", compiled.status().message()));
    }
    out.push_back(std::move(*compiled));
  }
  return out;
}

absl::StatusOr<UniqueFd> Listen(const std::string& addr, uint16_t* port) {
  AMBIT_ASSIGN_OR_RETURN(SocketAddress a, SocketAddress::Parse(addr));
  if (!a.ip.is_loopback()) return absl::InvalidArgumentError("only loopback addresses");
  sockaddr_storage ss{};
  socklen_t len = a.ToSockaddr(&ss);
  UniqueFd fd(socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return absl::ErrnoToStatus(errno, "socket");
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("bind ", addr));
  }
  if (listen(fd.get(), 512) < 0) return absl::ErrnoToStatus(errno, "listen");
  AMBIT_ASSIGN_OR_RETURN(SocketAddress local, LocalAddress(fd.get()));
  *port = local.port;
  return fd;
}

// ---- --hold-filter: an asynchronous filter driven by request headers (see the file comment).

class HoldCheck final : public AsyncCheck {
 public:
  struct State {
    std::string path;
    bool answered = false;
  };
  explicit HoldCheck(std::shared_ptr<State> state) : state_(std::move(state)) {}
  ~HoldCheck() override {
    if (!state_->answered) {
      AMBIT_LOG("hold", Info) << "hold cancelled path=" << state_->path;
    }
  }

 private:
  // The timer holds only a weak_ptr: a cancelled hold is gone when it fires.
  std::shared_ptr<State> state_;
};

class HoldFilter final : public RequestFilter {
 public:
  explicit HoldFilter(EventLoop* loop) : loop_(loop) {}
  const char* name() const override { return "hold"; }

  FilterResult OnRequest(RequestContext& ctx) override {
    const authz::HeaderMap& h = ctx.request.headers;
    const std::string* ms = h.Find("x-hold-ms");
    const std::string* body = h.Find("x-hold-body");
    if (ms == nullptr && body == nullptr) return FilterResult::Continue();
    int delay_ms = 0;
    if (ms != nullptr && !absl::SimpleAtoi(*ms, &delay_ms)) delay_ms = 0;
    Pending p;
    if (body != nullptr) {
      std::vector<std::string> parts = absl::StrSplit(*body, ',');
      BodyWanted want;
      if (!absl::SimpleAtoi(parts[0], &want.max_bytes)) want.max_bytes = 0;
      want.allow_partial = parts.size() > 1 && parts[1] == "partial";
      p.body = want;
    }
    int deny = 0;
    if (const std::string* d = h.Find("x-hold-deny")) {
      if (!absl::SimpleAtoi(*d, &deny)) deny = 403;
    }
    EventLoop* loop = loop_;
    p.start = [loop, delay_ms, deny](
                  RequestContext& c,
                  std::function<void(FilterResult)> done) -> std::unique_ptr<AsyncCheck> {
      auto state = std::make_shared<HoldCheck::State>();
      state->path = c.request.path;
      AMBIT_LOG("hold", Info) << "hold started path=" << state->path
                              << " body_bytes=" << c.body.size();
      std::weak_ptr<HoldCheck::State> weak = state;
      // The context lives as long as the wait; the answer is computed when the timer fires.
      RequestContext* ctx = &c;
      loop->RunAfter(absl::Milliseconds(delay_ms), [weak, ctx, deny, delay_ms, done] {
        auto st = weak.lock();
        if (!st) return;
        st->answered = true;
        AMBIT_LOG("hold", Info) << "hold done path=" << st->path;
        // In the access log's ext_authz= field, as an authorizer's answer would be.
        ctx->ext_authz = absl::StrCat("hold:", deny > 0 ? "deny" : "allow", ":", delay_ms);
        if (deny > 0) return done(FilterResult::Respond(deny, "held and denied"));
        ctx->upstream_header_edits.push_back(
            {HeaderEdit::Op::kSet, "x-held-body-bytes", absl::StrCat(ctx->body.size())});
        if (ctx->body_truncated) {
          ctx->upstream_header_edits.push_back({HeaderEdit::Op::kSet, "x-held-truncated", "1"});
        }
        ctx->downstream_header_edits.push_back({HeaderEdit::Op::kSet, "x-held", "yes"});
        done(FilterResult::Continue());
      });
      return std::make_unique<HoldCheck>(std::move(state));
    };
    return FilterResult::Wait(std::move(p));
  }

 private:
  EventLoop* loop_;
};

// ---- end of --hold-filter

class Acceptor final : public EventHandler {
 public:
  Acceptor(EventLoop* loop, UniqueFd fd, ProxyContext* ctx, std::string identity)
      : loop_(loop), fd_(std::move(fd)), ctx_(ctx), identity_(std::move(identity)) {}
  void OnEvents(uint32_t) override {
    for (int i = 0; i < 64; ++i) {
      UniqueFd c(accept4(fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!c) return;
      DownstreamInfo info;
      if (auto peer = PeerAddress(c.get()); peer.ok()) info.peer = *peer;
      info.identity = identity_;
      auto stream =
          SocketStream::Adopt(loop_, std::move(c), info.peer ? info.peer->ToString() : "");
      ServeConnection(ctx_, std::move(stream), std::move(info), nullptr);
    }
  }
  int fd() const { return fd_.get(); }

 private:
  EventLoop* loop_;
  UniqueFd fd_;
  ProxyContext* ctx_;
  std::string identity_;
};

// Answers every connection with the metrics text and closes it.
class MetricsServer final : public EventHandler {
 public:
  MetricsServer(UniqueFd fd, HttpMetrics* metrics) : fd_(std::move(fd)), metrics_(metrics) {}
  void OnEvents(uint32_t) override {
    UniqueFd c(accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c) return;
    const std::string body = metrics_->RenderPrometheus();
    const std::string out =
        absl::StrCat("HTTP/1.0 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n",
                     "content-length: ", body.size(), "\r\nconnection: close\r\n\r\n", body);
    size_t off = 0;
    while (off < out.size()) {
      ssize_t n = send(c.get(), out.data() + off, out.size() - off, MSG_NOSIGNAL);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
  }
  int fd() const { return fd_.get(); }

 private:
  UniqueFd fd_;
  HttpMetrics* metrics_;
};

// ---- ext_authz providers ----

// The clients of the --ext-authz providers, each over loopback TCP on the harness's loop.
class HarnessAuthorizers final : public AuthorizerSet {
 public:
  AuthorizerClient* Find(const std::string& provider) override {
    auto it = clients_.find(provider);
    return it == clients_.end() ? nullptr : it->second.get();
  }
  void Add(std::unique_ptr<TcpConnector> connector, std::unique_ptr<AuthorizerClient> client) {
    const std::string name = client->provider().name;
    connectors_.push_back(std::move(connector));
    clients_[name] = std::move(client);
  }

 private:
  std::vector<std::unique_ptr<TcpConnector>> connectors_;  // outlive the clients
  std::map<std::string, std::unique_ptr<AuthorizerClient>> clients_;
};

std::vector<std::string> PipeList(const std::string& v) {
  return absl::StrSplit(v, '|', absl::SkipEmpty());
}

// The --ext-authz tokens (key=value, a provider starting at each name=) as providers with their
// addresses.
absl::Status ParseExtAuthz(const std::vector<std::string>& tokens,
                           std::vector<std::pair<authz::ExtAuthzProvider, SocketAddress>>& out) {
  for (const std::string& token : tokens) {
    std::pair<std::string, std::string> kv = absl::StrSplit(token, absl::MaxSplits('=', 1));
    const std::string& k = kv.first;
    const std::string& v = kv.second;
    if (k == "name") {
      authz::ExtAuthzProvider p;
      p.name = v;
      p.service = absl::StrCat("harness/", v);
      p.service_key = p.service;
      out.emplace_back(std::move(p), SocketAddress{});
      continue;
    }
    if (out.empty()) return absl::InvalidArgumentError("--ext-authz: name= must come first");
    authz::ExtAuthzProvider& p = out.back().first;
    if (k == "kind") {
      if (v != "http" && v != "grpc") return absl::InvalidArgumentError("--ext-authz: kind?");
      p.kind =
          v == "http" ? authz::ExtAuthzProvider::Kind::kHttp : authz::ExtAuthzProvider::Kind::kGrpc;
    } else if (k == "addr") {
      AMBIT_ASSIGN_OR_RETURN(SocketAddress a, SocketAddress::Parse(v));
      if (!a.ip.is_loopback()) return absl::InvalidArgumentError("--ext-authz: loopback only");
      out.back().second = a;
      p.port = a.port;
    } else if (k == "timeout") {
      if (!absl::ParseDuration(v, &p.timeout)) {
        return absl::InvalidArgumentError("--ext-authz: bad timeout");
      }
    } else if (k == "fail_open") {
      p.fail_open = v == "true";
    } else if (k == "status_on_error") {
      if (!absl::SimpleAtoi(v, &p.status_on_error)) {
        return absl::InvalidArgumentError("--ext-authz: bad status_on_error");
      }
    } else if (k == "path_prefix") {
      p.path_prefix = v;
    } else if (k == "headers") {
      p.include_request_headers = PipeList(v);
    } else if (k == "add") {
      for (const std::string& h : PipeList(v)) {
        std::pair<std::string, std::string> nv = absl::StrSplit(h, absl::MaxSplits(':', 1));
        p.include_additional_headers.emplace_back(nv.first, nv.second);
      }
    } else if (k == "body") {
      std::vector<std::string> parts = absl::StrSplit(v, ':');
      authz::ExtAuthzBodyOptions b;
      if (!absl::SimpleAtoi(parts[0], &b.max_request_bytes)) {
        return absl::InvalidArgumentError("--ext-authz: bad body max");
      }
      for (size_t i = 1; i < parts.size(); ++i) {
        b.allow_partial_message |= parts[i] == "partial";
        b.pack_as_bytes |= parts[i] == "bytes";
      }
      p.include_request_body = b;
    } else if (k == "upstream") {
      p.headers_to_upstream_on_allow = PipeList(v);
    } else if (k == "down_deny") {
      p.headers_to_downstream_on_deny = PipeList(v);
    } else if (k == "down_allow") {
      p.headers_to_downstream_on_allow = PipeList(v);
    } else if (k == "unresolved") {
      p.unresolved = v;
      p.service_key.clear();
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--ext-authz: unknown field ", k));
    }
  }
  for (const auto& [p, addr] : out) {
    if (addr.port == 0) {
      return absl::InvalidArgumentError(absl::StrCat("--ext-authz: ", p.name, " needs addr="));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<HarnessAuthorizers>> MakeAuthorizers(EventLoop* loop) {
  std::vector<std::pair<authz::ExtAuthzProvider, SocketAddress>> providers;
  AMBIT_RETURN_IF_ERROR(ParseExtAuthz(absl::GetFlag(FLAGS_ext_authz), providers));
  auto set = std::make_shared<HarnessAuthorizers>();
  for (auto& [p, addr] : providers) {
    auto connector = std::make_unique<TcpConnector>(loop, addr);
    std::unique_ptr<AuthorizerClient> client =
        p.kind == authz::ExtAuthzProvider::Kind::kHttp
            ? NewHttpAuthorizerClient(p, connector.get(), loop, &RealClock::Get())
            : NewGrpcAuthorizerClient(p, connector.get(), loop, &RealClock::Get());
    set->Add(std::move(connector), std::move(client));
  }
  return set;
}

// Every --ext-authz value on the command line: absl keeps only the last of a repeated flag.
std::vector<std::string> AllExtAuthzTokens(const std::vector<char*>& args) {
  std::vector<std::string> tokens;
  for (size_t i = 1; i < args.size(); ++i) {
    absl::string_view a = args[i];
    if (a == "--") break;
    std::string value;
    if (absl::StartsWith(a, "--ext_authz=")) {
      value = std::string(a.substr(12));
    } else if (a == "--ext_authz" && i + 1 < args.size()) {
      value = args[++i];
    } else {
      continue;
    }
    for (absl::string_view t : absl::StrSplit(value, ',', absl::SkipEmpty())) {
      tokens.emplace_back(t);
    }
  }
  return tokens;
}

// ---- end ext_authz providers ----

int Main() {
  signal(SIGPIPE, SIG_IGN);
  auto upstream = SocketAddress::Parse(absl::GetFlag(FLAGS_upstream));
  if (!upstream.ok() || !upstream->ip.is_loopback()) {
    std::cerr << "--upstream must be a loopback ip:port\n";
    return 2;
  }
  const std::string ns = absl::GetFlag(FLAGS_namespace_name);
  std::vector<authn::RequestAuthentication> jwt_policies;
  auto policies = LoadPolicies(absl::GetFlag(FLAGS_policy), ns, &jwt_policies);
  if (!policies.ok()) {
    std::cerr << policies.status() << "\n";
    return 2;
  }
  auto engine = authz::Engine::Create(std::move(*policies));
  if (!engine.ok()) {
    std::cerr << engine.status() << "\n";
    return 2;
  }
  auto loop = EpollLoop::Create();
  if (!loop.ok()) {
    std::cerr << loop.status() << "\n";
    return 1;
  }
  std::shared_ptr<const authz::Engine> shared_engine = std::move(*engine);
  authz::Workload target{ns, {}, std::nullopt};
  HttpMetrics metrics;
  TcpConnector connector(loop->get(), *upstream);
  ProxyContext ctx;
  ctx.loop = loop->get();
  ctx.options.tcp_only = absl::GetFlag(FLAGS_tcp);
  ctx.options.idle_timeout = absl::GetFlag(FLAGS_idle_timeout);
  ctx.options.stream_idle_timeout = absl::GetFlag(FLAGS_stream_idle_timeout);
  ctx.options.request_headers_timeout = absl::GetFlag(FLAGS_request_headers_timeout);
  ctx.options.request_timeout = absl::GetFlag(FLAGS_request_timeout);
  ctx.options.stream_open_burst = absl::GetFlag(FLAGS_stream_open_burst);
  ctx.options.stream_open_rate = absl::GetFlag(FLAGS_stream_open_rate);
  // JWT authentication first (it fills request.auth), then L7 authorization (filter.h).
  std::unique_ptr<tls::HttpsJwksFetcher> fetcher;
  std::unique_ptr<authn::JwksCache> jwks_cache;
  std::unique_ptr<JwksRefresher> refresher;
  if (!jwt_policies.empty()) {
    const bool remote = absl::c_any_of(jwt_policies, [](const authn::RequestAuthentication& p) {
      return absl::c_any_of(p.jwt_rules,
                            [](const authn::JwtRule& r) { return !r.jwks_uri.empty(); });
    });
    if (remote) {
      auto f = tls::HttpsJwksFetcher::Create({.ca_file = absl::GetFlag(FLAGS_jwks_ca_file)});
      if (!f.ok()) {
        std::cerr << f.status() << "\n";
        return 2;
      }
      fetcher = std::move(*f);
      jwks_cache = std::make_unique<authn::JwksCache>(
          fetcher.get(), &RealClock::Get(),
          authn::JwksCacheOptions{.refresh_interval = absl::GetFlag(FLAGS_jwks_refresh_interval),
                                  .retry_interval = absl::GetFlag(FLAGS_jwks_retry_interval),
                                  .max_age = absl::GetFlag(FLAGS_jwks_max_age)});
      refresher = std::make_unique<JwksRefresher>(jwks_cache.get(), &RealClock::Get());
      refresher->SetRules(jwt_policies);
    }
    auto authenticator = authn::Authenticator::Create(
        jwt_policies, {}, &authn::CryptoSignatureVerifier(), jwks_cache.get());
    if (!authenticator.ok()) {
      std::cerr << authenticator.status() << "\n";
      return 2;
    }
    ctx.filters.push_back(std::make_shared<AuthnFilter>(
        std::shared_ptr<const authn::Authenticator>(std::move(*authenticator)), target, ctx.clock));
  }
  if (absl::GetFlag(FLAGS_hold_filter)) {
    ctx.filters.push_back(std::make_shared<HoldFilter>(loop->get()));
  }
  // ---- ext_authz providers ----
  auto authorizers = MakeAuthorizers(loop->get());
  if (!authorizers.ok()) {
    std::cerr << authorizers.status() << "\n";
    return 2;
  }
  ctx.filters.push_back(std::make_shared<AuthzFilter>(
      shared_engine, target, *authorizers,
      absl::StrCat("spiffe://cluster.local/ns/", ns, "/sa/waypoint"), &metrics));
  // ---- end ext_authz providers ----
  ctx.engine = shared_engine;
  ctx.target = target;
  ctx.upstream = &connector;
  ctx.destination = *upstream;
  ctx.metrics = &metrics;

  uint16_t port = 0;
  auto lfd = Listen(absl::GetFlag(FLAGS_listen), &port);
  if (!lfd.ok()) {
    std::cerr << lfd.status() << "\n";
    return 1;
  }
  Acceptor acceptor(loop->get(), std::move(*lfd), &ctx, absl::GetFlag(FLAGS_peer_identity));
  if (auto s = (*loop)->Watch(acceptor.fd(), EPOLLIN, &acceptor); !s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  std::unique_ptr<MetricsServer> metrics_server;
  uint16_t metrics_port = 0;
  if (!absl::GetFlag(FLAGS_metrics_listen).empty()) {
    auto mfd = Listen(absl::GetFlag(FLAGS_metrics_listen), &metrics_port);
    if (!mfd.ok()) {
      std::cerr << mfd.status() << "\n";
      return 1;
    }
    metrics_server = std::make_unique<MetricsServer>(std::move(*mfd), &metrics);
    (void)(*loop)->Watch(metrics_server->fd(), EPOLLIN, metrics_server.get());
  }
  std::cout << "listening " << port << "\n";
  if (metrics_server) std::cout << "metrics " << metrics_port << "\n";
  std::cout.flush();
  (*loop)->Run();
  return 0;
}

}  // namespace
}  // namespace ambit::waypoint

int main(int argc, char** argv) {
  std::vector<std::string> storage;
  std::vector<char*> args = ambit::DashedFlagsToAbsl(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  absl::SetFlag(&FLAGS_ext_authz, ambit::waypoint::AllExtAuthzTokens(args));
  return ambit::waypoint::Main();
}
