#include "agent/cli/admin_client.h"
#include "agent/cli/commands.h"
#include "agent/common/version.h"

namespace ambit::cli {

absl::string_view Version() { return ambit::Version(); }

namespace {

// The agent's release from its status; the reason instead when it cannot be asked, so the
// client's version is printed whatever the agent's state (as kubectl version does).
absl::StatusOr<std::string> AgentVersion(const std::string& admin_socket) {
  auto stub = ConnectAdmin(admin_socket);
  if (!stub.ok()) return stub.status();
  grpc::ClientContext call;
  call.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  ambit::admin::v1::GetStatusResponse resp;
  grpc::Status status = (*stub)->GetStatus(&call, {}, &resp);
  if (!status.ok()) return AdminCallError(admin_socket, status);
  if (resp.agent_version().empty()) {
    return absl::UnimplementedError("this ambitd does not report its version (an older release)");
  }
  return resp.agent_version();
}

absl::Status RunVersion(Context& ctx) {
  const bool client_only = ctx.flag("client").has_value();
  Value v = Value::Object({{"clientVersion", Version()}});
  absl::Status agent_status = absl::OkStatus();
  if (!client_only) {
    auto agent = AgentVersion(ctx.admin_socket());
    v.Set("agentVersion", agent.ok() ? Value(*agent) : Value());
    v.Set("agentSocket", ctx.admin_socket());
    if (!agent.ok()) {
      agent_status = agent.status();
      // For tools; people read it on stderr, where every failure goes.
      if (ctx.output_format() != OutputFormat::kTable) {
        v.Set("agentError", std::string(agent.status().message()));
      }
    }
  }
  ctx.Print(v);
  // The client's version is printed either way; not reaching the agent is still a failure.
  return agent_status;
}

}  // namespace

Command VersionCommand() {
  return Command{
      .name = "version",
      .summary = "Print the ambitctl and ambitd versions",
      .description =
          "Prints the version of this ambitctl binary and of the agent it asks (see --instance).\n"
          "With --client, only ambitctl's (no agent needed). Exits 1 when the agent cannot be\n"
          "asked, after printing the client's version.",
      .examples =
          "ambitctl version\nambitctl version --client -o json\n"
          "ambitctl version --instance blue",
      .flags = {{"client", '\0', "", "only the client's version; do not ask the agent"}},
      .run = RunVersion,
  };
}

}  // namespace ambit::cli
