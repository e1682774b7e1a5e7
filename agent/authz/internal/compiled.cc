#include "agent/authz/internal/compiled.h"

#include <cstddef>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"

namespace ambit::authz::internal {
namespace {

// Envoy's URI-template literal characters (RFC 3986 pchar without '/' and '*').
bool IsTemplateLiteral(char c) {
  if (absl::ascii_isalnum(static_cast<unsigned char>(c))) return true;
  switch (c) {
    case '-':
    case '.':
    case '_':
    case '~':
    case '%':
    case '!':
    case '$':
    case '&':
    case '\'':
    case '(':
    case ')':
    case '+':
    case ',':
    case ';':
    case ':':
    case '@':
    case '=':
      return true;
    default:
      return false;
  }
}

bool MatchTokens(const std::vector<PathTemplate::Token>& tokens, size_t ti, absl::string_view s,
                 size_t si) {
  if (ti == tokens.size()) return si == s.size();
  const PathTemplate::Token& t = tokens[ti];
  switch (t.kind) {
    case PathTemplate::Token::Kind::kLiteral:
      return absl::StartsWith(s.substr(si), t.text) &&
             MatchTokens(tokens, ti + 1, s, si + t.text.size());
    case PathTemplate::Token::Kind::kSegmentGlob:
      // One or more literal characters, never '/'.
      for (size_t end = si + 1; end <= s.size() && IsTemplateLiteral(s[end - 1]); ++end) {
        if (MatchTokens(tokens, ti + 1, s, end)) return true;
      }
      return false;
    case PathTemplate::Token::Kind::kTextGlob:
      // Zero or more literal characters or '/'.
      for (size_t end = si;; ++end) {
        if (MatchTokens(tokens, ti + 1, s, end)) return true;
        if (end == s.size() || !(IsTemplateLiteral(s[end]) || s[end] == '/')) return false;
      }
  }
  return false;
}

}  // namespace

bool IsL4Attr(Attr attr) {
  switch (attr) {
    case Attr::kSourcePrincipal:
    case Attr::kSourceNamespace:
    case Attr::kSourceServiceAccount:
    case Attr::kSourceTrustDomain:
    case Attr::kSourceIp:
    case Attr::kDestinationIp:
    case Attr::kDestinationPort:
      return true;
    default:
      return false;
  }
}

StringPattern StringPattern::Parse(absl::string_view value) {
  // Same precedence as Istio: "*" first, then a leading '*', then a trailing '*'. A '*' anywhere
  // else is a literal character.
  if (value == "*") return {Kind::kPresence, ""};
  if (absl::StartsWith(value, "*")) return {Kind::kSuffix, std::string(value.substr(1))};
  if (absl::EndsWith(value, "*")) {
    return {Kind::kPrefix, std::string(value.substr(0, value.size() - 1))};
  }
  return {Kind::kExact, std::string(value)};
}

bool StringPattern::Matches(absl::string_view value, bool ignore_case) const {
  switch (kind) {
    case Kind::kPresence:
      return !value.empty();
    case Kind::kExact:
      return ignore_case ? absl::EqualsIgnoreCase(value, text) : value == text;
    case Kind::kPrefix:
      return ignore_case ? absl::StartsWithIgnoreCase(value, text) : absl::StartsWith(value, text);
    case Kind::kSuffix:
      return ignore_case ? absl::EndsWithIgnoreCase(value, text) : absl::EndsWith(value, text);
  }
  return false;
}

bool PathTemplate::Matches(absl::string_view path) const { return MatchTokens(tokens, 0, path, 0); }

}  // namespace ambit::authz::internal
