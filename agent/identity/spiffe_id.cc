#include "agent/identity/spiffe_id.h"

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace ambit::identity {
namespace {

constexpr absl::string_view kScheme = "spiffe";
constexpr absl::string_view kSchemePrefix = "spiffe://";
constexpr absl::string_view kForm = "a SPIFFE ID has the form spiffe://<trust-domain>[/<path>]";

// 'c' for printable ASCII, '\xNN' otherwise, so a message never carries raw control or non-ASCII
// bytes to a terminal or into JSON.
std::string Quote(char c) {
  auto u = static_cast<unsigned char>(c);
  if (u >= 0x20 && u < 0x7f) return absl::StrCat("'", absl::string_view(&c, 1), "'");
  return absl::StrFormat("'\\x%02X'", u);
}

bool IsTrustDomainChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}

bool IsPathChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
}

// RFC 3986 section 3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
bool IsUriScheme(absl::string_view s) {
  if (s.empty() || !absl::ascii_isalpha(static_cast<unsigned char>(s[0]))) return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '-' && c != '.') {
      return false;
    }
  }
  return true;
}

// Checks the authority part, `td`, which starts at byte `offset` of the text being reported on.
// Structural mistakes (user info, port, IPv6 literal, percent-encoding) are named as such before
// any character is judged on its own.
absl::Status CheckTrustDomain(absl::string_view td, size_t offset) {
  if (td.empty()) return absl::InvalidArgumentError(absl::StrCat("trust domain is empty: ", kForm));
  if (size_t at = td.find('@'); at != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "trust domain must not contain user info ('@' at position ", offset + at, ")"));
  }
  if (td[0] == '[') {
    return absl::InvalidArgumentError(absl::StrCat(
        "trust domain must not be an IPv6 address literal ('[' at position ", offset, ")"));
  }
  if (size_t colon = td.find(':'); colon != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "trust domain must not contain a port (':' at position ", offset + colon, ")"));
  }
  if (size_t pct = td.find('%'); pct != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("trust domain must not contain percent-encoded characters ('%' at position ",
                     offset + pct, ")"));
  }
  for (size_t i = 0; i < td.size(); ++i) {
    if (!IsTrustDomainChar(td[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "trust domain contains invalid character ", Quote(td[i]), " at position ", offset + i,
          ": only lowercase letters, digits, '.', '-' and '_' are allowed"));
    }
  }
  if (td.size() > kMaxTrustDomainLength) {
    return absl::InvalidArgumentError(absl::StrCat("trust domain is ", td.size(),
                                                   " bytes long; at most ", kMaxTrustDomainLength,
                                                   " are allowed"));
  }
  return absl::OkStatus();
}

// Checks a non-empty path (it starts with '/') found at byte `offset`.
absl::Status CheckPath(absl::string_view path, size_t offset) {
  if (size_t pct = path.find('%'); pct != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "path must not contain percent-encoded characters ('%' at position ", offset + pct, ")"));
  }
  size_t slash = 0;  // index in `path` of the '/' that opens the current segment
  while (slash < path.size()) {
    size_t end = path.find('/', slash + 1);
    if (end == absl::string_view::npos) end = path.size();
    absl::string_view segment = path.substr(slash + 1, end - slash - 1);
    if (segment.empty()) {
      if (end == path.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("path must not end with '/' (position ", offset + slash, ")"));
      }
      return absl::InvalidArgumentError(
          absl::StrCat("path contains an empty segment ('//' at position ", offset + slash, ")"));
    }
    if (segment == "." || segment == "..") {
      return absl::InvalidArgumentError(absl::StrCat("path contains a relative segment '", segment,
                                                     "' at position ", offset + slash + 1,
                                                     ": '.' and '..' are not allowed"));
    }
    for (size_t i = 0; i < segment.size(); ++i) {
      if (!IsPathChar(segment[i])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "path contains invalid character ", Quote(segment[i]), " at position ",
            offset + slash + 1 + i, ": only letters, digits, '.', '-' and '_' are allowed"));
      }
    }
    slash = end;
  }
  return absl::OkStatus();
}

}  // namespace

std::string SpiffeId::ToString() const { return absl::StrCat(kSchemePrefix, trust_domain, path); }

absl::StatusOr<SpiffeId> ParseSpiffeId(absl::string_view text) {
  if (text.empty()) return absl::InvalidArgumentError(absl::StrCat("SPIFFE ID is empty: ", kForm));
  if (text.size() > kMaxSpiffeIdLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SPIFFE ID is ", text.size(), " bytes long; at most ", kMaxSpiffeIdLength, " are allowed"));
  }

  // The scheme is what precedes the first ':', provided no '/', '?' or '#' comes before it.
  size_t colon = text.find_first_of(":/?#");
  if (colon == absl::string_view::npos || text[colon] != ':' ||
      !IsUriScheme(text.substr(0, colon))) {
    return absl::InvalidArgumentError(
        absl::StrCat("missing scheme: a SPIFFE ID starts with 'spiffe://'"));
  }
  absl::string_view scheme = text.substr(0, colon);
  if (scheme != kScheme) {
    if (absl::EqualsIgnoreCase(scheme, kScheme)) {
      return absl::InvalidArgumentError(
          absl::StrCat("scheme '", scheme, "' must be written in lowercase: 'spiffe'"));
    }
    return absl::InvalidArgumentError(absl::StrCat("scheme must be 'spiffe', not '", scheme, "'"));
  }
  if (!absl::StartsWith(text, kSchemePrefix)) {
    return absl::InvalidArgumentError(absl::StrCat("missing '//' after 'spiffe:': ", kForm));
  }

  // A query or fragment ends the path (RFC 3986 section 3); SPIFFE forbids both.
  const size_t authority_begin = kSchemePrefix.size();
  size_t qf = text.find_first_of("?#", authority_begin);
  if (qf != absl::string_view::npos) {
    bool query = text[qf] == '?';
    return absl::InvalidArgumentError(absl::StrCat("SPIFFE ID must not have a ",
                                                   query ? "query" : "fragment", " ('",
                                                   query ? "?" : "#", "' at position ", qf, ")"));
  }

  size_t path_begin = text.find('/', authority_begin);
  if (path_begin == absl::string_view::npos) path_begin = text.size();
  absl::string_view td = text.substr(authority_begin, path_begin - authority_begin);
  if (absl::Status s = CheckTrustDomain(td, authority_begin); !s.ok()) return s;

  absl::string_view path = text.substr(path_begin);
  if (!path.empty()) {
    if (absl::Status s = CheckPath(path, path_begin); !s.ok()) return s;
  }
  return SpiffeId{std::string(td), std::string(path)};
}

absl::Status ValidateTrustDomain(absl::string_view trust_domain) {
  return CheckTrustDomain(trust_domain, 0);
}

std::optional<IstioIdentity> AsIstioIdentity(const SpiffeId& id) {
  if (!absl::StartsWith(id.path, "/")) return std::nullopt;
  std::vector<absl::string_view> parts = absl::StrSplit(absl::string_view(id.path).substr(1), '/');
  if (parts.size() != 4 || parts[0] != "ns" || parts[1].empty() || parts[2] != "sa" ||
      parts[3].empty()) {
    return std::nullopt;
  }
  return IstioIdentity{id.trust_domain, std::string(parts[1]), std::string(parts[3])};
}

std::string IstioSpiffeId(absl::string_view td, absl::string_view ns, absl::string_view sa) {
  return absl::StrCat(kSchemePrefix, td, "/ns/", ns, "/sa/", sa);
}

}  // namespace ambit::identity
