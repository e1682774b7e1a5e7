#pragma once

// The Istio security resources (security.istio.io) in force, converted to authz model types.
// Carried in LoadResult beside state::ClusterState rather than inside it: dependencies point
// common <- {state, authz} <- config (docs/ARCHITECTURE.md#dependency-rule), so state cannot
// name authz types, while config may. Thread-compatible value type, like ClusterState.

#include <map>
#include <string>
#include <vector>

#include "agent/authn/model.h"
#include "agent/authz/compile.h"
#include "agent/authz/model.h"
#include "agent/authz/peer_authentication.h"

namespace ambit::config {

struct SecurityConfig {
  // PeerAuthentication by "namespace/name" (authz::PeerAuthentication::Key()).
  std::map<std::string, authz::PeerAuthentication> peer_authentications;
  // AuthorizationPolicy by "namespace/name" (authz::Policy::Key()). Every one here passed
  // validation (authz::Compile plus istiod's checks) and, for CUSTOM, names an ext_authz provider
  // of the mesh config in force.
  std::map<std::string, authz::Policy> authorization_policies;
  // RequestAuthentication by "namespace/name" (authn::RequestAuthentication::Key()), each
  // validated (inline jwks parsed) when loaded.
  std::map<std::string, authn::RequestAuthentication> request_authentications;

  // The PeerAuthentications as the list authz::ResolveMtlsMode takes.
  std::vector<authz::PeerAuthentication> PeerAuthenticationList() const {
    std::vector<authz::PeerAuthentication> out;
    out.reserve(peer_authentications.size());
    for (const auto& [key, policy] : peer_authentications) out.push_back(policy);
    return out;
  }

  // The RequestAuthentications as the list authn::Authenticator::Create takes.
  std::vector<authn::RequestAuthentication> RequestAuthenticationList() const {
    std::vector<authn::RequestAuthentication> out;
    out.reserve(request_authentications.size());
    for (const auto& [key, policy] : request_authentications) out.push_back(policy);
    return out;
  }

  // The AuthorizationPolicies compiled, in key order, as authz::Engine::Create takes them. They
  // were validated when loaded, so none fails; one that did would be left out.
  std::vector<authz::CompiledPolicy> CompiledAuthorizationPolicies() const;

  friend bool operator==(const SecurityConfig&, const SecurityConfig&) = default;
};

}  // namespace ambit::config
