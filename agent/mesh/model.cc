#include "agent/mesh/model.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace ambit::mesh {

const MtlsDecision& MtlsPolicy::ForPort(uint16_t port) const {
  auto it = ports.find(port);
  return it == ports.end() ? workload : it->second;
}

std::string Workload::Key() const { return absl::StrCat(namespace_name, "/", name); }

std::string Service::Key() const { return absl::StrCat(namespace_name, "/", name); }

std::string Waypoint::Key() const { return absl::StrCat(namespace_name, "/", name); }

absl::string_view ProtocolName(Protocol protocol) {
  switch (protocol) {
    case Protocol::kTcp:
      return "TCP";
    case Protocol::kUdp:
      return "UDP";
    case Protocol::kSctp:
      return "SCTP";
  }
  return "UNKNOWN";
}

absl::string_view AppProtocolName(AppProtocol protocol) {
  switch (protocol) {
    case AppProtocol::kDetect:
      return "detect";
    case AppProtocol::kHttp:
      return "http";
    case AppProtocol::kOpaque:
      return "opaque";
  }
  return "unknown";
}

AppProtocol SelectAppProtocol(absl::string_view app_protocol, absl::string_view port_name) {
  std::string declared = absl::AsciiStrToLower(
      !app_protocol.empty() ? app_protocol : port_name.substr(0, port_name.find('-')));
  for (absl::string_view http : {"http", "http2", "grpc", "grpc-web", "h2c", "kubernetes.io/h2c"}) {
    if (declared == http) return AppProtocol::kHttp;
  }
  for (absl::string_view opaque : {"tcp", "tls", "https", "mongo", "mysql", "redis"}) {
    if (declared == opaque) return AppProtocol::kOpaque;
  }
  return AppProtocol::kDetect;
}

std::optional<Protocol> ParseProtocol(absl::string_view name) {
  for (Protocol p : {Protocol::kTcp, Protocol::kUdp, Protocol::kSctp}) {
    if (name == ProtocolName(p)) return p;
  }
  return std::nullopt;
}

std::string BypassRefusal(absl::string_view workload, absl::string_view waypoint, bool no_pod,
                          absl::string_view principal) {
  return absl::StrCat(
      "denied: ", workload, " uses waypoint ", waypoint, no_pod ? ", which has no pod yet" : "",
      "; only its identity may connect, not ",
      principal.empty() ? absl::string_view("a plaintext client") : principal,
      " (bypass refused; the pod annotation ambit.dev/allow-waypoint-bypass: \"true\" allows it)");
}

}  // namespace ambit::mesh
