// Admin API requests (ambitd, gRPC on a root-only unix socket): the request handlers of
// AdminServer::NewService, with the `check` evaluator and log-level handler ambitd installs
// (agent/node/admin_views.cc) over a fixed configuration, and a data-plane stats answer (bytes the
// data plane sends ambitd) behind ListConnections.
// VerifyMtls is answered by a handler shaped as ambitd's (agent/node/verify_mtls.cc) over a fixed
// wire history of the two pods (agent/node/wire_report.h).
// Input: [method (byte % 4): 0 Check, 1 LogLevel, 2 ListConnections, 3 VerifyMtls] [16-bit
//        length][request bytes] [rest: the data plane's StatsResponse, for ListConnections].
// Properties: no crash or leak; an undecodable request is refused before any handler; Check
// answers only for a port in 1..65535 and names a decision; VerifyMtls reaches its handler only
// with a namespace/name pod (or none) and since_seconds in 0..86400, and answers only that pod.

#include <grpcpp/grpcpp.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "agent/admin/admin_server.h"
#include "agent/common/log.h"
#include "agent/config/directory_loader.h"
#include "agent/config/load_result.h"
#include "agent/node/admin_views.h"
#include "agent/node/wire_report.h"
#include "ambit/dataplane/v1/dataplane.pb.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

namespace pb = ::ambit::admin::v1;

