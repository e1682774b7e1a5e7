#include "agent/node/enrollment_pass.h"

#include "absl/strings/str_cat.h"
#include "agent/common/log.h"

namespace ambit::node {
namespace {
constexpr const char* kComponent = "agent";
}  // namespace

std::optional<absl::Time> RunEnrollmentPass(EnrollmentReconciler& reconciler,
                                            const state::ClusterState& state, PodHost& host,
                                            const Clock& clock) {
  EnrollmentReconciler::Plan plan = reconciler.Begin(state);
  for (const auto& uid : plan.remove) {
    const bool told = host.Remove(uid);
    reconciler.OnRemoved(uid, told, clock.Now());
    AMBIT_LOG(kComponent, Info) << "removed pod " << uid;
  }
  for (const auto& uid : plan.resend) {
    // A new trust domain is a new identity: the data plane requests its certificate (with a new
    // key) as soon as it hears of it, and drops the old one.
    const std::string identity = state::SpiffeId(state.mesh, state.pods.at(uid));
    AMBIT_LOG(kComponent, Info) << "pod " << uid << " identity "
                                << reconciler.enrolled().at(uid).spiffe_id << " -> " << identity;
    if (!host.DataPlaneConnected()) continue;
    auto sent = host.Resend(uid);
    if (sent.ok()) {
      reconciler.OnSent(uid, *sent);
    } else {
      AMBIT_LOG(kComponent, Error) << "tell the data plane pod " << uid << " is now " << identity
                                   << ": " << sent.status().message();
    }
  }
  for (const state::Pod* pod : plan.enroll) {
    const std::string uid = pod->Key();
    auto cookie = host.OpenNetns(*pod);
    if (!cookie.ok() && absl::IsPermissionDenied(cookie.status())) {
      if (reconciler.OnRefused(uid, std::string(cookie.status().message()))) {
        AMBIT_LOG(kComponent, Error) << cookie.status().message();
      }
      continue;
    }
    absl::Status status = cookie.status();
    if (cookie.ok()) {
      const EnrollmentReconciler::Decision d = reconciler.Decide(uid, *cookie, clock.Now());
      if (!d.warning.empty()) {
        AMBIT_LOG(kComponent, Warning) << d.warning;
      }
      if (d.kind == EnrollmentReconciler::Decision::kWait) {
        status = absl::UnavailableError(d.error);
      } else {
        const bool send = EnrollmentReconciler::MustSend(d, state::SpiffeId(state.mesh, *pod)) &&
                          host.DataPlaneConnected();
        auto told = host.SetUp(*pod, d, send);
        status = told.status();
        if (told.ok()) {
          reconciler.OnEnrolled(
              uid, {pod->netns_path, *cookie, d.slot, send ? *told : d.spiffe_id, pod->ips});
        }
      }
    }
    if (!status.ok()) {
      reconciler.OnEnrollFailed(uid, std::string(status.message()), clock.Now());
      AMBIT_LOG(kComponent, Error) << "enroll pod " << uid << " (netns "
                                   << (pod->netns_path.empty() ? "by IP" : pod->netns_path)
                                   << "): " << status.message() << "; retrying";
    }
  }
  EnrollmentReconciler::Finish finish = reconciler.EndPass(clock.Now());
  for (const auto& [cookie, slot] : finish.stale_slots) {
    host.RemoveStale(cookie, slot);
    AMBIT_LOG(kComponent, Info) << "removed stale enrollment netns_cookie=" << cookie;
  }
  for (const auto& uid : finish.release_handed_back) host.ReleaseHandedBack(uid);
  host.DropHandedBack();
  return finish.retry_at;
}

}  // namespace ambit::node
