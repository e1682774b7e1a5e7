// ambitctl: the operator CLI (docs/ARCHITECTURE.md#processes); its command tree is in commands.h.
#include <iostream>
#include <string>
#include <vector>

#include "agent/cli/command.h"
#include "agent/cli/commands.h"

int main(int argc, char** argv) {
  // Our own parser, not absl flags: see agent/cli/command.h for why.
  std::vector<std::string> args(argv + 1, argv + argc);
  return ambit::cli::RunCli(ambit::cli::RootCommand(), args, std::cout, std::cerr);
}
