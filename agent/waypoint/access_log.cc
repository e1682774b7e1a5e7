#include "agent/waypoint/access_log.h"

#include <cctype>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace ambit::waypoint {
namespace {

std::string TextValue(const std::string& v) {
  if (v.empty()) return "-";
  bool plain = true;
  for (char c : v) {
    if (!(isalnum(static_cast<unsigned char>(c)) || strchr("./:_@%[]-", c) != nullptr)) {
      plain = false;
      break;
    }
  }
  if (plain) return v;
  std::string out = "\"";
  for (char c : v) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') out += '\\';
    // A request line is attacker-controlled: keep the log one line of printable text.
    out += (u < 0x20 || u == 0x7f) ? '?' : c;
  }
  return out + "\"";
}

}  // namespace

std::string AccessLogLine(const RequestLogEntry& e) {
  const std::pair<const char*, std::string> fields[] = {
      {"start", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", e.start, absl::UTCTimeZone())},
      {"protocol", e.protocol},
      {"method", e.method},
      {"authority", e.authority},
      {"path", e.path},
      {"status", e.status == 0 ? std::string() : absl::StrCat(e.status)},
      {"flags", e.flags},
      {"details", e.details},
      {"duration", absl::StrCat(absl::ToInt64Milliseconds(e.duration), "ms")},
      {"bytes_received", absl::StrCat(e.bytes_received)},
      {"bytes_sent", absl::StrCat(e.bytes_sent)},
      {"src", e.source},
      {"src_identity", e.source_identity},
      {"jwt_principal", e.jwt_principal},
      {"policy", e.policy},
      {"upstream", e.upstream},
  };
  std::string out;
  for (const auto& [k, v] : fields) {
    if (!out.empty()) out += ' ';
    absl::StrAppend(&out, k, "=", TextValue(v));
  }
  return out;
}

}  // namespace ambit::waypoint
