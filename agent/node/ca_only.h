#pragma once

// ambitd --ca-only: the cluster CA (docs/ARCHITECTURE.md#ca-api). One Deployment that every
// node's ambitd asks over Istio's CA API (`--ca-address`), signing with the operator's cacerts, so
// that every node's workloads chain to one root. No BPF, no pods, no data plane: only which pods
// run on which node, to judge each node's requests.

#include <map>
#include <memory>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "agent/admin/admin_server.h"
#include "agent/admin/telemetry_server.h"
#include "agent/ca/certificate_authority.h"
#include "agent/common/epoll_loop.h"
#include "agent/common/unique_fd.h"
#include "agent/config/load_result.h"
#include "agent/config/source.h"
#include "agent/issuance/ca_server.h"
#include "agent/issuance/caller_auth.h"
#include "agent/issuance/rate_limit.h"
#include "agent/node/agent.h"
#include "agent/state/model.h"

namespace ambit::node {

// The identities each node may obtain: the SPIFFE IDs of the pods scheduled on it (a pod whose
// address another pod holds is enrolled nowhere and entitles no node).
std::map<std::string, std::set<std::string>> IdentitiesByNode(const state::ClusterState& state);

// What CaOnly is built from besides the options: where the pods come from, and how callers'
// tokens are checked. Made by MakeCaOnlyInputs from the options; tests may hand in their own.
struct CaOnlyInputs {
  std::unique_ptr<config::ConfigSource> source;
  std::shared_ptr<issuance::CallerAuthenticator> authenticator;  // null: --ca-tokens
  // An empty directory made to stand in for a missing configuration directory; removed by the
  // CaOnly that takes it.
  std::string scratch_dir;
};
absl::StatusOr<CaOnlyInputs> MakeCaOnlyInputs(const AgentOptions& options);

// --ca-token-review: callers' tokens reviewed by the API server of --kube-api.
absl::StatusOr<std::shared_ptr<issuance::CallerAuthenticator>> MakeTokenReviewAuthenticator(
    const AgentOptions& options);

// The CA's control thread: an EpollLoop over the signalfd and the configuration source; the CA
// API server's threads sign (CaServer). Not thread-safe: everything here runs on Run()'s thread.
// Refuses to start without cacerts material: a root generated per CA replica would split the
// mesh into as many trust domains as replicas.
class CaOnly {
 public:
  static absl::StatusOr<std::unique_ptr<CaOnly>> Create(const AgentOptions& options,
                                                        CaOnlyInputs inputs);
  ~CaOnly();
  // Until SIGTERM or SIGINT.
  absl::Status Run();
  int port() const { return server_ != nullptr ? server_->port() : 0; }

 private:
  explicit CaOnly(const AgentOptions& options) : options_(options) {}
  absl::Status Init(CaOnlyInputs inputs);
  void Apply(config::LoadResult result);
  void PublishHealth();
  void ArmPublish();

  AgentOptions options_;
  std::string scratch_dir_;
  std::unique_ptr<config::ConfigSource> source_;
  std::shared_ptr<ca::CertificateAuthority> ca_;
  std::shared_ptr<issuance::Entitlements> entitlements_ =
      std::make_shared<issuance::Entitlements>();
  std::shared_ptr<issuance::SigningRateLimiter> rate_;
  std::shared_ptr<issuance::CallerAuthenticator> authenticator_;
  std::unique_ptr<issuance::CaServer> server_;
  std::shared_ptr<admin::AdminState> admin_state_ = std::make_shared<admin::AdminState>();
  std::unique_ptr<admin::TelemetryServer> telemetry_;
  bool loaded_ = false;
  std::unique_ptr<EpollLoop> loop_;
  UniqueFd signal_fd_;
  std::map<int, std::unique_ptr<EventHandler>> handlers_;
};

}  // namespace ambit::node
