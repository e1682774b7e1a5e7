#include "agent/waypoint/access_log.h"

#include <cstdint>
#include <string_view>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "agent/common/log.h"

namespace ambit::waypoint {
namespace {

std::string_view View(const absl::AlphaNum& n) { return {n.data(), n.size()}; }

// `2026-12-08T10:11:12.345Z`. The part down to the second is formatted once per second and
// thread: absl's general formatter (time zone lookup, format parsing) per line was a visible
// part of the waypoint's CPU per request.
void AppendStart(std::string* out, absl::Time t) {
  if (t == absl::InfinitePast() || t == absl::InfiniteFuture()) {
    out->append(absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone()));
    return;
  }
  thread_local int64_t cached_second = INT64_MIN;
  thread_local std::string cached;
  const int64_t ms = absl::ToUnixMillis(t);  // rounds toward the past, as %E3S does
  const int64_t second = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
  if (second != cached_second) {
    cached =
        absl::FormatTime("%Y-%m-%dT%H:%M:%S", absl::FromUnixSeconds(second), absl::UTCTimeZone());
    cached_second = second;
  }
  const int64_t frac = ms - second * 1000;
  out->append(cached);
  out->push_back('.');
  out->push_back(static_cast<char>('0' + frac / 100));
  out->push_back(static_cast<char>('0' + frac / 10 % 10));
  out->push_back(static_cast<char>('0' + frac % 10));
  out->push_back('Z');
}

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
  AppendStart(&out, e.start);
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
