// GetConfigDump: the configuration in force, in ztunnel's /config_dump layout
// (agent/node/ztunnel_dump.h).

#include "absl/synchronization/mutex.h"
#include "agent/node/agent.h"
#include "agent/node/handoff.h"
#include "agent/node/ztunnel_dump.h"

namespace ambit::node {

void Agent::InitConfigDumpHandler() {
  // The snapshot is built on the control thread, which owns the state it reads (the same
  // generation the data plane gets), and converted on the asking thread. Shared, so whichever
  // side finishes first leaves the other a valid object.
  struct Pending {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    absl::StatusOr<mesh::Snapshot> snapshot ABSL_GUARDED_BY(mu) =
        absl::UnavailableError("the agent stopped before the dump was built");
  };
  std::weak_ptr<admin::AdminState> admin = admin_state_;
  admin_state_->SetConfigDumpHandler([this, admin](const admin::v1::GetConfigDumpRequest&)
                                         -> absl::StatusOr<admin::v1::GetConfigDumpResponse> {
    auto pending = std::make_shared<Pending>();
    completions_.Post([this, pending] {
      auto snapshot = BuildSnapshot(last_version_);
      absl::MutexLock lock(&pending->mu);
      pending->snapshot = std::move(snapshot);
      pending->done = true;
    });
    absl::StatusOr<mesh::Snapshot> snapshot;
    {
      absl::MutexLock lock(&pending->mu);
      if (!pending->mu.AwaitWithTimeout(absl::Condition(&pending->done), absl::Seconds(10))) {
        return absl::DeadlineExceededError(
            "the control thread did not build the dump within 10s; see ambitctl status");
      }
      snapshot = std::move(pending->snapshot);
    }
    if (!snapshot.ok()) return snapshot.status();
    ZtunnelDumpInputs in;
    in.snapshot = &*snapshot;
    if (auto state = admin.lock()) {
      const admin::v1::ListCertificatesResponse certs = state->Certificates();
      for (const auto& c : certs.certificates()) {
        in.certificates.push_back({c.identity(), c.state(), c.serial(),
                                   c.not_before().unix_seconds(), c.not_after().unix_seconds(),
                                   c.last_error()});
      }
      for (const auto& r : certs.trust_bundle()) {
        in.roots.push_back({r.serial(), r.not_after().unix_seconds()});
      }
    }
    in.node_name = options_.node_name;
    in.version = BuildVersion();
    admin::v1::GetConfigDumpResponse out;
    out.set_json(ZtunnelConfigDump(in));
    return out;
  });
}

}  // namespace ambit::node
