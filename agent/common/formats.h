#pragma once

// One spelling, in the log and in every ambitctl output, for the values people compare across
// them (a serial in a log line against `ambitctl certs`, a time against `openssl x509 -dates`):
//  - timestamps: RFC 3339 in UTC with milliseconds, "2026-12-07T10:02:03.123Z" (the log line's
//    own stamp, agent/common/log_line.h);
//  - certificate serial numbers: hex as `openssl x509 -serial` prints them: uppercase, no
//    colons, whole bytes ("0A1B"), so BoringSSL's lowercase BN_bn2hex and OpenSSL's agree;
//  - distinguished names: OpenSSL's one-line form, "O = example, CN = root" (X509_NAME_print_ex
//    with XN_FLAG_ONELINE), what `openssl x509 -subject` prints; both TLS libraries have it.
// Pure functions: thread-safe.

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace ambit {

inline constexpr char kTimestampFormat[] = "%Y-%m-%dT%H:%M:%E3SZ";

// "" for an infinite time (never, or unknown).
inline std::string FormatTimestamp(absl::Time t) {
  if (t == absl::InfinitePast() || t == absl::InfiniteFuture()) return "";
  return absl::FormatTime(kTimestampFormat, t, absl::UTCTimeZone());
}

// Hex digits of a serial, in any case, with or without colons or spaces ("0a:1b", "A1B").
// Anything else is kept as it is (not a serial this function knows how to spell).
inline std::string FormatSerial(absl::string_view hex) {
  std::string out;
  for (char c : hex) {
    if (c == ':' || absl::ascii_isspace(static_cast<unsigned char>(c))) continue;
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return std::string(hex);
    out.push_back(absl::ascii_toupper(static_cast<unsigned char>(c)));
  }
  if (out.size() % 2 == 1) out.insert(out.begin(), '0');
  return out;
}

}  // namespace ambit