constexpr char kConfig[] = R"(apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}, annotations: {ambit.dev/netns: /run/netns/web}}
spec: {serviceAccountName: web, nodeName: node-a}
status: {podIP: 198.18.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: default, labels: {app: sleep}, annotations: {ambit.dev/netns: /run/netns/sleep}}
spec: {serviceAccountName: sleep, nodeName: node-a}
status: {podIPs: [{ip: 198.18.0.11}, {ip: "2001:2::11"}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}], to: [{operation: {ports: ["8080"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-9090, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: ["9090"]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}, selector: {matchLabels: {app: web}}, portLevelMtls: {"8081": {mode: PERMISSIVE}}}
)";

struct Fixture {
  std::shared_ptr<ambit::admin::AdminState> state = std::make_shared<ambit::admin::AdminState>();
  std::unique_ptr<pb::Admin::Service> service;
  std::string stats_bytes;  // what the fake data plane answers, set per input
  ambit::state::ClusterState cluster;
  ambit::node::WireLedger wire;
  absl::Time wire_now;
};

Fixture& Get() {
  static Fixture* fixture = [] {
    ambit::log::SetLevel("", ambit::log::Level::kError);
    auto* f = new Fixture;
    char tmpl[] = "/tmp/ambit-fuzz-admin.XXXXXX";
    FUZZ_REQUIRE(mkdtemp(tmpl) != nullptr);
    const std::string dir = tmpl;
    std::ofstream(dir + "/config.yaml") << kConfig;
    ambit::config::DirectoryLoader loader(dir);
    ambit::config::LoadResult result = loader.Load();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    FUZZ_REQUIRE(!result.HasErrors() && result.state.pods.size() == 2);
    auto engine = ambit::config::BuildAuthzEngine(result);
    FUZZ_REQUIRE(engine.ok());
    f->state->SetCheckEvaluator(ambit::node::NewCheckEvaluator(
        {.state = std::make_shared<const ambit::state::ClusterState>(result.state),
         .peer_authns = result.security.PeerAuthenticationList(),
         .engine = std::move(*engine),
         .request_authns = result.security.RequestAuthenticationList()}));
    // No data plane listens there: a level change is applied here and its forwarding fails.
    f->state->SetLogLevelHandler(
        ambit::node::NewLogLevelHandlers({"/nonexistent/ambit-fuzz/control.sock"}).handle);
    f->state->SetStatsFetcher(
        [f](bool, bool) -> absl::StatusOr<ambit::dataplane::v1::StatsResponse> {
          ambit::dataplane::v1::StatsResponse response;
          if (!response.ParseFromString(f->stats_bytes)) {
            return absl::DataLossError("data plane sent a malformed stats answer");
          }
          return response;
        });
    // A fixed wire history: web answered plaintext on 8080 (STRICT there), and mTLS with sleep.
    f->cluster = result.state;
    const absl::Time t0 = absl::FromUnixSeconds(1'800'000'000);
    auto entry = [](uint64_t cookie, const char* peer, uint16_t port, bool egress, bool local,
                    bool mtls) {
      ambit::bpf::WireEntry e;
      e.netns_cookie = cookie;
      e.peer = *ambit::IpAddress::Parse(peer);
      e.port = port;
      e.proto = 6;
      e.egress = egress;
      e.local_port = local;
      e.mtls = mtls;
      e.bytes = e.packets = e.payload = e.syns = 1;
      return e;
    };
    f->wire.Fold(t0, {});
    f->wire.Fold(t0 + absl::Seconds(30), {entry(1, "198.18.0.11", 15008, false, true, true),
                                          entry(1, "198.18.0.99", 8080, true, true, false),
                                          entry(2, "198.18.0.10", 15008, true, false, true)});
    f->wire_now = t0 + absl::Seconds(40);
    f->state->SetVerifyMtlsHandler(
        [f, peer_authns = result.security.PeerAuthenticationList()](
            const pb::VerifyMtlsRequest& req) -> absl::StatusOr<pb::VerifyMtlsResponse> {
          FUZZ_REQUIRE(ambit::admin::CheckVerifyMtlsRequest(req).ok());
          ambit::node::WireReportInput in;
          std::pair<ambit::node::WireTotals, absl::Time> window;
          if (req.since_seconds() > 0) {
            auto since = f->wire.Since(f->wire_now - absl::Seconds(req.since_seconds()));
            if (!since.ok()) return since.status();
            window = std::move(*since);
            in.totals = &window.first;
            in.window_start = window.second;
          } else {
            in.totals = &f->wire.totals();
            in.window_start = f->wire.started();
          }
          in.pods = {{1, &f->cluster.pods.at("default/web")},
                     {2, &f->cluster.pods.at("default/sleep")}};
          in.pod_filter = req.pod();
          in.peer_pod = [f](const ambit::IpAddress& ip) { return f->cluster.FindPodByIp(ip); };
          in.mtls_at = [&](const ambit::state::Pod& pod, uint16_t port) {
            return ambit::authz::ResolveMtlsMode(peer_authns, f->cluster.mesh.root_namespace,
                                                 pod.namespace_name, pod.labels, port);
          };
          pb::VerifyMtlsResponse out;
          for (const auto& r : ambit::node::BuildWireReport(in)) {
            pb::PodWire* p = out.add_pods();
            p->set_pod(r.pod);
            p->set_plaintext_under_strict(r.plaintext_under_strict);
            for (const auto& v : r.verdicts) p->add_verdicts(v);
          }
          return out;
        });
    f->service = ambit::admin::AdminServer::NewService(f->state);
    return f;
  }();
  return *fixture;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)Get();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fixture& f = Get();
  ambit::fuzz::Input in(data, size);
  const uint8_t method = in.Byte() % 4;
  const absl::string_view request_bytes = in.TakeSized();
  f.stats_bytes = std::string(in.Rest());
  switch (method) {
    case 0: {
      pb::CheckRequest req;
      if (!req.ParseFromArray(request_bytes.data(), static_cast<int>(request_bytes.size()))) break;
      pb::CheckResponse resp;
      grpc::Status status = f.service->Check(nullptr, &req, &resp);
      if (status.ok()) {
        FUZZ_REQUIRE(req.port() >= 1 && req.port() <= 65535);
        FUZZ_REQUIRE(!resp.decision().empty());
      }
      break;
    }
    case 1: {
      pb::LogLevelRequest req;
      if (!req.ParseFromArray(request_bytes.data(), static_cast<int>(request_bytes.size()))) break;
      pb::LogLevelResponse resp;
      grpc::Status status = f.service->LogLevel(nullptr, &req, &resp);
      if (status.ok()) FUZZ_REQUIRE(resp.levels_size() >= 1);
      // Back to quiet: a fuzzed "debug" must not flood the run with log lines.
      ambit::log::SetLevel("", ambit::log::Level::kError);
      if (!req.component().empty())
        ambit::log::SetLevel(req.component(), ambit::log::Level::kError);
      break;
    }
    case 3: {
      pb::VerifyMtlsRequest req;
      if (!req.ParseFromArray(request_bytes.data(), static_cast<int>(request_bytes.size()))) break;
      pb::VerifyMtlsResponse resp;
      grpc::Status status = f.service->VerifyMtls(nullptr, &req, &resp);
      if (status.ok()) {
        FUZZ_REQUIRE(req.since_seconds() >= 0 && req.since_seconds() <= 86400);
        for (const auto& p : resp.pods()) FUZZ_REQUIRE(req.pod().empty() || p.pod() == req.pod());
        for (const auto& p : resp.pods()) FUZZ_REQUIRE(!p.verdicts().empty());
      }
      break;
    }
    default: {
      pb::ListConnectionsRequest req;
      if (!req.ParseFromArray(request_bytes.data(), static_cast<int>(request_bytes.size()))) break;
      pb::ListConnectionsResponse resp;
      grpc::Status status = f.service->ListConnections(nullptr, &req, &resp);
      if (status.ok() && !req.pod().empty()) {
        for (const auto& c : resp.connections()) FUZZ_REQUIRE(c.pod() == req.pod());
      }
      break;
    }
  }
  return 0;
}
