#pragma once

// The text of one log line as log::Line writes it, for writers that batch lines themselves (the
// waypoint's access log). Apart from log.h so that the many files logging through log.h do not
// depend on it.

#include <cstdint>
#include <string>
#include <string_view>

#include "agent/common/log.h"

namespace ambit::log {

// "2026-01-02T03:04:05.678Z info <component>: <text>\n", the time now (UTC), newline included.
std::string FormatLine(std::string_view component, Level level, std::string_view text);

// Appends "2026-01-02T03:04:05.678Z" for `unix_millis` (UTC; the millisecond rounded toward the
// past), or "-" for a time gmtime cannot express. The text down to the second is formatted once
// per second and thread: lines written per request (the access logs) share it.
void AppendTimestamp(std::string* out, int64_t unix_millis);

}  // namespace ambit::log
