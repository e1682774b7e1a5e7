#pragma once

// The hook for CUSTOM policies. The engine never calls out: when a CUSTOM policy matches it returns
// a Decision with reason kExtAuthzRequired, the provider name and the verdict that applies if the
// provider allows (`ext_authz->if_allowed`). The enforcement point asks the provider (Envoy
// ext_authz over HTTP or gRPC, a later issue) and folds the answer in with ResolveExtAuthz.

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/authz/engine.h"
#include "agent/authz/request.h"

namespace ambit::authz {

// One external authorizer, as named by MeshConfig extensionProviders. Implementations may block;
// call them off the data-plane hot path or make them asynchronous behind this interface.
class ExtAuthzClient {
 public:
  virtual ~ExtAuthzClient() = default;
  // true: the provider allows; false: it denies; an error: it could not be asked.
  virtual absl::StatusOr<bool> Check(absl::string_view provider, const Request& request) = 0;
};

// Folds a provider's answer into a pending decision. A decision that does not need ext_authz is
// returned unchanged. Fails closed: a provider error denies (Istio's default failOpen: false).
Decision ResolveExtAuthz(Decision pending, const absl::StatusOr<bool>& provider_allowed);

// Evaluate, then ask `client` when a CUSTOM policy matched.
Decision EvaluateWithExtAuthz(const Engine& engine, const Workload& target, const Request& request,
                              ExtAuthzClient& client);

}  // namespace ambit::authz
