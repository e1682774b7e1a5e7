#pragma once

// ambitd's decisions about its data plane, apart from the control socket that carries them out:
// which configuration generation is current and since when it waits (`GenerationTracker`), when
// an exited data plane is started again (`RestartBackoff`), and which CSRs are signed and which
// certificate reports are news (`DecideCsr`, `ChangedCertificates`). Pure: no I/O, no threads,
// every time passed in. Thread-safety: none; one owner thread.

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "agent/supervisor/dataplane.h"

namespace ambit::node {

// The configuration generations sent to the data plane: the version of the last one built, since
// when the data plane has not applied the current one (readiness), and why it could not be sent.
class GenerationTracker {
 public:
  // A new generation is about to be sent; the data plane has applied `acked`. Returns its version.
  // Waiting started with the first generation the data plane has not applied, and keeps that
  // start while later ones follow.
  uint64_t Next(uint64_t acked, absl::Time now) { return Track(version_ + 1, acked, now); }
  // The same, for a generation numbered elsewhere: a second data-plane process gets the
  // generation built for the first, under the same version, and is tracked on its own.
  uint64_t Track(uint64_t version, uint64_t acked, absl::Time now);
  // The generation could not be sent (""), or was.
  void OnSent(std::string error) { delivery_error_ = std::move(error); }
  // The data plane applied `acked`.
  void OnAcked(uint64_t acked) {
    if (acked == version_) pending_since_ = absl::InfiniteFuture();
  }
  // A new data-plane session has applied nothing yet.
  void OnSessionStart(absl::Time now) {
    if (version_ > 0) pending_since_ = now;
  }

  uint64_t version() const { return version_; }
  absl::Time pending_since() const { return pending_since_; }
  const std::string& delivery_error() const { return delivery_error_; }
  bool needs_resend() const { return !delivery_error_.empty(); }

 private:
  uint64_t version_ = 0;
  absl::Time pending_since_ = absl::InfiniteFuture();
  std::string delivery_error_;
};

// When an exited data plane is started again: quickly after a long run, backing off (doubling up
// to a cap) while it keeps dying or cannot be started.
class RestartBackoff {
 public:
  struct Options {
    absl::Duration initial = absl::Milliseconds(100);
    absl::Duration max = absl::Seconds(10);
    absl::Duration healthy_run = absl::Seconds(30);  // a run this long earns a quick restart
  };
  RestartBackoff() : RestartBackoff(Options{}) {}
  explicit RestartBackoff(Options options) : options_(options), next_(options.initial) {}

  // The data plane came up (its control session began).
  void OnStarted(absl::Time now) { started_ = now; }
  // The data plane exited: the delay before the restart. Back to `initial` only when it had come
  // up and stayed up for `healthy_run`.
  absl::Duration OnExit(absl::Time now);
  // A start failed before a process existed to exit: the delay before the next attempt.
  absl::Duration OnStartFailed() { return Take(); }
  int restarts() const { return restarts_; }

 private:
  absl::Duration Take();

  Options options_;
  absl::Duration next_;
  absl::Time started_ = absl::InfinitePast();
  int restarts_ = 0;
};

// The data-plane processes ambitd supervises. kNone: a pod no process has been sent.
enum class DataPlaneKind { kNone, kTunnel, kWaypoint };
const char* DataPlaneName(DataPlaneKind kind);  // "data plane", "waypoint data plane"

// The process an enrolled pod belongs to: a pod of a waypoint (state/waypoint.h's instance_of;
// `waypoint_pods` are their Pod::Key()) goes to the waypoint process, every other pod to the
// tunnel. Never both: the listeners are the pod's, and one process accepts on them.
DataPlaneKind ProcessFor(const std::string& uid, const std::set<std::string>& waypoint_pods);

// Whether the waypoint process is needed: some enrolled pod (`enrolled` uids) belongs to it.
bool WaypointNeeded(const std::vector<std::string>& enrolled,
                    const std::set<std::string>& waypoint_pods);

// One pod to move to `to`. From a process (`from` not kNone): removed there and enrolled again
// with new listeners, since the old process shuts the shared listening sockets down when it
// lets go; from kNone: add_pod to `to`.
struct PodMove {
  std::string uid;
  DataPlaneKind from = DataPlaneKind::kNone, to = DataPlaneKind::kNone;
  friend bool operator==(const PodMove&, const PodMove&) = default;
};

// The enrolled pods (uid -> the process last sent its add_pod, kNone for none) that are not
// where they belong: a pod that became or stopped being a waypoint's, a pod handed back by the
// other process after an agent restart, or one not sent anywhere yet. `connected`: whether
// add_pod to that process would reach it now (the waypoint process also when it was never
// started: it starts for its first pod). A pod no process holds whose own process is down
// waits for that process's session, which sends it.
std::vector<PodMove> PlanMoves(const std::map<std::string, DataPlaneKind>& served,
                               const std::set<std::string>& waypoint_pods,
                               const std::map<DataPlaneKind, bool>& connected);

// A session of `kind` began (a fresh or restarted process, or one re-attached): the enrolled
// pods (`enrolled` uids) to send it, those that belong to it.
std::vector<std::string> SessionPods(DataPlaneKind kind, const std::vector<std::string>& enrolled,
                                     const std::set<std::string>& waypoint_pods);

// Whether to sign a CSR of the data plane: only for identities of pods enrolled on this node.
// `enrolled_identities` are theirs. OK, or PERMISSION_DENIED with the reason.
absl::Status DecideCsr(const std::string& identity,
                       const std::set<std::string>& enrolled_identities);

// The certificate states in `now` that differ from `before` (new identity, new state or serial):
// the ones worth a log line.
std::vector<supervisor::CertificateState> ChangedCertificates(
    const std::vector<supervisor::CertificateState>& before,
    const std::vector<supervisor::CertificateState>& now);

// Why a roll's standby does not serve yet, one line each; empty once it does and the primary
// may drain. It serves when its last heartbeat answer shows every pod sent to it listening and
// watched by every worker (`pods`, as for the primary's readiness), it holds a valid certificate
// for every identity of those pods (`identities`: a pod's 10 s wait for its certificate ending
// would otherwise pass for serving, and its mTLS connections would be refused), and it applied
// the generation it was sent (`sent_version`; 0: none was built yet). Pure.
std::vector<std::string> StandbyProblems(const std::vector<supervisor::ExpectedListeners>& pods,
                                         const std::vector<std::string>& identities,
                                         const supervisor::PongReport& pong,
                                         const std::vector<supervisor::CertificateState>& certs,
                                         uint64_t sent_version, uint64_t acked_version,
                                         int64_t now_unix);

}  // namespace ambit::node
