#include "agent/state/model.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "agent/common/formats.h"

namespace ambit::state {

std::string Pod::Key() const { return absl::StrCat(namespace_name, "/", name); }

std::string Service::Key() const { return absl::StrCat(namespace_name, "/", name); }

std::string Gateway::Key() const { return absl::StrCat(namespace_name, "/", name); }

const ExtensionProvider* MeshConfig::FindExtensionProvider(std::string_view name) const {
  for (const ExtensionProvider& p : extension_providers) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

const Pod* ClusterState::FindPodByIp(const ambit::IpAddress& ip) const {
  for (const auto& [key, pod] : pods) {
    if (HasIpConflict(key)) continue;
    if (std::find(pod.ips.begin(), pod.ips.end(), ip) != pod.ips.end()) return &pod;
  }
  return nullptr;
}

namespace {

absl::Time Age(const Pod& pod) { return pod.creation_time.value_or(pod.first_seen); }

std::string AgeText(const Pod& pod) {
  if (pod.creation_time) {
    return absl::StrCat("created ", FormatTimestamp(*pod.creation_time));
  }
  if (pod.first_seen == absl::InfinitePast()) return "no creationTimestamp";
  return absl::StrCat("no creationTimestamp; first seen by this agent ",
                      FormatTimestamp(pod.first_seen));
}

}  // namespace

bool IsOlder(const Pod& a, const Pod& b) {
  const absl::Time age_a = Age(a), age_b = Age(b);
  if (age_a != age_b) return age_a < age_b;
  if (a.first_seen_load != b.first_seen_load) return a.first_seen_load < b.first_seen_load;
  return a.Key() < b.Key();
}

std::string IpConflict::Summary() const {
  return absl::StrCat("IP ", ip.ToString(), " held by ", holder);
}

void ResolveIpConflicts(ClusterState* state) {
  state->ip_conflicts.clear();
  std::vector<const Pod*> by_age;
  for (const auto& [key, pod] : state->pods) {
    if (!pod.ips.empty()) by_age.push_back(&pod);
  }
  std::sort(by_age.begin(), by_age.end(),
            [](const Pod* a, const Pod* b) { return IsOlder(*a, *b); });
  std::map<ambit::IpAddress, const Pod*> holders;
  for (const Pod* pod : by_age) {
    const Pod* holder = nullptr;
    const ambit::IpAddress* taken = nullptr;
    for (const auto& ip : pod->ips) {
      auto it = holders.find(ip);
      if (it != holders.end() && it->second != pod) {
        holder = it->second;
        taken = &ip;
        break;
      }
    }
    if (holder != nullptr) {
      state->ip_conflicts[pod->Key()] =
          IpConflict{*taken, holder->Key(), holder->source_file, AgeText(*holder)};
      continue;
    }
    for (const auto& ip : pod->ips) holders.emplace(ip, pod);
  }
}

bool InMesh(const Pod& pod, const ClusterState& state) {
  if (!pod.netns_path.empty()) return true;
  const std::string label(kDataplaneModeLabel);
  if (auto own = pod.labels.find(label); own != pod.labels.end()) return own->second == "ambient";
  auto ns = state.namespaces.find(pod.namespace_name);
  if (ns == state.namespaces.end()) return false;
  auto mode = ns->second.labels.find(label);
  return mode != ns->second.labels.end() && mode->second == "ambient";
}

bool IsEnrolled(const Pod& pod, const ClusterState& state, std::string_view node_name) {
  return !node_name.empty() && pod.node_name == node_name && InMesh(pod, state);
}

std::string SpiffeId(const MeshConfig& mesh, const Pod& pod) {
  return absl::StrCat("spiffe://", mesh.trust_domain, "/ns/", pod.namespace_name, "/sa/",
                      pod.service_account);
}

bool Selects(const Service& svc, const Pod& pod) {
  if (svc.selector.empty() || pod.namespace_name != svc.namespace_name) return false;
  for (const auto& [k, v] : svc.selector) {
    auto it = pod.labels.find(k);
    if (it == pod.labels.end() || it->second != v) return false;
  }
  return true;
}

}  // namespace ambit::state
