#include "agent/config/validation.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace ambit::config::internal {
namespace {

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

bool IsDns1123LabelText(std::string_view v) {
  if (v.empty() || v.size() > 63) return false;
  if (!IsLowerAlnum(v.front()) || !IsLowerAlnum(v.back())) return false;
  for (char c : v) {
    if (!IsLowerAlnum(c) && c != '-') return false;
  }
  return true;
}

bool IsSubdomainText(std::string_view v) {
  if (v.empty() || v.size() > 253) return false;
  size_t start = 0;
  while (true) {
    size_t dot = v.find('.', start);
    if (!IsDns1123LabelText(v.substr(start, dot == std::string_view::npos ? dot : dot - start))) {
      return false;
    }
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

// The name part of a qualified name, and (non-empty) label values.
bool IsQualifiedNamePart(std::string_view v) {
  if (v.empty() || v.size() > 63) return false;
  if (!absl::ascii_isalnum(v.front()) || !absl::ascii_isalnum(v.back())) return false;
  for (char c : v) {
    if (!absl::ascii_isalnum(c) && c != '-' && c != '_' && c != '.') return false;
  }
  return true;
}

absl::Status Invalid(std::string_view value, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("'", ToAbsl(value), "' is not ", ToAbsl(what)));
}

}  // namespace

absl::Status ValidateDns1123Label(std::string_view value) {
  if (IsDns1123LabelText(value)) return absl::OkStatus();
  return Invalid(value,
                 "a valid DNS-1123 label (at most 63 lower-case letters, digits or '-', starting "
                 "and ending with a letter or digit)");
}

absl::Status ValidateDns1123Subdomain(std::string_view value) {
  if (IsSubdomainText(value)) return absl::OkStatus();
  return Invalid(value,
                 "a valid DNS-1123 subdomain (at most 253 lower-case letters, digits, '-' or '.', "
                 "each dot-separated part starting and ending with a letter or digit)");
}

absl::Status ValidateQualifiedName(std::string_view value) {
  std::string_view name = value;
  size_t slash = value.find('/');
  if (slash != std::string_view::npos) {
    std::string_view prefix = value.substr(0, slash);
    name = value.substr(slash + 1);
    if (!IsSubdomainText(prefix)) {
      return Invalid(value, "a valid key: the part before '/' must be a DNS-1123 subdomain");
    }
  }
  if (!IsQualifiedNamePart(name)) {
    return Invalid(value,
                   "a valid key: the name must be at most 63 letters, digits, '-', '_' or '.', "
                   "starting and ending with a letter or digit");
  }
  return absl::OkStatus();
}

absl::Status ValidateLabelValue(std::string_view value) {
  if (value.empty() || IsQualifiedNamePart(value)) return absl::OkStatus();
  return Invalid(value,
                 "a valid label value (at most 63 letters, digits, '-', '_' or '.', starting and "
                 "ending with a letter or digit)");
}

absl::Status ValidatePortName(std::string_view value) {
  bool ok = !value.empty() && value.size() <= 15 && value.front() != '-' && value.back() != '-' &&
            value.find("--") == std::string_view::npos;
  bool has_letter = false;
  for (char c : value) {
    if (!IsLowerAlnum(c) && c != '-') ok = false;
    if (c >= 'a' && c <= 'z') has_letter = true;
  }
  if (ok && has_letter) return absl::OkStatus();
  return Invalid(value,
                 "a valid port name (at most 15 lower-case letters, digits or '-', with at least "
                 "one letter and no leading, trailing or doubled '-')");
}

absl::Status ValidateTrustDomain(std::string_view value) {
  bool ok = !value.empty() && value.size() <= 255;
  for (char c : value) {
    if (!IsLowerAlnum(c) && c != '.' && c != '-' && c != '_') ok = false;
  }
  if (ok) return absl::OkStatus();
  return Invalid(value,
                 "a valid SPIFFE trust domain (at most 255 lower-case letters, digits, '.', '-' "
                 "or '_')");
}

absl::Status ValidateNetnsPath(std::string_view value) {
  auto bad = [&] {
    return Invalid(value,
                   "a network namespace path: use /var/run/netns/NAME, /run/netns/NAME or "
                   "/proc/PID/ns/net");
  };
  if (value.find("..") != std::string_view::npos) return bad();
  for (std::string_view dir : {"/var/run/netns/", "/run/netns/"}) {
    if (!value.starts_with(dir)) continue;
    std::string_view name = value.substr(dir.size());
    if (name.empty() || name.size() > 255 || name == ".") return bad();
    for (char c : name) {
      if (!absl::ascii_isalnum(c) && c != '-' && c != '_' && c != '.') return bad();
    }
    return absl::OkStatus();
  }
  constexpr std::string_view kProc = "/proc/";
  constexpr std::string_view kNsNet = "/ns/net";
  if (value.size() > kProc.size() + kNsNet.size() && value.starts_with(kProc) &&
      value.ends_with(kNsNet)) {
    std::string_view pid = value.substr(kProc.size(), value.size() - kProc.size() - kNsNet.size());
    if (pid.empty() || pid.size() > 10 || pid.front() == '0') return bad();
    for (char c : pid) {
      if (!absl::ascii_isdigit(c)) return bad();
    }
    return absl::OkStatus();
  }
  return bad();
}

}  // namespace ambit::config::internal
