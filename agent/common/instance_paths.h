#pragma once

// Where an agent instance keeps its sockets. ambitd creates them here and ambitctl finds them here
// (`ambitctl --instance NAME`), so the rule is written once, in this header.
// Pure functions: thread-safe.

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace ambit {

inline constexpr char kDefaultInstance[] = "default";

// An instance name is a file name under /run/ambit, /run/lock/ambit and bpffs: 1-64 of
// A-Z a-z 0-9 . _ -, not starting with '.'.
inline bool ValidInstanceName(absl::string_view name) {
  if (name.empty() || name.size() > 64 || name[0] == '.') return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
      return false;
    }
  }
  return true;
}

// The run directory of an instance when ambitd is not given --run-dir: /run/ambit for the
// default instance (where a single agent per node has always lived), /run/ambit/NAME otherwise.
inline std::string InstanceRunDir(absl::string_view instance) {
  return instance == kDefaultInstance ? std::string("/run/ambit")
                                      : absl::StrCat("/run/ambit/", instance);
}

// The admin API socket in a run directory (ambitd's --admin-socket overrides it).
inline std::string AdminSocketIn(absl::string_view run_dir) {
  return absl::StrCat(run_dir, "/admin.sock");
}

}  // namespace ambit
