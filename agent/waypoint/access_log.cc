#include "agent/waypoint/access_log.h"

#include <string_view>

#include "absl/strings/str_cat.h"
#include "agent/common/log.h"
#include "agent/common/log_line.h"

namespace ambit::waypoint {
namespace {

std::string_view View(const absl::AlphaNum& n) { return {n.data(), n.size()}; }

}  // namespace

std::string AccessLogLine(const RequestLogEntry& e) {
  std::string out;
  out.reserve(320 + e.authority.size() + e.path.size() + e.source_identity.size() +
              e.upstream.size());
  // Every value but the start time and the numbers comes from a peer or the configuration:
  // FieldValue's quoting keeps the line one line.
  auto field = [&out](std::string_view key, std::string_view value) {
    out.push_back(' ');
    out.append(key);
    out.push_back('=');
    log::AppendFieldValue(&out, value);
  };
  out.append("start=");
  // log's timestamp, second text cached per thread: absl's general formatter per line was a
  // visible part of the waypoint's CPU per request.
  log::AppendTimestamp(&out, absl::ToUnixMillis(e.start));
  field("protocol", e.protocol);
  field("method", e.method);
  field("authority", e.authority);
  field("path", e.path);
  field("status", e.status == 0 ? std::string_view() : View(absl::AlphaNum(e.status)));
  field("flags", e.flags);
  field("details", e.details);
  out.append(" duration=");
  out.append(View(absl::AlphaNum(absl::ToInt64Milliseconds(e.duration))));
  out.append("ms");
  field("bytes_received", View(absl::AlphaNum(e.bytes_received)));
  field("bytes_sent", View(absl::AlphaNum(e.bytes_sent)));
  field("src", e.source);
  field("src_identity", e.source_identity);
  field("jwt_principal", e.jwt_principal);
  field("policy", e.policy);
  field("ext_authz", e.ext_authz);
  field("upstream", e.upstream);
  return out;
}

}  // namespace ambit::waypoint
