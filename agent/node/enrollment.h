#pragma once

// Which pods ambitd enrolls, adopts, retries and removes, and when: the decisions of the
// enrollment pass, apart from the kernel work that carries them out. The reconciler takes the
// configuration and events (a pod enrolled or failed, the data plane connected, exited or
// released a pod, time passed) and answers with what to do next; `Agent` does it (netns,
// listeners, routing, BPF maps, the control socket) and reports back. No I/O, no threads, no
// clock of its own: every time is passed in.
//
// A pass over a configuration:
//   plan = Begin(state)                        // remove plan.remove, re-send plan.resend
//   OnRemoved(uid, told_dataplane, now)        // for each removal carried out
//   per pod in plan.enroll: open its netns, then
//     OnRefused / OnEnrollFailed, or Decide(uid, cookie, now) and then
//     OnEnrolled / OnEnrollFailed
//   finish = Finish(now)                       // stale slots, handed-back pods, the retry time
//
// Thread-safety: none; one owner thread.

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "agent/state/model.h"

namespace ambit::node {

// A pod the running data plane still served when it connected (it outlived an agent).
struct HandedBackInfo {
  std::string uid;
  std::string spiffe_id;  // the identity the data plane serves it with
  uint64_t netns_cookie = 0;
  bool complete = false;  // every IPv4 listener came back: it can be adopted as it is
};

// What the reconciler keeps of an enrolled pod.
struct EnrolledInfo {
  std::string netns_path;
  uint64_t netns_cookie = 0;
  uint32_t slot = 0;
  std::string spiffe_id;  // the identity the data plane was last told
  // The addresses it was enrolled with. A pod found by IP (no netns_path) whose addresses
  // change is in another namespace now (re-created): it is enrolled again.
  std::vector<ambit::IpAddress> ips;
};

class EnrollmentReconciler {
 public:
  struct Options {
    std::string node_name;
    // Between attempts for a pod whose enrollment failed (its network namespace not there yet,
    // the data plane still releasing it, ...): retry_interval at first, then as long as the pod
    // has been failing, up to retry_max, so a pod that stays broken is not retried (and logged)
    // every two seconds for ever. A configuration change or a released netns retries at once.
    absl::Duration retry_interval = absl::Seconds(2);
    // How long a removed pod's netns waits for the data plane's pod_removed before it is
    // enrolled again regardless (the data plane answers within about two seconds).
    absl::Duration release_timeout = absl::Seconds(5);
    // Removals the data plane has not answered, kept to match late answers (a data plane
    // that never answers must not grow this without bound).
    size_t max_unanswered_removals = 4096;
    // The longest wait between attempts for a failing pod (see retry_interval).
    absl::Duration retry_max = absl::Seconds(30);
  };

  explicit EnrollmentReconciler(Options options) : options_(std::move(options)) {}

  // Start-up: the pods a previous agent run left in the BPF maps (netns cookie -> slot), and
  // whether the maps are being migrated from another ABI (then a pod keeps its listeners even
  // without a pinned slot).
  void SetPinnedSlots(std::map<uint64_t, uint32_t> slots, bool migrating);

  struct Plan {
    std::vector<std::string> remove;  // enrolled pods no longer wanted here, or in a new netns
    // Enrolled pods whose identity changed (a new trust domain): the data plane is told again,
    // so it requests the new certificate and drops the old one.
    std::vector<std::string> resend;
    std::vector<const state::Pod*> enroll;  // into `state`; valid while it lives
  };
  // Begins a pass over `state`; the pods enroll failures were recorded for are tried again.
  Plan Begin(const state::ClusterState& state);

  // A removal was carried out. `told_dataplane`: remove_pod went out, so the netns is not
  // enrolled again until the data plane answers or release_timeout passes.
  void OnRemoved(const std::string& uid, bool told_dataplane, absl::Time now);

