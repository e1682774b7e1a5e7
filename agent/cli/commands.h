#pragma once

// ambitctl's commands. Each top-level command is built by one function in its own file
// (<name>_command.cc) and listed once in RootCommand (root_command.cc).

#include "absl/strings/string_view.h"
#include "agent/cli/command.h"
#include "agent/cli/output.h"

namespace ambit::cli {

// The whole tree, as main runs it.
Command RootCommand();

// `ambitctl id ...`: SPIFFE IDs.
Command IdCommand();
// `ambitctl certs`: workload certificates and the trust bundle.
Command CertsCommand();
// `ambitctl policy check`: the offline authorization checker.
Command PolicyCommand();
// `ambitctl version`.
Command VersionCommand();

// What `ambitctl id parse` prints for `text`, and whether it is valid.
Value DescribeSpiffeId(absl::string_view text, bool* valid);

// The ambitctl release, set at build time (-DAMBIT_VERSION=...).
absl::string_view Version();

}  // namespace ambit::cli
