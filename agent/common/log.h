#pragma once

// Leveled, per-component logging to stderr. abseil 20220623 (Debian 12) predates absl/log, and
// glog would bring its own flags and global state into both processes; this is the small subset
// ambit needs: a level per component, changeable at run time, one line per event.

#include <atomic>
#include <sstream>
#include <string>
#include <string_view>

namespace ambit::log {

enum class Level { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Sets the level for one component ("" = the default for components without their own).
// Thread-safe.
void SetLevel(std::string_view component, Level level);
bool Enabled(std::string_view component, Level level);

class Line {
 public:
  Line(std::string_view component, Level level) : component_(component), level_(level) {}
  ~Line();
  template <typename T>
  Line& operator<<(const T& v) {
    out_ << v;
    return *this;
  }

 private:
  std::string_view component_;
  Level level_;
  std::ostringstream out_;
};

bool ParseLevel(std::string_view text, Level* level);

// Every component a line is logged under, in ambitd and in both data-plane processes: what
// `ambitctl log --component` accepts. tests/build/log_components_test.py fails when the tree logs
// under a name that is not listed here.
inline constexpr std::string_view kComponents[] = {
    "access", "admin",      "agent",     "authz", "bpf",    "ca",       "config", "hbone",
    "kube",   "supervisor", "telemetry", "tls",   "tunnel", "waypoint", "zds"};
bool IsKnownComponent(std::string_view component);

// One value of a `key=value` log line (the access logs of ambit-tunnel and ambit-waypoint):
// "-" when empty; as is when it holds only [A-Za-z0-9./:_@%[]-]; otherwise in double quotes
// with `"` and `\` escaped, line breaks and tabs as spaces, any other control character as `?`.
// Values often come from peers (an HBONE authority, a request path): whatever they hold, the line
// stays one line of printable text that a parser can split.
std::string FieldValue(std::string_view value);
// The same, appended to `out` (no temporary: for lines built per request).
void AppendFieldValue(std::string* out, std::string_view value);

}  // namespace ambit::log

#define AMBIT_LOG(component, level)                                       \
  if (!::ambit::log::Enabled(component, ::ambit::log::Level::k##level)) { \
  } else                                                                  \
    ::ambit::log::Line(component, ::ambit::log::Level::k##level)
