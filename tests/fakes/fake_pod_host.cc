#include "tests/fakes/fake_pod_host.h"

namespace ambit::node {

absl::StatusOr<uint64_t> FakePodHost::OpenNetns(const state::Pod& pod) {
  opened.push_back(pod.Key());
  if (auto e = open_errors.find(pod.netns_path); e != open_errors.end()) return e->second;
  auto [it, inserted] = cookies.try_emplace(pod.netns_path, next_cookie_);
  if (inserted) ++next_cookie_;
  return it->second;
}

absl::StatusOr<std::string> FakePodHost::SetUp(const state::Pod& pod,
                                               const EnrollmentReconciler::Decision& decision,
                                               bool send) {
  set_up.push_back({pod.Key(), decision.kind, decision.slot, send});
  if (auto e = set_up_errors.find(pod.Key()); e != set_up_errors.end()) return e->second;
  if (!send) return std::string();
  serving.insert(pod.Key());
  return identity;
}

absl::StatusOr<std::string> FakePodHost::Resend(const std::string& uid) {
  resent.push_back(uid);
  if (auto e = resend_errors.find(uid); e != resend_errors.end()) return e->second;
  return identity;
}

bool FakePodHost::Remove(const std::string& uid) {
  removed.push_back(uid);
  if (!connected) return false;
  serving.erase(uid);
  return true;
}

void FakePodHost::RemoveStale(uint64_t netns_cookie, uint32_t slot) {
  stale.emplace_back(netns_cookie, slot);
}

void FakePodHost::ReleaseHandedBack(const std::string& uid) {
  released.push_back(uid);
  serving.erase(uid);
}

}  // namespace ambit::node
