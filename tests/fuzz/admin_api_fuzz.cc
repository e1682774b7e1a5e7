// Admin API requests (ambitd, gRPC on a root-only unix socket): the request handlers of
// AdminServer::NewService, with the `check` evaluator and log-level handler ambitd installs
// (agent/node/admin_views.cc) over a fixed configuration, and a data-plane stats answer (bytes the
// data plane sends ambitd) behind ListConnections.
// Input: [method (byte % 3): 0 Check, 1 LogLevel, 2 ListConnections] [16-bit length][request
//        bytes] [rest: the data plane's StatsResponse, for ListConnections].
// Properties: no crash or leak; an undecodable request is refused before any handler; Check
// answers only for a port in 1..65535 and names a decision.

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
  const uint8_t method = in.Byte() % 3;
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
