#include "agent/admin/telemetry_server.h"

#include <microhttpd.h>
#include <sys/socket.h>

#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/admin/prometheus.h"
#include "agent/common/ip_address.h"
#include "agent/common/log.h"

namespace ambit::admin {
struct TelemetryServer::Endpoint {
  TelemetryServer* server;
  bool metrics;
};

namespace {

constexpr const char* kComponent = "telemetry";
using Endpoint = TelemetryServer::Endpoint;

MHD_Result Handle(void* cls, MHD_Connection* connection, const char* url, const char* method,
                  const char*, const char*, size_t* upload_size, void** state) {
  // The first call for a request only announces its headers; answer on the second.
  static int announced;
  if (*state == nullptr) {
    *state = &announced;
    return MHD_YES;
  }
  *upload_size = 0;
  auto* endpoint = static_cast<Endpoint*>(cls);
  TelemetryServer::Answer answer;
  if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
    answer = {405, "text/plain", "only GET is served here\n"};
  } else {
    answer = endpoint->metrics ? endpoint->server->Metrics(url) : endpoint->server->Readiness(url);
  }
  MHD_Response* response = MHD_create_response_from_buffer(answer.body.size(), answer.body.data(),
                                                           MHD_RESPMEM_MUST_COPY);
  if (response == nullptr) return MHD_NO;
  MHD_add_response_header(response, "Content-Type", answer.content_type.c_str());
  MHD_Result result = MHD_queue_response(connection, answer.status, response);
  MHD_destroy_response(response);
  return result;
}

absl::StatusOr<MHD_Daemon*> Serve(const std::string& address, Endpoint* endpoint) {
  auto parsed = SocketAddress::Parse(address);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad listen address \"", address, "\": ", parsed.status().message()));
  }
  sockaddr_storage ss;
  parsed->ToSockaddr(&ss);
  // A thread per connection: a scrape waiting on the data plane never holds up another one.
  // poll(), not select(): ambitd holds 7 descriptors per enrolled pod, and with ~140 pods the
  // listener's number passes FD_SETSIZE (1024), where select-based MHD refused to start.
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_THREAD_PER_CONNECTION |
                   MHD_USE_ERROR_LOG;
  if (!parsed->ip.is_v4()) flags |= MHD_USE_IPv6;
  MHD_Daemon* d = MHD_start_daemon(flags, parsed->port, nullptr, nullptr, &Handle, endpoint,
                                   MHD_OPTION_SOCK_ADDR, reinterpret_cast<sockaddr*>(&ss),
                                   MHD_OPTION_CONNECTION_LIMIT, 32u, MHD_OPTION_CONNECTION_TIMEOUT,
                                   10u, MHD_OPTION_END);
  if (d == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, " (in use, or not an address of this host)"));
  }
  return d;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TelemetryServer>> TelemetryServer::Start(
    const std::string& metrics_address, const std::string& readiness_address,
    std::shared_ptr<AdminState> state) {
  auto server = std::unique_ptr<TelemetryServer>(new TelemetryServer(std::move(state)));
  struct Listener {
    const std::string& address;
    Endpoint* endpoint;
    MHD_Daemon** daemon;
    const char* what;
    const char* path;
  };
  for (const Listener& l : {Listener{metrics_address, server->metrics_endpoint_.get(),
                                     &server->metrics_, "metrics", "/metrics"},
                            Listener{readiness_address, server->readiness_endpoint_.get(),
                                     &server->readiness_, "readiness", "/healthz/ready"}}) {
    if (l.address.empty()) continue;
    auto d = Serve(l.address, l.endpoint);
    if (!d.ok()) {
      return absl::Status(d.status().code(), absl::StrCat(l.what, ": ", d.status().message()));
    }
    *l.daemon = *d;
    AMBIT_LOG(kComponent, Info) << l.what << " on http://" << l.address << l.path;
  }
  return server;
}

TelemetryServer::TelemetryServer(std::shared_ptr<AdminState> state)
    : state_(std::move(state)),
      metrics_endpoint_(new Endpoint{this, true}),
      readiness_endpoint_(new Endpoint{this, false}) {}

TelemetryServer::~TelemetryServer() {
  if (metrics_ != nullptr) MHD_stop_daemon(metrics_);
  if (readiness_ != nullptr) MHD_stop_daemon(readiness_);
}

TelemetryServer::Answer TelemetryServer::Metrics(const std::string& path) const {
  if (path != "/metrics" && path != "/stats/prometheus") {
    return {404, "text/plain", "not found: metrics are at /metrics\n"};
  }
  std::optional<ambit::dataplane::v1::StatsResponse> stats;
  const absl::Time now = absl::Now();
  // A data plane whose heartbeat is overdue would hold the scrape for the whole stats timeout;
  // its counters are left out and ambit_dataplane_up says why.
  if (DataPlaneUnresponsive(state_->Health(), now)) {
    AMBIT_LOG(kComponent, Debug) << "metrics: data-plane counters skipped: heartbeat overdue";
  } else if (StatsFetcher fetch = state_->stats_fetcher()) {
    auto fetched = fetch(false, true);
    if (fetched.ok()) {
      stats = std::move(*fetched);
    } else {
      AMBIT_LOG(kComponent, Warning)
          << "metrics: data-plane counters unavailable: " << fetched.status().message();
    }
  }
  return {200, "text/plain; version=0.0.4; charset=utf-8",
          RenderMetrics(stats ? &*stats : nullptr, *state_, now)};
}

TelemetryServer::Answer TelemetryServer::Readiness(const std::string& path) const {
  if (path != "/healthz/ready") return {404, "text/plain", "not found: see /healthz/ready\n"};
  auto problems = ReadinessProblems(*state_, absl::Now());
  if (problems.empty()) return {200, "text/plain", "ready\n"};
  return {503, "text/plain", absl::StrCat("not ready: ", absl::StrJoin(problems, "; "), "\n")};
}

}  // namespace ambit::admin
