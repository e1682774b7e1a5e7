#include "agent/waypoint/access_log.h"

#include "absl/strings/str_cat.h"
#include "agent/common/log.h"

namespace ambit::waypoint {

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
      {"ext_authz", e.ext_authz},
      {"upstream", e.upstream},
  };
  std::string out;
  for (const auto& [k, v] : fields) {
    if (!out.empty()) out += ' ';
    absl::StrAppend(&out, k, "=", log::FieldValue(v));
  }
  return out;
}

}  // namespace ambit::waypoint
