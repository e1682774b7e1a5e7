#pragma once

// How an authorization (and JWT authentication) decision is explained to people, shared by
// `ambitctl policy check` (offline) and ambitd's answer to `ambitctl check` (live), so both print
// the same thing.
// Pure functions, no I/O; thread-safe.

#include <string>

#include "agent/authn/authenticator.h"
#include "agent/authz/engine.h"
#include "agent/authz/peer_authentication.h"
#include "agent/authz/request.h"

namespace ambit::admin {

// The machine-readable part: what `-o json` prints.
struct DecisionSummary {
  std::string decision;               // allow, deny, ext_authz
  std::string provider;               // ext_authz only
  std::string after_ext_authz_allow;  // ext_authz only: the decision if the provider allows
  std::string policy;                 // "ns/name" that decided; "" for none
  std::string reason;
  std::string mtls_mode;  // STRICT, PERMISSIVE, DISABLE
  // A plaintext client of a STRICT port: refused before any policy, so decision is deny.
  bool refused_by_strict = false;
};

// Whether the request comes from a plaintext client (no principal) at L4 to a port whose mTLS
// mode is STRICT: the tunnel refuses it before authorization is evaluated.
bool RefusedByStrict(const authz::Request& request, const authz::PeerAuthnDecision& mtls);

// The decision as enforced: the policies' decision, or deny when STRICT refuses the client first.
DecisionSummary Summarize(const authz::Decision& d, const authz::PeerAuthnDecision& mtls,
                          const authz::Request& request);

// The decision and a trace of every policy that applies, several lines, for the table output.
std::string ExplainText(const authz::Engine& engine, const authz::Workload& target,
                        const authz::Request& request, const authz::Decision& d,
                        const authz::PeerAuthnDecision& mtls);

// What RequestAuthentication did to an L7 request: the policies that apply, each token found
// (location, rule, issuer, verdict) and the result, several lines.
std::string AuthnText(const authn::AuthnResult& r);

// The token check that decided `r`: the first that failed when rejected, else the first valid
// one; nullptr when no token was found.
const authn::TokenCheck* DecidingTokenCheck(const authn::AuthnResult& r);

}  // namespace ambit::admin
