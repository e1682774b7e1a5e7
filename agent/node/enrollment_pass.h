#pragma once

// One enrollment pass: the reconciler's plan carried out through `PodHost`, the kernel and
// data-plane effects of enrollment. Agent implements PodHost on network namespaces, listeners,
// routing, the BPF maps and the control socket; tests use FakePodHost (tests/fakes/), so a whole
// pass (failures, retries, adoption, releases) runs without root.

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/node/enrollment.h"
#include "agent/state/model.h"

namespace ambit::node {

// Thread-safety: implementations are used from one thread, the one running the pass.
class PodHost {
 public:
  virtual ~PodHost() = default;
  // Opens the pod's network namespace for set-up and returns its cookie. PERMISSION_DENIED: the
  // namespace may never be enrolled (the node's own): refused, not retried.
  virtual absl::StatusOr<uint64_t> OpenNetns(const state::Pod& pod) = 0;
  // Sets the pod opened last up as decided (listeners kept or made, routing, BPF maps) and, when
  // `send`, tells the data plane about it. Returns the identity the data plane was told ("" when
  // not sent). On failure nothing of the pod stays in place.
  virtual absl::StatusOr<std::string> SetUp(const state::Pod& pod,
                                            const EnrollmentReconciler::Decision& decision,
                                            bool send) = 0;
  // Tells the data plane an enrolled pod's identity changed; returns the identity sent.
  virtual absl::StatusOr<std::string> Resend(const std::string& uid) = 0;
  // Undoes an enrollment. True when the data plane was told (its release is then awaited).
  virtual bool Remove(const std::string& uid) = 0;
  // A previous run's BPF entry that nothing claimed.
  virtual void RemoveStale(uint64_t netns_cookie, uint32_t slot) = 0;
  // A pod the data plane handed back that is no longer wanted: remove it from the data plane.
  virtual void ReleaseHandedBack(const std::string& uid) = 0;
  // Handed-back listeners not adopted by this pass are closed.
  virtual void DropHandedBack() = 0;
  virtual bool DataPlaneConnected() const = 0;
};

// Runs a pass over `state`; returns when to retry (failures left), if ever.
std::optional<absl::Time> RunEnrollmentPass(EnrollmentReconciler& reconciler,
                                            const state::ClusterState& state, PodHost& host,
                                            const Clock& clock);

}  // namespace ambit::node
