#pragma once

// ambitctl's commands. Each top-level command is built by one function in its own file
// (<name>_command.cc) and listed once in RootCommand (root_command.cc).

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/admin/explain.h"
#include "agent/cli/command.h"
#include "agent/cli/output.h"
#include "ambit/admin/v1/admin.pb.h"

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
// `ambitctl completion bash|zsh|fish` (completion_command.cc).
Command CompletionCommand();
// The completion script for `shell` (bash, zsh or fish) of the tree under `root`.
absl::StatusOr<std::string> CompletionScript(const Command& root, absl::string_view shell);
// Commands that ask the running agent (agent_commands.cc).
Command WorkloadsCommand();
Command ConnectionsCommand();
Command DataPlaneCommand();
Command PoliciesCommand();
Command CheckLiveCommand();
Command BpfCommand();
Command ServicesCommand();
Command StatusCommand();
Command LogCommand();
Command ConfigDumpCommand();
// Previews of a change (plan_commands.cc).
Command StrictReadinessCommand();
// `ambitctl policy diff`, a subcommand of `policy`.
Command PolicyDiffCommand();
// `ambitctl verify mtls` (verify_command.cc).
Command VerifyCommand();

// What `certs -o json` prints: {ca, certificates, trustBundle}.
Value CertificatesValue(const ambit::admin::v1::ListCertificatesResponse& resp);

// What `policy check -o json` and `check -o json` print for a decision.
Value DecisionSummaryValue(const admin::DecisionSummary& summary);

// The --now flag (UNIX seconds) of `policy check` and `check`: the time JWT exp/nbf are checked
// against; absl::Now() when absent.
absl::StatusOr<absl::Time> NowFlag(Context& ctx);

// What `ambitctl id parse` prints for `text`, and whether it is valid.
Value DescribeSpiffeId(absl::string_view text, bool* valid);

// The ambitctl release (agent/common/version.h).
absl::string_view Version();

}  // namespace ambit::cli
