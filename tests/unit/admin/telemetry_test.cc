#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "agent/admin/prometheus.h"
#include "agent/admin/telemetry_server.h"

namespace ambit::admin {
namespace {

namespace pb = ::ambit::admin::v1;
namespace dp = ::ambit::dataplane::v1;

TEST(PrometheusText, GroupsFamiliesSumsDuplicatesAndEscapes) {
  PrometheusText p;
  constexpr metrics::Metric kX{"x_total", metrics::Type::kCounter, "X.", {"a"}};
  constexpr metrics::Metric kY{"y", metrics::Type::kGauge, "Y."};
  p.Add(kX, {{"a", "1"}}, 2);
  p.Add(kY, {}, 1.5);
  p.Add(kX, {{"a", "1"}}, 3);
  p.Add(kX, {{"a", "q\"\\\n"}}, 1);
  EXPECT_EQ(p.Render(),
            "# HELP x_total X.\n# TYPE x_total counter\n"
            "x_total{a=\"1\"} 5\n"
            "x_total{a=\"q\\\"\\\\\\n\"} 1\n"
            "# HELP y Y.\n# TYPE y gauge\ny 1.5\n");
}

std::shared_ptr<AdminState> HealthyNode(absl::Time now) {
  auto state = std::make_shared<AdminState>();
  NodeHealth h;
  h.bpf_attached = true;
  h.dataplane_connected = true;
  h.config_loaded = true;
  h.enrolled = {{"default/web", "spiffe://cluster.local/ns/default/sa/web"}};
  state->SetHealth(h);
  pb::ListCertificatesResponse certs;
  auto* c = certs.add_certificates();
  c->set_identity("spiffe://cluster.local/ns/default/sa/web");
  c->set_state("valid");
  c->mutable_not_after()->set_unix_seconds(absl::ToUnixSeconds(now + absl::Hours(2)));
  state->SetCertificates(certs);
  return state;
}

TEST(Readiness, ReadyWhenAttachedConnectedAndEveryPodHasAValidCertificate) {
  absl::Time now = absl::FromUnixSeconds(1800000000);
  auto state = HealthyNode(now);
  EXPECT_TRUE(ReadinessProblems(*state, now).empty());

  NodeHealth h = state->Health();
  h.enrolled.push_back({"default/db", "spiffe://cluster.local/ns/default/sa/db"});
  h.dataplane_connected = false;
  state->SetHealth(h);
  auto problems = ReadinessProblems(*state, now);
  ASSERT_EQ(problems.size(), 2u);
  EXPECT_EQ(problems[0], "the data plane is not connected");
  EXPECT_EQ(problems[1],
            "pod default/db: no certificate for spiffe://cluster.local/ns/default/sa/db yet");
}

TEST(Readiness, NamesTheMissingDataPlaneAndWhy) {
  absl::Time now = absl::FromUnixSeconds(1800000000);
  auto state = HealthyNode(now);
  NodeHealth h = state->Health();
  h.dataplane_connected = false;
  h.dataplane_missing =
      "ambit-tunnel is started apart from ambitd (--dataplane=external) and is not connected on "
      "/run/ambit/dataplane.sock: its control session ended";
  // Not needed: a waypoint process that is not there is no problem.
  h.waypoint.missing = "ambit-waypoint is started apart from ambitd";
  state->SetHealth(h);
  auto problems = ReadinessProblems(*state, now);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0],
            "the data plane is not connected: ambit-tunnel is started apart from ambitd "
            "(--dataplane=external) and is not connected on /run/ambit/dataplane.sock: its "
            "control session ended");

  h.dataplane_connected = true;
  h.waypoint.needed = true;
  state->SetHealth(h);
  problems = ReadinessProblems(*state, now);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0],
            "the waypoint data plane is not connected (waypoint pods are enrolled here): "
            "ambit-waypoint is started apart from ambitd");
}

TEST(Readiness, AnExpiredCertificateIsNotReady) {
  absl::Time now = absl::FromUnixSeconds(1800000000);
  auto state = HealthyNode(now);
  auto problems = ReadinessProblems(*state, now + absl::Hours(3));
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_TRUE(absl::StrContains(problems[0], "pod default/web: certificate for")) << problems[0];
}

