#include "agent/common/daemon_flags.h"

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <map>
#include <utility>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "agent/common/flags.h"
#include "agent/common/version.h"

namespace ambit {
namespace {

bool IsAbseilFile(absl::string_view file) {
  return SourceRelativePath(file).rfind("absl/", 0) == 0;
}

std::string Dashed(absl::string_view name) { return absl::StrReplaceAll(name, {{"_", "-"}}); }

}  // namespace

std::string SourceRelativePath(absl::string_view file) {
  for (absl::string_view root : {"agent/", "tests/", "bench/", "absl/"}) {
    if (absl::StartsWith(file, root)) return std::string(file);
    const size_t at = file.rfind(absl::StrCat("/", root));
    if (at != absl::string_view::npos) return std::string(file.substr(at + 1));
  }
  const size_t slash = file.rfind('/');
  return std::string(slash == absl::string_view::npos ? file : file.substr(slash + 1));
}

void PrintFlagsHelp(std::ostream& out, absl::string_view usage, bool full) {
  // Grouped by file, flags sorted within each, as abseil's own help is.
  std::map<std::string, std::map<std::string, const absl::CommandLineFlag*>> by_file;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (!full && IsAbseilFile(flag->Filename())) continue;
    by_file[SourceRelativePath(flag->Filename())][Dashed(name)] = flag;
  }
  out << usage << "\n";
  for (const auto& [file, flags] : by_file) {
    out << "\n  Flags from " << file << ":\n";
    for (const auto& [name, flag] : flags) {
      const bool quoted = flag->IsOfType<std::string>();
      out << "    --" << name << " (" << flag->Help() << "); default: " << (quoted ? "\"" : "")
          << flag->DefaultValue() << (quoted ? "\"" : "") << ";\n";
    }
  }
  out << "\n  Help and checks:\n"
         "    --help, -h, --helpshort: these flags; --helpfull: abseil's own as well\n"
         "    --version: the release; --only-check-args: check the flags given, then exit\n";
}

std::vector<std::string> ParseDaemonFlags(int argc, char** argv, absl::string_view program,
                                          absl::string_view usage) {
  const std::string usage_text = absl::StrCat(program, ": ", usage);
  absl::SetProgramUsageMessage(usage_text);
  absl::FlagsUsageConfig config;
  config.version_string = [program] { return absl::StrCat(program, " ", Version(), "\n"); };
  config.normalize_filename = [](absl::string_view file) { return SourceRelativePath(file); };
  absl::SetFlagsUsageConfig(std::move(config));

  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg == "--version") {
      std::cout << program << " " << Version() << "\n";
      std::exit(0);
    }
    if (arg == "--help" || arg == "-h" || arg == "--helpshort" || arg == "--helpfull") {
      PrintFlagsHelp(std::cout, usage_text, arg == "--helpfull");
      std::exit(0);
    }
  }
  std::vector<std::string> storage;
  std::vector<char*> args = DashedFlagsToAbsl(argc, argv, storage);
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  return std::vector<std::string>(positional.begin(), positional.end());
}

}  // namespace ambit
