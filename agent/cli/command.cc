#include "agent/cli/command.h"

#include <algorithm>
#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "agent/common/instance_paths.h"

namespace ambit::cli {
namespace {

constexpr char kHelpCommand[] = "help";

struct Parsed {
  std::vector<const Command*> path;
  std::vector<std::string> positionals;
  std::map<std::string, std::string> flags;                // by long name; "" for a switch
  std::map<std::string, std::vector<std::string>> values;  // every value of each flag
  bool help = false;
  std::string usage_error;  // non-empty: exit 2 with usage
};

std::string CommandPath(const std::vector<const Command*>& path) {
  std::vector<absl::string_view> names;
  for (const Command* c : path) names.push_back(c->name);
  return absl::StrJoin(names, " ");
}

// The flags a command at the end of `path` accepts: the global ones, then its own and inherited.
std::vector<const FlagSpec*> AcceptedFlags(const std::vector<const Command*>& path) {
  std::vector<const FlagSpec*> flags;
  for (const FlagSpec& f : GlobalFlags()) flags.push_back(&f);
  for (const Command* c : path) {
    for (const FlagSpec& f : c->flags) flags.push_back(&f);
  }
  return flags;
}

const FlagSpec* FindFlag(const std::vector<const Command*>& path, absl::string_view long_name,
                         char short_name) {
  if (long_name.empty() && short_name == '\0') return nullptr;  // "--=x"
  for (const FlagSpec* f : AcceptedFlags(path)) {
    if (!long_name.empty() ? f->name == long_name : f->short_name == short_name) return f;
  }
  return nullptr;
}

const Command* FindSubcommand(const Command& parent, absl::string_view name) {
  for (const Command& c : parent.subcommands) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

std::string FlagLabel(const FlagSpec& f) {
  std::string label = f.short_name != '\0' ? absl::StrCat("-", std::string(1, f.short_name), ", ")
                                           : std::string("    ");
  absl::StrAppend(&label, "--", f.name);
  if (!f.value_name.empty()) absl::StrAppend(&label, " ", f.value_name);
  return label;
}

// Two aligned columns, indented by two spaces.
std::string Columns(const std::vector<std::pair<std::string, std::string>>& rows) {
  size_t width = 0;
  for (const auto& row : rows) width = std::max(width, row.first.size());
  std::string out;
  for (const auto& [left, right] : rows) {
    absl::StrAppend(&out, "  ", left, std::string(width - left.size() + 3, ' '), right, "\n");
  }
  return out;
}

// Consumes args[i] (and the value after it, if it takes one) as a flag.
void ParseFlag(const std::vector<std::string>& args, size_t& i, Parsed& p) {
  const std::string& arg = args[i];
  std::string long_name;
  char short_name = '\0';
  std::optional<std::string> inline_value;
  if (absl::StartsWith(arg, "--")) {
    size_t eq = arg.find('=');
    long_name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    if (eq != std::string::npos) inline_value = arg.substr(eq + 1);
  } else {
    short_name = arg[1];
    if (arg.size() > 2) inline_value = arg.substr(arg[2] == '=' ? 3 : 2);  // -ojson, -o=json
  }
  const FlagSpec* spec = FindFlag(p.path, long_name, short_name);
  if (spec == nullptr) {
    p.usage_error = absl::StrCat("unknown flag '", arg, "'");
    return;
  }
  if (spec->value_name.empty()) {
    if (inline_value.has_value()) {
      p.usage_error = absl::StrCat("flag --", spec->name, " takes no value");
      return;
    }
    p.flags[spec->name] = "";
    return;
  }
  if (!inline_value.has_value()) {
    if (i + 1 >= args.size()) {
      p.usage_error =
          absl::StrCat("flag --", spec->name, " needs a value (", spec->value_name, ")");
      return;
    }
    inline_value = args[++i];
  }
  p.flags[spec->name] = *inline_value;
  p.values[spec->name].push_back(*inline_value);
}

Parsed Parse(const Command& root, const std::vector<std::string>& args) {
  Parsed p;
  p.path.push_back(&root);
  bool flags_done = false;
  for (size_t i = 0; i < args.size() && p.usage_error.empty(); ++i) {
    const std::string& arg = args[i];
    if (!flags_done && arg == "--") {
      flags_done = true;
      continue;
    }
    if (!flags_done && arg.size() > 1 && arg[0] == '-') {
      ParseFlag(args, i, p);
      continue;
    }
    const Command& current = *p.path.back();
    if (!current.subcommands.empty() && p.positionals.empty()) {
      // `ambitctl help id parse` is `ambitctl id parse --help`.
      if (p.path.size() == 1 && !p.help && arg == kHelpCommand &&
          FindSubcommand(root, kHelpCommand) == nullptr) {
        p.help = true;
        continue;
      }
      const Command* sub = FindSubcommand(current, arg);
      if (sub == nullptr) {
        p.usage_error = absl::StrCat("unknown command '", arg, "'");
        break;
      }
      p.path.push_back(sub);
      continue;
    }
    p.positionals.push_back(arg);
  }
  if (!p.usage_error.empty()) return p;
  if (p.flags.count("help") > 0) p.help = true;
  if (auto it = p.flags.find("output"); it != p.flags.end()) {
    auto format = ParseOutputFormat(it->second);
    if (!format.ok()) p.usage_error = absl::StrCat("-o/--output: ", format.status().message());
  }
  if (auto it = p.flags.find("admin-socket"); it != p.flags.end() && it->second.empty()) {
    p.usage_error = "--admin-socket needs a non-empty path";
  }
  if (p.flags.count("admin-socket") > 0 && p.flags.count("instance") > 0) {
    p.usage_error = "--admin-socket and --instance both name the agent to ask; give one";
  }
  if (auto it = p.flags.find("instance"); it != p.flags.end() && !ValidInstanceName(it->second)) {
    p.usage_error = absl::StrCat("--instance '", it->second,
                                 "' is not an instance name (1-64 of A-Z a-z 0-9 . _ -, not "
                                 "starting with '.')");
  }
  return p;
}

}  // namespace

const std::vector<FlagSpec>& GlobalFlags() {
  static const auto* const kFlags = new std::vector<FlagSpec>{
      {"output", 'o', "FORMAT",
       "output format: table, wide (a table with more columns), json or yaml (default table)"},
      {"instance", '\0', "NAME",
       absl::StrCat(
           "the agent instance to ask on this node (ambitd --instance NAME): its socket is ",
           AdminSocketIn(InstanceRunDir("NAME")), ", ",
           AdminSocketIn(InstanceRunDir(kDefaultInstance)), " for ", kDefaultInstance,
           ", the default (env ", kInstanceEnv, ")")},
      {"admin-socket", '\0', "PATH",
       absl::StrCat("ambitd's admin API socket, for an agent started with --run-dir or "
                    "--admin-socket (env ",
                    kAdminSocketEnv, "; default: the instance's)")},
      {"help", 'h', "", "show help for the command"},
  };
  return *kFlags;
}

std::optional<std::string> Context::flag(absl::string_view name) const {
  auto it = flags_.find(std::string(name));
  if (it == flags_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> Context::flag_values(absl::string_view name) const {
  auto it = values_.find(std::string(name));
  return it == values_.end() ? std::vector<std::string>() : it->second;
}

void Context::Print(const Value& value) { out_ << Render(value, options_.output_format); }

std::optional<std::string> ProcessEnv(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

absl::StatusOr<std::string> ResolveAdminSocket(
    const std::optional<std::string>& admin_socket_flag,
    const std::optional<std::string>& instance_flag,
    const std::function<std::optional<std::string>(const char*)>& getenv) {
  if (admin_socket_flag.has_value()) return *admin_socket_flag;
  if (instance_flag.has_value()) return AdminSocketIn(InstanceRunDir(*instance_flag));
  if (auto socket = getenv(kAdminSocketEnv)) return *socket;
  if (auto instance = getenv(kInstanceEnv)) {
    if (!ValidInstanceName(*instance)) {
      return absl::InvalidArgumentError(absl::StrCat(
          kInstanceEnv, "='", *instance,
          "' is not an instance name (1-64 of A-Z a-z 0-9 . _ -, not starting with '.')"));
    }
    return AdminSocketIn(InstanceRunDir(*instance));
  }
  return AdminSocketIn(InstanceRunDir(kDefaultInstance));
}

std::string HelpText(const std::vector<const Command*>& path) {
  const Command& cmd = *path.back();
  const std::string cmd_path = CommandPath(path);
  std::string text = absl::StrCat(cmd.description.empty() ? cmd.summary : cmd.description, "\n");

  absl::StrAppend(&text, "\nUsage:\n  ", cmd_path);
  if (!cmd.subcommands.empty()) {
    absl::StrAppend(&text, " <command>");
  } else if (!cmd.args_usage.empty()) {
    absl::StrAppend(&text, " ", cmd.args_usage);
  }
  absl::StrAppend(&text, " [flags]\n");

  if (!cmd.subcommands.empty()) {
    std::vector<std::pair<std::string, std::string>> rows;
    for (const Command& sub : cmd.subcommands) rows.emplace_back(sub.name, sub.summary);
    if (path.size() == 1 && FindSubcommand(cmd, kHelpCommand) == nullptr) {
      rows.emplace_back(kHelpCommand, "Show help for a command: help <command> [subcommand]");
    }
    absl::StrAppend(&text, "\nCommands:\n", Columns(rows));
  }
  if (!cmd.examples.empty()) {
    absl::StrAppend(&text, "\nExamples:\n");
    for (absl::string_view line : absl::StrSplit(cmd.examples, '\n', absl::SkipEmpty())) {
      absl::StrAppend(&text, "  ", line, "\n");
    }
  }
  std::vector<std::pair<std::string, std::string>> local;
  for (auto it = path.rbegin(); it != path.rend(); ++it) {  // own flags first, then inherited
    for (const FlagSpec& f : (*it)->flags) local.emplace_back(FlagLabel(f), f.help);
  }
  if (!local.empty()) absl::StrAppend(&text, "\nFlags:\n", Columns(local));
  std::vector<std::pair<std::string, std::string>> global;
  for (const FlagSpec& f : GlobalFlags()) global.emplace_back(FlagLabel(f), f.help);
  absl::StrAppend(&text, "\nGlobal flags:\n", Columns(global));
  if (!cmd.subcommands.empty()) {
    absl::StrAppend(&text, "\nRun '", cmd_path, " <command> --help' for more about a command.\n");
  }
  return text;
}

int RunCli(const Command& root, const std::vector<std::string>& args, std::ostream& out,
           std::ostream& err) {
  Parsed p = Parse(root, args);
  const std::string cmd_path = CommandPath(p.path);
  if (!p.usage_error.empty()) {
    err << cmd_path << ": " << p.usage_error << "\n\n" << HelpText(p.path);
    return kExitUsage;
  }
  if (p.help) {
    out << HelpText(p.path);
    return kExitOk;
  }
  const Command& cmd = *p.path.back();
  if (!cmd.subcommands.empty() || !cmd.run) {
    err << cmd_path << ": missing command\n\n" << HelpText(p.path);
    return kExitUsage;
  }
  if (p.positionals.size() < cmd.min_args) {
    err << cmd_path << ": missing argument"
        << (cmd.args_usage.empty() ? ""
                                   : absl::StrCat(" (usage: ", cmd_path, " ", cmd.args_usage, ")"))
        << "\n\n"
        << HelpText(p.path);
    return kExitUsage;
  }
  if (p.positionals.size() > cmd.max_args) {
    err << cmd_path << ": unexpected argument '" << p.positionals[cmd.max_args] << "'\n\n"
        << HelpText(p.path);
    return kExitUsage;
  }

  Context::Options options;
  if (auto it = p.flags.find("output"); it != p.flags.end()) {
    options.output_format = *ParseOutputFormat(it->second);  // validated by Parse
  }
  auto flag = [&p](const char* name) -> std::optional<std::string> {
    auto it = p.flags.find(name);
    return it == p.flags.end() ? std::nullopt : std::make_optional(it->second);
  };
  auto socket = ResolveAdminSocket(flag("admin-socket"), flag("instance"), ProcessEnv);
  if (!socket.ok()) {
    err << cmd_path << ": " << socket.status().message() << "\n";
    return kExitUsage;
  }
  options.admin_socket = *std::move(socket);
  Context ctx(std::move(p.positionals), std::move(options), std::move(p.flags), out, err);
  ctx.set_flag_values(std::move(p.values));
  absl::Status status = cmd.run(ctx);
  out.flush();
  if (!status.ok()) {
    err << cmd_path << ": " << status.message() << "\n";
    return kExitFailure;
  }
  return ctx.exit_code();
}

}  // namespace ambit::cli