TEST(Readiness, AnOverdueHeartbeatIsNotReadyAndNotResponsive) {
  absl::Time now = absl::FromUnixSeconds(1800000000);
  auto state = HealthyNode(now);
  NodeHealth h = state->Health();
  h.heartbeat_deadline = absl::Seconds(3);
  h.heartbeat_waiting_since = now - absl::Seconds(2);  // outstanding, within the deadline
  state->SetHealth(h);
  EXPECT_TRUE(ReadinessProblems(*state, now).empty());
  dp::StatsResponse stats;
  EXPECT_TRUE(absl::StrContains(RenderMetrics(&stats, *state, now), "ambit_dataplane_up 1\n"));

  // The same health read later: readiness is computed at the time of the request, so a data
  // plane that stopped answering shows even when ambitd published nothing since.
  auto problems = ReadinessProblems(*state, now + absl::Milliseconds(1500));
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_TRUE(absl::StrContains(problems[0], "has not answered a heartbeat for 3.5s (deadline 3s)"))
      << problems[0];
  std::string metrics = RenderMetrics(&stats, *state, now + absl::Seconds(5));
  EXPECT_TRUE(absl::StrContains(metrics, "ambit_dataplane_up 0\n")) << metrics;
  EXPECT_TRUE(absl::StrContains(metrics, "ambit_dataplane_responsive 0\n")) << metrics;
  EXPECT_TRUE(absl::StrContains(metrics, "ambit_ready 0\n")) << metrics;

  h.heartbeat_waiting_since = absl::InfiniteFuture();  // answered
  state->SetHealth(h);
  EXPECT_TRUE(ReadinessProblems(*state, now + absl::Seconds(5)).empty());
}

TEST(Readiness, APodFailingToEnrollPastTheGraceIsNamed) {
  absl::Time now = absl::FromUnixSeconds(1800000000);
  auto state = HealthyNode(now);
  NodeHealth h = state->Health();
  h.enroll_failures = 1;
  h.enroll_failing.push_back({"default/db", "open netns /run/netns/db: No such file", now});
  state->SetHealth(h);
  EXPECT_TRUE(ReadinessProblems(*state, now + kGenerationGrace).empty());
  auto problems = ReadinessProblems(*state, now + kGenerationGrace + absl::Seconds(1));
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0],
            "pod default/db cannot be enrolled (failing for 6s): open netns /run/netns/db: No "
            "such file");
}

TEST(Readiness, CaptureAndListenerProblemsAreReasons) {
  absl::Time now = absl::FromUnixSeconds(1800000000);
  auto state = HealthyNode(now);
  NodeHealth h = state->Health();
  h.capture_problems = {"cgroup link connect4 is detached"};
  h.listener_problems = {"pod default/web: the data plane holds 2 of 6 listeners"};
  state->SetHealth(h);
  auto problems = ReadinessProblems(*state, now);
  ASSERT_EQ(problems.size(), 2u);
  EXPECT_EQ(problems[0], "cgroup link connect4 is detached");
  EXPECT_EQ(problems[1], "pod default/web: the data plane holds 2 of 6 listeners");
}

TEST(Readiness, AConfigurationSourceStillSyncingIsAReason) {
  absl::Time now = absl::FromUnixSeconds(1800000000);
  auto state = HealthyNode(now);
  NodeHealth h = state->Health();
  h.config_pending = {
      "waiting for the first list of pods from the API server (https://x): HTTP 503"};
  state->SetHealth(h);
  auto problems = ReadinessProblems(*state, now);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0], h.config_pending[0]);
}

