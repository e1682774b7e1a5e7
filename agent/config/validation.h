#pragma once

// Kubernetes-style field validation used by the config parsers. Internal to agent/config.
// Each function returns OK or an InvalidArgument status whose message quotes the value and says
// what a valid one looks like. Thread-safe (pure functions).

#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace ambit::config::internal {

// Debian's abseil is built with its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0), so
// std::string_view must be converted before it meets absl::StrCat and friends.
inline absl::string_view ToAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

// A DNS-1123 label: at most 63 of [a-z0-9-], starting and ending with [a-z0-9].
absl::Status ValidateDns1123Label(std::string_view value);
// A DNS-1123 subdomain: at most 253 characters, DNS-1123 labels joined by '.'.
absl::Status ValidateDns1123Subdomain(std::string_view value);
// A label or annotation key: [prefix/]name, prefix a DNS-1123 subdomain, name at most 63 of
// [A-Za-z0-9-_.] starting and ending with an alphanumeric.
absl::Status ValidateQualifiedName(std::string_view value);
// A label value: empty, or at most 63 of [A-Za-z0-9-_.] starting and ending with an alphanumeric.
absl::Status ValidateLabelValue(std::string_view value);
// A named port (IANA_SVC_NAME): at most 15 of [a-z0-9-], at least one letter, no leading,
// trailing or doubled '-'.
absl::Status ValidatePortName(std::string_view value);
// A SPIFFE trust domain: at most 255 of [a-z0-9._-].
absl::Status ValidateTrustDomain(std::string_view value);
// The ambit.dev/netns annotation: /var/run/netns/NAME, /run/netns/NAME or /proc/PID/ns/net.
absl::Status ValidateNetnsPath(std::string_view value);

}  // namespace ambit::config::internal