  struct Decision {
    enum Kind {
      kWait,    // the data plane still holds listeners in this netns: fail, retry later
      kAdopt,   // keep the handed-back listeners
      kCreate,  // new listeners
    };
    Kind kind = kCreate;
    uint32_t slot = 0;
    std::string spiffe_id;  // kAdopt: what the data plane serves the pod with
    std::string error;      // kWait
    std::string warning;    // a release that timed out is passed over (log it)
  };
  // For a pod of the plan whose netns was opened (cookie known). Consumes the netns's handed-back
  // entry and pinned slot whatever the outcome (Agent drops its handed-back listeners too, unless
  // kAdopt moves them into the pod).
  Decision Decide(const std::string& uid, uint64_t netns_cookie, absl::Time now);

  // The data plane must hear of the pod just enrolled (a new one, or an adopted one whose
  // identity changed while no agent ran).
  static bool MustSend(const Decision& d, const std::string& identity) {
    return d.kind != Decision::kAdopt || d.spiffe_id != identity;
  }

  void OnEnrolled(const std::string& uid, EnrolledInfo info);
  void OnEnrollFailed(const std::string& uid, std::string error, absl::Time now);
  // The pod names a namespace it may never have: not retried until its configuration changes.
  // True when the reason is new (log it).
  bool OnRefused(const std::string& uid, std::string reason);
  // The identity the data plane was told for an enrolled pod.
  void OnSent(const std::string& uid, std::string spiffe_id);

  struct Finish {
    std::vector<std::pair<uint64_t, uint32_t>> stale_slots;  // leftovers to unpin (cookie, slot)
    std::vector<std::string> release_handed_back;            // remove_pod for these uids
    std::optional<absl::Time> retry_at;                      // failures wait for this
  };
  Finish EndPass(absl::Time now);

  // A data-plane session began: a restarted data plane holds nothing of removed pods, one that
  // stayed up answered every earlier removal in the previous session. Returns the enrolled pods
  // to send again (a fresh data plane knows nothing).
  std::vector<std::string> OnSessionStart(std::vector<HandedBackInfo> handed_back);
  void OnDataPlaneExit() { connected_ = false; }
  // The waypoint process's session began: the pods it handed back (a previous agent's waypoint
  // process, re-attached) join those the data plane handed back, and adoption treats them
  // alike. The data plane's session (its removals, whether it is connected) is not touched.
  void OnHandedBack(std::vector<HandedBackInfo> handed_back);
  bool connected() const { return connected_; }

  // The data plane released a pod it was told to remove. Matched to the oldest unanswered
  // removal of that uid, so a late answer to a removal that already timed out never clears a
  // newer one. True: a pod is waiting for a retry that may now succeed (retry now).
  bool OnPodRemoved(const std::string& uid);

  bool has_failures() const { return !failed_.empty(); }
  const std::map<std::string, EnrolledInfo>& enrolled() const { return enrolled_; }
  const std::map<std::string, std::string>& failed() const { return failed_; }
  const std::map<std::string, absl::Time>& failing_since() const { return failing_since_; }
  const std::map<std::string, std::string>& refused() const { return refused_; }
  bool releasing(uint64_t netns_cookie) const { return releasing_.contains(netns_cookie); }
  size_t unanswered_removals() const { return unanswered_.size(); }

 private:
  uint32_t FreeSlot() const;

  struct Releasing {
    std::string uid;
    uint64_t removal = 0;  // which removal, to match the answer
    absl::Time deadline;
  };

  Options options_;
  bool connected_ = false;
  bool migrating_ = false;
  std::map<std::string, EnrolledInfo> enrolled_;
  std::map<uint64_t, uint32_t> pinned_slots_;
  std::map<uint64_t, HandedBackInfo> handed_back_;
  std::map<std::string, std::string> failed_;  // uid -> last enroll error, of this pass
  std::map<std::string, absl::Time> failing_since_;
  std::map<std::string, absl::Time> previous_failures_;  // during a pass
  std::map<std::string, std::string> refused_, refused_this_pass_;
  // Removed pods' netns (by cookie) whose listeners the data plane may still hold.
  std::map<uint64_t, Releasing> releasing_;
  // Removals sent and not yet answered, oldest first: the data plane answers each in order.
  std::deque<std::pair<std::string, uint64_t>> unanswered_;
  uint64_t next_removal_ = 1;
};

}  // namespace ambit::node