TEST(Telemetry, TheApiServerSourceIsRenderedPerResource) {
  absl::Time now = absl::FromUnixSeconds(1800000000);
  auto state = HealthyNode(now);
  NodeHealth h = state->Health();
  h.config_source = {{"pods", true, 2, 5, 1, now - absl::Seconds(3)},
                     {"gateways", false, 0, 0, 4, absl::InfinitePast()}};
  state->SetHealth(h);
  std::string text = RenderMetrics(nullptr, *state, now);
  EXPECT_TRUE(absl::StrContains(text, "ambit_kube_synced{resource=\"pods\"} 1\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "ambit_kube_synced{resource=\"gateways\"} 0\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "ambit_kube_lists_total{resource=\"pods\"} 2\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "ambit_kube_watch_restarts_total{resource=\"pods\"} 5\n"))
      << text;
  EXPECT_TRUE(absl::StrContains(text, "ambit_kube_errors_total{resource=\"gateways\"} 4\n"))
      << text;
  EXPECT_TRUE(absl::StrContains(text, "ambit_kube_last_sync_age_seconds{resource=\"pods\"} 3\n"))
      << text;
  // Never synced: no age at all rather than a huge one.
  EXPECT_FALSE(absl::StrContains(text, "ambit_kube_last_sync_age_seconds{resource=\"gateways\"}"));
}

TEST(Telemetry, AStalledDataPlaneIsNotAskedForCounters) {
  absl::Time now = absl::Now();
  auto state = HealthyNode(now);
  NodeHealth h = state->Health();
  h.heartbeat_deadline = absl::Seconds(3);
  h.heartbeat_waiting_since = now - absl::Seconds(10);
  state->SetHealth(h);
  int fetches = 0;
  state->SetStatsFetcher([&fetches](bool, bool) -> absl::StatusOr<dp::StatsResponse> {
    ++fetches;  // would block for the stats timeout on a stopped data plane
    return dp::StatsResponse();
  });
  auto server = TelemetryServer::Start("", "", state);
  ASSERT_TRUE(server.ok()) << server.status();
  auto metrics = (*server)->Metrics("/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_EQ(fetches, 0);
  EXPECT_TRUE(absl::StrContains(metrics.body, "ambit_dataplane_up 0\n")) << metrics.body;
  auto ready = (*server)->Readiness("/healthz/ready");
  EXPECT_EQ(ready.status, 503);
  EXPECT_TRUE(absl::StrContains(ready.body, "has not answered a heartbeat")) << ready.body;

  h.heartbeat_waiting_since = absl::InfiniteFuture();
  state->SetHealth(h);
  metrics = (*server)->Metrics("/metrics");
  EXPECT_EQ(fetches, 1);
  EXPECT_TRUE(absl::StrContains(metrics.body, "ambit_dataplane_responsive 1\n")) << metrics.body;
}

TEST(Telemetry, EndpointsAnswerAndTheDataPlanesCountersAreRendered) {
  absl::Time now = absl::Now();
  auto state = HealthyNode(now);
  state->SetStatsFetcher([](bool connections, bool metrics) -> absl::StatusOr<dp::StatsResponse> {
    EXPECT_FALSE(connections);
    EXPECT_TRUE(metrics);
    dp::StatsResponse r;
    for (int worker = 0; worker < 2; ++worker) {  // the same series from two workers: summed
      auto* t = r.add_tcp();
      auto* l = t->add_labels();
      l->set_name("reporter");
      l->set_value("destination");
      t->set_opened(2);
      t->set_received_bytes(100);
      auto* c = r.add_counters();
      c->set_name("ambit_policy_decisions_total");
      auto* cl = c->add_labels();
      cl->set_name("result");
      cl->set_value("deny");
      c->set_value(1);
    }
    return r;
  });
  // Start with no listeners: the answers are what the HTTP handler serves.
  auto server = TelemetryServer::Start("", "", state);
  ASSERT_TRUE(server.ok()) << server.status();
  auto metrics = (*server)->Metrics("/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_TRUE(absl::StartsWith(metrics.content_type, "text/plain; version=0.0.4"));
  const std::string& body = metrics.body;
  EXPECT_TRUE(
      absl::StrContains(body, "istio_tcp_connections_opened_total{reporter=\"destination\"} 4\n"))
      << body;
  EXPECT_TRUE(
      absl::StrContains(body, "istio_tcp_received_bytes_total{reporter=\"destination\"} 200\n"));
  EXPECT_TRUE(absl::StrContains(body, "ambit_policy_decisions_total{result=\"deny\"} 2\n"));
  EXPECT_TRUE(absl::StrContains(body, "ambit_dataplane_up 1\n"));
  EXPECT_TRUE(absl::StrContains(body, "ambit_ready 1\n"));
  EXPECT_TRUE(absl::StrContains(
      body,
      "ambit_certificate_expiry_seconds{identity=\"spiffe://cluster.local/ns/default/sa/web\"} "));
  EXPECT_EQ((*server)->Metrics("/").status, 404);
  EXPECT_EQ((*server)->Readiness("/healthz/ready").status, 200);

  // The data plane unreachable: metrics still answer, saying so; readiness follows health.
  state->SetStatsFetcher([](bool, bool) -> absl::StatusOr<dp::StatsResponse> {
    return absl::UnavailableError("down");
  });
  NodeHealth h = state->Health();
  h.dataplane_connected = false;
  state->SetHealth(h);
  metrics = (*server)->Metrics("/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_TRUE(absl::StrContains(metrics.body, "ambit_dataplane_up 0\n"));
  auto ready = (*server)->Readiness("/healthz/ready");
  EXPECT_EQ(ready.status, 503);
  EXPECT_EQ(ready.body, "not ready: the data plane is not connected\n");
}

TEST(Telemetry, ABadListenAddressIsAClearError) {
  auto server = TelemetryServer::Start("not-an-address", "", std::make_shared<AdminState>());
  ASSERT_FALSE(server.ok());
  EXPECT_TRUE(absl::StrContains(server.status().message(),
                                "metrics: bad listen address "
                                "\"not-an-address\""))
      << server.status();
}

// An agent with a few hundred enrolled pods holds more than FD_SETSIZE descriptors (bench/sweep
// found ambitd refusing to start with 300: "Listen socket descriptor (2150) is not less than
// FD_SETSIZE"). The endpoints must listen and answer with descriptors numbered above it.
TEST(Telemetry, ServesWithDescriptorsAboveFdSetSize) {
  constexpr int kHeld = 1100;
  rlimit rl{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &rl), 0);
  ASSERT_GE(rl.rlim_max, rlim_t{kHeld + 64}) << "the hard descriptor limit is too low to test";
  rlimit saved = rl;
  rl.rlim_cur = rl.rlim_max;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &rl), 0);
  std::vector<int> held;
  for (int i = 0; i < kHeld; ++i) held.push_back(open("/dev/null", O_RDONLY | O_CLOEXEC));
  ASSERT_GT(held.back(), 1024);

  // A free loopback port (the server takes a fixed one).
  int probe = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(probe, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  socklen_t len = sizeof(a);
  ASSERT_EQ(getsockname(probe, reinterpret_cast<sockaddr*>(&a), &len), 0);
  close(probe);
  const std::string address = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));

  auto server = TelemetryServer::Start("", address, HealthyNode(absl::Now()));
  ASSERT_TRUE(server.ok()) << server.status();
  int c = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GT(c, 1024);
  ASSERT_EQ(connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  const std::string request = "GET /healthz/ready HTTP/1.0\r\n\r\n";
  ASSERT_EQ(write(c, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  std::string response;
  char buf[4096];
  for (ssize_t n; (n = read(c, buf, sizeof buf)) > 0;) response.append(buf, static_cast<size_t>(n));
  close(c);
  EXPECT_TRUE(absl::StartsWith(response, "HTTP/1.0 200") ||
              absl::StartsWith(response, "HTTP/1.1 200"))
      << response;
  server->reset();
  for (int fd : held) close(fd);
  setrlimit(RLIMIT_NOFILE, &saved);
}

// Every family on the page comes from one declaration (agent/common/metrics.h), with the label
// names it declares; the BPF drop counters are among them.
TEST(Telemetry, EveryFamilyIsDeclaredWithItsLabels) {
  absl::Time now = absl::FromUnixSeconds(1800000000);
  auto state = HealthyNode(now);
  pb::GetBpfResponse bpf;
  auto* m = bpf.add_maps();
  m->set_name("ambit_pods");
  m->set_entries(2);
  m->set_max_entries(1024);
  for (const auto& [reason, count] :
       {std::pair{"no_listener", 7}, std::pair{"connect_no_storage", 0}}) {
    auto* d = bpf.add_drops();
    d->set_reason(reason);
    d->set_count(count);
  }
  state->SetBpf(bpf, nullptr);
  dp::StatsResponse stats;
  for (const char* name : {"ambit_hbone_handshakes_total", "ambit_snapshots_rejected_total",
                           "ambit_connections_refused_total"}) {
    auto* c = stats.add_counters();
    c->set_name(name);
    const metrics::Metric* decl = metrics::Find(name);
    ASSERT_NE(decl, nullptr) << name;
    if (!decl->labels[0].empty()) {
      auto* l = c->add_labels();
      l->set_name(std::string(decl->labels[0]));
      l->set_value("x");
    }
    c->set_value(1);
  }
  const std::string body = RenderMetrics(&stats, *state, now);
  EXPECT_TRUE(absl::StrContains(body, "ambit_bpf_drops_total{reason=\"no_listener\"} 7\n")) << body;
  EXPECT_TRUE(absl::StrContains(body, "ambit_bpf_drops_total{reason=\"connect_no_storage\"} 0\n"));
  EXPECT_TRUE(absl::StrContains(body, "# TYPE ambit_bpf_drops_total counter\n"));
  int families = 0;
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (line.empty()) continue;
    if (absl::ConsumePrefix(&line, "# HELP ")) {
      std::string name(line.substr(0, line.find(' ')));
      const metrics::Metric* decl = metrics::Find(name);
      ASSERT_NE(decl, nullptr) << "undeclared family " << name;
      EXPECT_EQ(std::string(line.substr(name.size() + 1)), std::string(decl->help)) << name;
      ++families;
      continue;
    }
    if (absl::StartsWith(line, "#")) continue;
    size_t brace = line.find('{');
    std::string name(line.substr(0, std::min(brace, line.find(' '))));
    const metrics::Metric* decl = metrics::Find(name);
    ASSERT_NE(decl, nullptr) << "undeclared sample " << line;
    std::vector<std::string> labels;
    if (brace != absl::string_view::npos) {
      absl::string_view rest = line.substr(brace + 1, line.find('}') - brace - 1);
      for (absl::string_view pair : absl::StrSplit(rest, ',')) {
        labels.emplace_back(pair.substr(0, pair.find('=')));
      }
    }
    std::vector<std::string> declared;
    for (auto l : decl->labels) {
      if (!l.empty()) declared.emplace_back(l);
    }
    EXPECT_EQ(labels, declared) << line;
  }
  EXPECT_EQ(families, 15);  // the three reported counters and ambitd's twelve
}

TEST(Telemetry, AnUndeclaredDataPlaneCounterIsStillRendered) {
  PrometheusText p;
  p.AddReported("ambit_from_a_newer_tunnel_total", {}, 3);
  p.AddReported("ambit_plaintext_refused_total", {}, 1);
  EXPECT_EQ(p.Render(),
            "# HELP ambit_from_a_newer_tunnel_total Data-plane counter.\n"
            "# TYPE ambit_from_a_newer_tunnel_total counter\n"
            "ambit_from_a_newer_tunnel_total 3\n"
            "# HELP ambit_plaintext_refused_total Plaintext connections refused because the port "
            "requires mTLS (STRICT).\n"
            "# TYPE ambit_plaintext_refused_total counter\n"
            "ambit_plaintext_refused_total 1\n");
}

// ambitd --ca-only: no BPF, data plane or pods, so their reasons and families would only mislead.
TEST(CaOnly, ReadyOncePlacementIsLoadedAndOnlyCaFamiliesAreRendered) {
  absl::Time now = absl::FromUnixSeconds(1800000000);
  auto state = std::make_shared<AdminState>();
  NodeHealth h;
  h.ca_only = true;
  h.ca_pending = {"waiting for the first list of pods from the API server (https://x): HTTP 503"};
  state->SetHealth(h);
  auto problems = ReadinessProblems(*state, now);
  ASSERT_EQ(problems.size(), 2u);
  EXPECT_TRUE(absl::StrContains(problems[0], "placement is not loaded")) << problems[0];
  EXPECT_TRUE(absl::StrContains(problems[1], "first list of pods")) << problems[1];
  EXPECT_TRUE(absl::StrContains(RenderMetrics(nullptr, *state, now), "ambit_ready 0\n"));

  h.config_loaded = true;
  h.ca_pending.clear();
  h.ca_requests = {{"issued", 3}, {"denied", 1}};
  h.ca_token_reviews = 2;
  state->SetHealth(h);
  EXPECT_TRUE(ReadinessProblems(*state, now).empty());
  const std::string body = RenderMetrics(nullptr, *state, now);
  EXPECT_TRUE(absl::StrContains(body, "ambit_ca_requests_total{outcome=\"issued\"} 3\n")) << body;
  EXPECT_TRUE(absl::StrContains(body, "ambit_ca_requests_total{outcome=\"denied\"} 1\n"));
  EXPECT_TRUE(absl::StrContains(body, "ambit_ca_token_reviews_total 2\n"));
  EXPECT_TRUE(absl::StrContains(body, "ambit_ready 1\n"));
  EXPECT_FALSE(absl::StrContains(body, "ambit_dataplane_up")) << body;
  EXPECT_FALSE(absl::StrContains(body, "ambit_enrolled_pods")) << body;
}

}  // namespace
}  // namespace ambit::admin
