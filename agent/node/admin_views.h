#pragma once

// The admin API's request handlers that need the agent's state (admin_views.cc; `check` in
// live_check.h), as Agent installs them into admin::AdminState; declared here so they can also be
// driven without an agent (tests/fuzz/admin_api).

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/admin/admin_server.h"
#include "agent/authz/engine.h"
#include "agent/authz/peer_authentication.h"
#include "agent/node/live_check.h"  // NewCheckEvaluator
#include "agent/state/model.h"

namespace ambit::node {

// Reads and changes ambitd's log levels; a change is passed on to the data plane serving
// `control_socket`. `reapply` passes every level changed at run time again (to a data plane that
// started after the change). Both thread-safe.
struct LogLevelHandlers {
  admin::LogLevelHandler handle;
  // Passes the levels changed at run time to the data plane serving this control socket.
  std::function<void(const std::string& control_socket)> reapply;
};
// The first socket is the tunnel's; the others (the waypoint process's) get a level while their
// socket exists.
LogLevelHandlers NewLogLevelHandlers(std::vector<std::string> control_sockets);

// Appends the roots (PEM) to `certificates`' trust bundle as `ambitctl certs` shows them; one that
// does not parse is left out. Shared by the node agent and `ambitd --ca-only`.
void AddTrustBundle(const std::vector<std::string>& roots,
                    ambit::admin::v1::ListCertificatesResponse* certificates);

}  // namespace ambit::node
