#pragma once

// L7 AuthorizationPolicy as a request filter: evaluates the snapshot's engine for the waypoint's
// destination workload and answers 403 `RBAC: access denied` on deny, as Envoy's RBAC filter
// does. A CUSTOM policy that matches needs an external authorizer the waypoint does not have yet,
// so such a request is denied (fail closed) with the provider named in the log.
//
// Thread-safety: immutable after construction; OnRequest may run on any thread.

#include <memory>

#include "agent/authz/engine.h"
#include "agent/waypoint/filter.h"

namespace ambit::waypoint {

inline constexpr char kRbacDeniedBody[] = "RBAC: access denied";

class AuthzFilter final : public RequestFilter {
 public:
  AuthzFilter(std::shared_ptr<const authz::Engine> engine, authz::Workload target)
      : engine_(std::move(engine)), target_(std::move(target)) {}
  const char* name() const override { return "rbac"; }
  FilterResult OnRequest(RequestContext& ctx) override;

 private:
  std::shared_ptr<const authz::Engine> engine_;
  authz::Workload target_;
};

}  // namespace ambit::waypoint
