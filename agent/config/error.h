#pragma once

#include <string>

namespace ambit::config {

// One problem found in the configuration, precise enough for a user to find and fix it.
struct ConfigError {
  std::string file;      // "pods.yaml" (a name inside the config directory), or the directory
  std::string object;    // "Pod default/web"; empty when the problem is the file itself
  std::string field;     // "status.podIPs[1].ip"; empty when it concerns the whole object
  std::string message;   // "'x' is not an IPv4 or IPv6 address"
  bool warning = false;  // true: noted and ignored; the configuration still applies
  int line = 0;          // 1-based position in file, 0 when unknown
  int column = 0;

  // One line, e.g.
  // "pods.yaml:12: Pod default/web: field status.podIPs[1].ip: 'x' is not an IPv4 or IPv6 address"
  // or, for a warning, "pods.yaml:3: warning: Deployment default/api: kind ... is ignored".
  std::string ToString() const;

  friend bool operator==(const ConfigError&, const ConfigError&) = default;
};

}  // namespace ambit::config
