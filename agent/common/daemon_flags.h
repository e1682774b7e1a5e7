#pragma once

// Command-line parsing shared by the daemons (ambitd, ambit-tunnel, ambit-waypoint, ambit-cni),
// on abseil flags with three things abseil does not do the way people expect of a node tool:
//  - flags are written with dashes (--config-dir) as the README writes them; abseil's names are
//    C identifiers (config_dir), so dashes in names are rewritten (both spellings are accepted);
//  - --help, -h, --helpshort and --helpfull print the flags with dashes, grouped by the file
//    that defines them, relative to the source tree (no build path), and exit 0 (abseil exits 1);
//  - --version prints "<program> <version>" (agent/common/version.h) and exits 0 (abseil prints
//    its build type, "Debug build (NDEBUG not #defined)").
// Everything else (unknown flags, bad values, --flagfile, --only-check-args) is abseil's.
// Call once, from main, before any other thread starts.

#include <iosfwd>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace ambit {

// Parses argv into the abseil flags; returns the positional arguments (argv[0] first), as
// absl::ParseCommandLine does. Exits for --help, --version and what abseil exits for.
std::vector<std::string> ParseDaemonFlags(int argc, char** argv, absl::string_view program,
                                          absl::string_view usage);

// What --help (full = false) or --helpfull prints: `usage`, then every flag defined in the
// program's own sources (full: every flag linked in, abseil's too), with dashes and defaults.
void PrintFlagsHelp(std::ostream& out, absl::string_view usage, bool full);

// A source file as help shows it: from its agent/, tests/ or absl/ directory on ("/build/x/agent/
// main/ambitd.cc" -> "agent/main/ambitd.cc"); the base name when none is in the path.
std::string SourceRelativePath(absl::string_view file);

}  // namespace ambit
