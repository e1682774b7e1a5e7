#include "agent/state/model.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ambit::state {

std::string Pod::Key() const { return absl::StrCat(namespace_name, "/", name); }

std::string Service::Key() const { return absl::StrCat(namespace_name, "/", name); }

const ExtensionProvider* MeshConfig::FindExtensionProvider(std::string_view name) const {
  for (const ExtensionProvider& p : extension_providers) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

const Pod* ClusterState::FindPodByIp(const ambit::IpAddress& ip) const {
  for (const auto& [key, pod] : pods) {
    if (std::find(pod.ips.begin(), pod.ips.end(), ip) != pod.ips.end()) return &pod;
  }
  return nullptr;
}

bool IsEnrolled(const Pod& pod, std::string_view node_name) {
  return !node_name.empty() && pod.node_name == node_name && !pod.netns_path.empty();
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
