// ambit-waypoint: the L7 waypoint (docs/ARCHITECTURE.md#processes). Started and supervised by
// ambitd on a node where a waypoint's pod is enrolled; the data-plane shell of ambit-tunnel with
// the HTTP engine on its pods' HBONE streams (agent/waypointd/l7_handler.h).
#include <memory>
#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "agent/common/status.h"
#include "agent/main/dataplane_main.h"
#include "agent/waypointd/l7_handler.h"

ABSL_FLAG(std::string, jwks_ca_file, "",
          "PEM roots jwksUri servers are checked against (default: the system's)");

int main(int argc, char** argv) {
  return ambit::DataPlaneMain(argc, argv, "ambit-waypoint", "ambit L7 waypoint; started by ambitd",
                              [](ambit::tunnel::TunnelOptions& options) -> absl::Status {
                                ambit::waypointd::WaypointOptions waypoint;
                                // The handler keeps per-worker state, indexed by the shell's worker
                                // index.
                                waypoint.workers = options.workers;
                                waypoint.jwks_ca_file = absl::GetFlag(FLAGS_jwks_ca_file);
                                AMBIT_ASSIGN_OR_RETURN(
                                    options.l7,
                                    ambit::waypointd::L7Handler::Create(std::move(waypoint)));
                                return absl::OkStatus();
                              });
}
