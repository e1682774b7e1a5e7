#include "agent/authn/model.h"

#include "absl/strings/str_cat.h"

namespace ambit::authn {

std::vector<TargetRefProblem> TargetRefProblems(const authz::TargetRef& ref) {
  std::vector<TargetRefProblem> out;
  if (ref.name.empty()) out.push_back({"name", "is required"});
  const bool gateway_api = ref.group == "gateway.networking.k8s.io";
  if (gateway_api && ref.kind == "Gateway") return out;
  if (gateway_api && ref.kind == "GatewayClass") {
    if (ref.name != authz::kWaypointGatewayClass) {
      out.push_back({"name", absl::StrCat("'", ref.name, "': only GatewayClass '",
                                          authz::kWaypointGatewayClass, "' can be targeted")});
    }
    return out;
  }
  if ((ref.group.empty() || ref.group == "core") && ref.kind == "Service") return out;
  if (ref.group == "networking.istio.io" && ref.kind == "ServiceEntry") return out;
  out.push_back({"", absl::StrCat("unsupported target '", ref.group, "/", ref.kind,
                                  "'; supported: gateway.networking.k8s.io Gateway and "
                                  "GatewayClass, core Service, networking.istio.io ServiceEntry")});
  return out;
}

}  // namespace ambit::authn
