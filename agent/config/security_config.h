#pragma once

// The Istio security resources (security.istio.io) in force, converted to authz model types.
// Carried in LoadResult beside state::ClusterState rather than inside it: dependencies point
// common <- {state, authz} <- config (DESIGN.md section 7), so state cannot name authz types,
// while config may. Thread-compatible value type, like ClusterState.

#include <map>
#include <string>
#include <vector>

#include "agent/authz/peer_authentication.h"

namespace ambit::config {

struct SecurityConfig {
  // PeerAuthentication by "namespace/name" (authz::PeerAuthentication::Key()).
  std::map<std::string, authz::PeerAuthentication> peer_authentications;

  // The PeerAuthentications as the list authz::ResolveMtlsMode takes.
  std::vector<authz::PeerAuthentication> PeerAuthenticationList() const {
    std::vector<authz::PeerAuthentication> out;
    out.reserve(peer_authentications.size());
    for (const auto& [key, policy] : peer_authentications) out.push_back(policy);
    return out;
  }

  friend bool operator==(const SecurityConfig&, const SecurityConfig&) = default;
};

}  // namespace ambit::config
