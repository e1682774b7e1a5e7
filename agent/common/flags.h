#pragma once

#include <string>
#include <vector>

namespace ambit {

// absl flags must be C identifiers (--config_dir), while users type --config-dir as every other
// node tool spells it. Rewrites dashes in flag names (not values) to underscores, in place of
// argv for absl::ParseCommandLine. The returned storage must outlive the parse.
inline std::vector<char*> DashedFlagsToAbsl(int argc, char** argv,
                                            std::vector<std::string>& storage) {
  storage.assign(argv, argv + argc);
  for (size_t i = 1; i < storage.size(); ++i) {
    std::string& a = storage[i];
    if (a == "--") break;
    if (a.rfind("--", 0) != 0) continue;
    size_t end = a.find('=');
    if (end == std::string::npos) end = a.size();
    for (size_t j = 2; j < end; ++j) {
      if (a[j] == '-') a[j] = '_';
    }
  }
  std::vector<char*> out;
  for (auto& s : storage) out.push_back(s.data());
  return out;
}

}  // namespace ambit
