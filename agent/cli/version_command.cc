#include "agent/cli/commands.h"

#ifndef AMBIT_VERSION
#define AMBIT_VERSION "0.0.0-dev"
#endif

namespace ambit::cli {

absl::string_view Version() { return AMBIT_VERSION; }

Command VersionCommand() {
  return Command{
      .name = "version",
      .summary = "Print the ambitctl version",
      .description = "Prints the version of this ambitctl binary.",
      .examples = "ambitctl version -o json",
      .run = [](Context& ctx) -> absl::Status {
        ctx.Print(Value::Object({{"clientVersion", Version()}}));
        return absl::OkStatus();
      },
  };
}

}  // namespace ambit::cli
