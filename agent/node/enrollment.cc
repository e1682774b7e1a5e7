#include "agent/node/enrollment.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"

namespace ambit::node {

void EnrollmentReconciler::SetPinnedSlots(std::map<uint64_t, uint32_t> slots, bool migrating) {
  pinned_slots_ = std::move(slots);
  migrating_ = migrating;
}

EnrollmentReconciler::Plan EnrollmentReconciler::Begin(const state::ClusterState& state) {
  Plan plan;
  std::map<std::string, const state::Pod*> desired;
  for (const auto& [uid, pod] : state.pods) {
    // A pod whose address an older pod holds is not enrolled (the loader reported it).
    if (state::IsEnrolled(pod, state, options_.node_name) && !state.HasIpConflict(uid)) {
      desired[pod.Key()] = &pod;
    }
  }
  for (const auto& [uid, e] : enrolled_) {
    auto it = desired.find(uid);
    if (it == desired.end() || it->second->netns_path != e.netns_path ||
        (e.netns_path.empty() && it->second->ips != e.ips)) {
      plan.remove.push_back(uid);
    }
  }
  previous_failures_ = std::move(failing_since_);
  failing_since_.clear();
  failed_.clear();
  refused_this_pass_.clear();
  for (const auto& [uid, pod] : desired) {
    auto it = enrolled_.find(uid);
    const bool removed =
        std::find(plan.remove.begin(), plan.remove.end(), uid) != plan.remove.end();
    if (it != enrolled_.end() && !removed) {
      if (connected_ && state::SpiffeId(state.mesh, *pod) != it->second.spiffe_id) {
        plan.resend.push_back(uid);
      }
      continue;
    }
    plan.enroll.push_back(pod);
  }
  return plan;
}

void EnrollmentReconciler::OnRemoved(const std::string& uid, bool told_dataplane, absl::Time now) {
  auto it = enrolled_.find(uid);
  if (it == enrolled_.end()) return;
  if (told_dataplane) {
    const uint64_t removal = next_removal_++;
    releasing_[it->second.netns_cookie] = {uid, removal, now + options_.release_timeout};
    unanswered_.emplace_back(uid, removal);
    if (unanswered_.size() > options_.max_unanswered_removals) unanswered_.pop_front();
  }
  enrolled_.erase(it);
}

uint32_t EnrollmentReconciler::FreeSlot() const {
  std::set<uint32_t> used;
  for (const auto& [uid, p] : enrolled_) used.insert(p.slot);
  for (const auto& [cookie, slot] : pinned_slots_) used.insert(slot);
  uint32_t slot = 0;
  while (used.contains(slot)) ++slot;
  return slot;
}

EnrollmentReconciler::Decision EnrollmentReconciler::Decide(const std::string& uid,
                                                            uint64_t netns_cookie, absl::Time now) {
  Decision d;
  if (auto r = releasing_.find(netns_cookie); r != releasing_.end()) {
    if (now < r->second.deadline) {
      d.kind = Decision::kWait;
      d.error = absl::StrCat("the data plane has not yet released the listeners of pod ",
                             r->second.uid, " in this network namespace (waiting for it)");
      return d;
    }
    d.warning = absl::StrCat("the data plane did not confirm the removal of pod ", r->second.uid,
                             " within ", absl::FormatDuration(options_.release_timeout),
                             "; enrolling pod ", uid, " in its netns anyway");
    releasing_.erase(r);
  }
  auto hb = handed_back_.find(netns_cookie);
  auto pinned = pinned_slots_.find(netns_cookie);
  // Migrating from another ABI whose ambit_pods could not be adopted, no slot is pinned: the
  // pod takes a new one in this ABI's (empty) maps, and keeps its listeners all the same.
  const bool slot_known = pinned != pinned_slots_.end() || migrating_;
  d.slot = pinned != pinned_slots_.end() ? pinned->second : FreeSlot();
  if (hb != handed_back_.end() && hb->second.complete && slot_known) {
    // The running data plane still holds this pod's listeners: keep them, so connections
    // waiting in their backlogs and live connections are untouched.
    d.kind = Decision::kAdopt;
    d.spiffe_id = hb->second.spiffe_id;
  }
  if (hb != handed_back_.end()) handed_back_.erase(hb);
  if (pinned != pinned_slots_.end()) pinned_slots_.erase(pinned);
  return d;
}

void EnrollmentReconciler::OnEnrolled(const std::string& uid, EnrolledInfo info) {
  enrolled_[uid] = std::move(info);
}

void EnrollmentReconciler::OnEnrollFailed(const std::string& uid, std::string error,
                                          absl::Time now) {
  failed_[uid] = std::move(error);
  auto since = previous_failures_.find(uid);
  failing_since_[uid] = since != previous_failures_.end() ? since->second : now;
}

bool EnrollmentReconciler::OnRefused(const std::string& uid, std::string reason) {
  auto old = refused_.find(uid);
  const bool is_new = old == refused_.end() || old->second != reason;
  refused_this_pass_[uid] = std::move(reason);
  return is_new;
}

void EnrollmentReconciler::OnSent(const std::string& uid, std::string spiffe_id) {
  if (auto it = enrolled_.find(uid); it != enrolled_.end()) it->second.spiffe_id = spiffe_id;
}

EnrollmentReconciler::Finish EnrollmentReconciler::EndPass(absl::Time now) {
  Finish out;
  refused_ = std::move(refused_this_pass_);
  refused_this_pass_.clear();
  previous_failures_.clear();
  // Whatever an earlier run left that is no longer wanted: stop steering it.
  for (const auto& [cookie, slot] : pinned_slots_) out.stale_slots.emplace_back(cookie, slot);
  pinned_slots_.clear();
  if (connected_) {
    for (const auto& [cookie, pod] : handed_back_) out.release_handed_back.push_back(pod.uid);
  }
  handed_back_.clear();
  if (!failed_.empty()) {
    // The pod failing the shortest time sets the pace; each waits about as long as it has been
    // failing (2 s, 2 s, 4 s, 8 s, ... up to retry_max): a doubling back-off with no counter.
    absl::Time at = absl::InfiniteFuture();
    for (const auto& [uid, error] : failed_) {
      auto since = failing_since_.find(uid);
      const absl::Duration failing =
          since == failing_since_.end() ? absl::ZeroDuration() : now - since->second;
      at = std::min(at, now + std::clamp(failing, options_.retry_interval, options_.retry_max));
    }
    // A pod waiting for a release retries when the release is due at the latest.
    for (auto it = releasing_.begin(); it != releasing_.end();) {
      if (it->second.deadline <= now) {  // no longer holds anything back
        it = releasing_.erase(it);
        continue;
      }
      at = std::min(at, it->second.deadline);
      ++it;
    }
    out.retry_at = at;
  }
  return out;
}

std::vector<std::string> EnrollmentReconciler::OnSessionStart(
    std::vector<HandedBackInfo> handed_back) {
  connected_ = true;
  releasing_.clear();
  unanswered_.clear();
  for (auto& pod : handed_back) {
    const uint64_t cookie = pod.netns_cookie;
    handed_back_.emplace(cookie, std::move(pod));
  }
  std::vector<std::string> resend;
  for (const auto& [uid, e] : enrolled_) resend.push_back(uid);
  return resend;
}

void EnrollmentReconciler::OnHandedBack(std::vector<HandedBackInfo> handed_back) {
  for (auto& pod : handed_back) {
    const uint64_t cookie = pod.netns_cookie;
    handed_back_.emplace(cookie, std::move(pod));
  }
}

bool EnrollmentReconciler::OnPodRemoved(const std::string& uid) {
  auto it = std::find_if(unanswered_.begin(), unanswered_.end(),
                         [&uid](const auto& u) { return u.first == uid; });
  if (it == unanswered_.end()) return false;  // not a removal of this session
  const uint64_t removal = it->second;
  unanswered_.erase(it);
  bool waited_on = false;
  for (auto r = releasing_.begin(); r != releasing_.end();) {
    if (r->second.removal == removal) {
      r = releasing_.erase(r);
      waited_on = true;
    } else {
      ++r;
    }
  }
  return waited_on && !failed_.empty();
}

}  // namespace ambit::node
