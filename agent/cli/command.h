#pragma once

// ambitctl's command tree: `ambitctl <command> [subcommand] [args] [flags]`.
//
// A Command is plain data (name, help texts, argument count, its own flags, subcommands, and a
// handler for leaves); RunCli resolves argv against the tree, handles --help at every level, and
// maps results to exit codes: 0 success, 1 the command failed (message on stderr), 2 usage error
// (message and usage on stderr).
//
// Why not absl flags: they are process-global and registered at static-initialisation time, so
// every subcommand's flags would be accepted (and listed in --help) by every other subcommand,
// and positional arguments could not name a path in a tree. A small tree-aware parser gives each
// command its own flags and help. Flags are spelled with dashes (--admin-socket), like the
// daemons' flags after DashedFlagsToAbsl, and may appear anywhere after the command they belong to.
//
// Thread-compatible; RunCli is meant to be called once from main.

#include <cstddef>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/cli/output.h"

namespace ambit::cli {

inline constexpr char kProgramName[] = "ambitctl";
// Which agent ambitctl asks, when neither --instance nor --admin-socket says: the environment's
// AMBIT_ADMIN_SOCKET, then AMBIT_INSTANCE, then the default instance's socket. A flag beats the
// environment; a socket beats an instance.
inline constexpr char kInstanceEnv[] = "AMBIT_INSTANCE";
inline constexpr char kAdminSocketEnv[] = "AMBIT_ADMIN_SOCKET";

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

inline constexpr size_t kUnlimitedArgs = std::numeric_limits<size_t>::max();

struct FlagSpec {
  std::string name = {};        // long form without dashes: "admin-socket"
  char short_name = '\0';       // 'o' for -o; '\0' for none
  std::string value_name = {};  // "PATH"; empty for a switch that takes no value
  std::string help = {};        // one line; mention the default if there is one
};

// Everything a handler may use: its arguments, the parsed flags, and where to print.
class Context {
 public:
  struct Options {
    OutputFormat output_format = OutputFormat::kTable;
    std::string admin_socket;  // resolved by RunCli: flags, environment, default instance
  };

  Context(std::vector<std::string> args, Options options, std::map<std::string, std::string> flags,
          std::ostream& out, std::ostream& err)
      : args_(std::move(args)),
        options_(std::move(options)),
        flags_(std::move(flags)),
        out_(out),
        err_(err) {}

  // Positional arguments after the command path; their count is within the command's bounds.
  const std::vector<std::string>& args() const { return args_; }
  // kTable for -o wide too (a wide table is a table); wide() says whether more columns were asked.
  OutputFormat output_format() const {
    return options_.output_format == OutputFormat::kWide ? OutputFormat::kTable
                                                         : options_.output_format;
  }
  bool wide() const { return options_.output_format == OutputFormat::kWide; }
  // ambitd's admin API socket, for commands that talk to the agent.
  const std::string& admin_socket() const { return options_.admin_socket; }
  // A flag declared by the command or one of its parents, by long name: its value, "" for a
  // switch that was given, nullopt if absent.
  std::optional<std::string> flag(absl::string_view name) const;
  // Every value a flag that takes one was given, in order (flag() is the last): for a flag that
  // may be repeated, such as --header.
  std::vector<std::string> flag_values(absl::string_view name) const;
  void set_flag_values(std::map<std::string, std::vector<std::string>> values) {
    values_ = std::move(values);
  }

  std::ostream& out() { return out_; }
  std::ostream& err() { return err_; }
  // Renders `value` to out() in the format chosen with -o.
  void Print(const Value& value);

  // For a command that ran fine but has a negative answer (an invalid ID): the process exits with
  // this code after the handler returns OK. A handler that fails returns a Status instead.
  void set_exit_code(int code) { exit_code_ = code; }
  int exit_code() const { return exit_code_; }

 private:
  std::vector<std::string> args_;
  Options options_;
  std::map<std::string, std::string> flags_;
  std::map<std::string, std::vector<std::string>> values_;
  std::ostream& out_;
  std::ostream& err_;
  int exit_code_ = kExitOk;
};

// Non-OK: the message goes to stderr as "ambitctl <path>: <message>", the exit code is 1.
using Handler = std::function<absl::Status(Context&)>;

struct Command {
  // Every member has a default so designated initializers may name only what they need.
  std::string name = {};
  std::string summary = {};      // one line, shown in the parent's command list
  std::string description = {};  // --help text; `summary` when empty
  std::string args_usage = {};   // e.g. "ID"; shown after the command path in the usage line
  std::string examples = {};     // lines shown under "Examples:" in --help
  size_t min_args = 0;
  size_t max_args = 0;
  std::vector<FlagSpec> flags = {};  // this command's own; inherited by its subcommands
  // A command has either subcommands (a group) or a handler (a leaf).
  std::vector<Command> subcommands = {};
  Handler run = {};
};

// Flags every command accepts: -o/--output, --instance, --admin-socket, -h/--help.
const std::vector<FlagSpec>& GlobalFlags();

// The admin socket ambitctl asks: --admin-socket, else --instance's (the rule ambitd creates it
// by, agent/common/instance_paths.h), else AMBIT_ADMIN_SOCKET, else AMBIT_INSTANCE's, else the
// default instance's. `getenv` is the environment (injectable for tests). InvalidArgument for an
// invalid instance name or both flags at once.
absl::StatusOr<std::string> ResolveAdminSocket(
    const std::optional<std::string>& admin_socket_flag,
    const std::optional<std::string>& instance_flag,
    const std::function<std::optional<std::string>(const char*)>& getenv);

// The environment as ResolveAdminSocket reads it; an empty variable counts as unset.
std::optional<std::string> ProcessEnv(const char* name);

// The --help text of the command reached by `path` (root first).
std::string HelpText(const std::vector<const Command*>& path);

// Runs the command `args` (without argv[0]) names in the tree under `root`; returns the exit code.
int RunCli(const Command& root, const std::vector<std::string>& args, std::ostream& out,
           std::ostream& err);

}  // namespace ambit::cli
