// StrictReadiness and PolicyDiff: the data plane's view (plaintext clients, live connections)
// against the configuration in force (agent/node/strict_readiness.h, policy_diff.h). Both only
// read: nothing here changes the configuration or its generation.

#include "absl/synchronization/mutex.h"
#include "agent/common/status.h"
#include "agent/node/agent.h"
#include "agent/node/policy_diff.h"
#include "agent/node/strict_readiness.h"
#include "agent/supervisor/dataplane.h"

namespace ambit::node {
namespace {

// Runs `read` on the control thread, which owns what it reads, and waits for its result (at
// most 10 s). Shared, so whichever side finishes first leaves the other a valid object.
template <typename T>
absl::StatusOr<T> ReadOnControlThread(TaskQueue& completions, std::function<T()> read) {
  struct Pending {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    T value ABSL_GUARDED_BY(mu);
  };
  auto pending = std::make_shared<Pending>();
  completions.Post([pending, read = std::move(read)] {
    T value = read();
    absl::MutexLock lock(&pending->mu);
    pending->value = std::move(value);
    pending->done = true;
  });
  absl::MutexLock lock(&pending->mu);
  if (!pending->mu.AwaitWithTimeout(absl::Condition(&pending->done), absl::Seconds(10))) {
    return absl::DeadlineExceededError(
        "the control thread did not answer within 10s; see ambitctl status");
  }
  return std::move(pending->value);
}

absl::StatusOr<ambit::dataplane::v1::StatsResponse> AskTunnel(const std::string& socket,
                                                              bool plaintext_clients,
                                                              bool connections) {
  ambit::dataplane::v1::StatsRequest ask;
  ask.set_plaintext_clients(plaintext_clients);
  ask.set_connections(connections);
  auto stats = supervisor::DataPlane::FetchStats(socket, ask);
  if (!stats.ok()) {
    return absl::UnavailableError(
        absl::StrCat("cannot ask ambit-tunnel (", socket, "): ", stats.status().message()));
  }
  return stats;
}

}  // namespace

void Agent::InitPlanHandlers() {
  admin_state_->SetStrictReadinessHandler(
      [this, socket = options_.control_socket()](const admin::v1::StrictReadinessRequest& request)
          -> absl::StatusOr<admin::v1::StrictReadinessResponse> {
        // Immutable copies (the cluster state is shared): the answer is built on this thread.
        auto in = ReadOnControlThread<StrictReadinessInputs>(completions_, [this] {
          StrictReadinessInputs in;
          in.cluster = state_;
          in.peer_authns = security_.PeerAuthenticationList();
          for (const auto& [key, pod] : enrolled_) in.enrolled.insert(key);
          in.node_name = options_.node_name;
          return in;
        });
        if (!in.ok()) return in.status();
        AMBIT_ASSIGN_OR_RETURN(auto stats, AskTunnel(socket, true, false));
        return StrictReadiness(*in, stats, request);
      });
  admin_state_->SetPolicyDiffHandler(
      [this, socket = options_.control_socket()](const admin::v1::PolicyDiffRequest& request)
          -> absl::StatusOr<admin::v1::PolicyDiffResponse> {
        auto in = ReadOnControlThread<PolicyDiffInputs>(completions_, [this] {
          return PolicyDiffInputs{.cluster = state_, .current = security_};
        });
        if (!in.ok()) return in.status();
        AMBIT_ASSIGN_OR_RETURN(auto stats, AskTunnel(socket, false, true));
        return PolicyDiff(*in, stats, request);
      });
}

}  // namespace ambit::node
