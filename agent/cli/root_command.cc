#include "agent/cli/commands.h"

namespace ambit::cli {

Command RootCommand() {
  return Command{
      .name = kProgramName,
      .summary = "Inspect and drive the ambit node agent.",
      .description =
          "ambitctl inspects and drives ambitd, the ambit node agent, over its admin API\n"
          "(a unix socket, see --admin-socket), and offers offline helpers such as SPIFFE ID\n"
          "parsing and authorization policy checks.",
      .examples =
          "ambitctl id parse spiffe://cluster.local/ns/default/sa/web -o json\n"
          "ambitctl policy check --config ./config --request req.yaml\n"
          "ambitctl version",
      .subcommands = {BpfCommand(), CertsCommand(), CheckLiveCommand(), ConfigDumpCommand(),
                      ConnectionsCommand(), DataPlaneCommand(), IdCommand(), LogCommand(),
                      PoliciesCommand(), PolicyCommand(), ServicesCommand(), StatusCommand(),
                      VersionCommand(), WorkloadsCommand(), CompletionCommand(),
                      StrictReadinessCommand(), VerifyCommand()},
  };
}

}  // namespace ambit::cli
