#include "agent/authz/path.h"

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace ambit::authz {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = absl::ascii_tolower(static_cast<unsigned char>(c));
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The characters Istio's BASE normalization decodes from %HH: '-', '.', '_', '~', digits and
// letters (RFC 3986 unreserved).
bool IsDecodedByBase(int c) {
  return c == '-' || c == '.' || c == '_' || c == '~' || absl::ascii_isalnum(c);
}

// RFC 3986 section 5.2.4.
std::string RemoveDotSegments(absl::string_view in) {
  std::string out;
  auto drop_last_segment = [&out] {
    size_t slash = out.rfind('/');
    out.resize(slash == std::string::npos ? 0 : slash);
  };
  while (!in.empty()) {
    if (absl::StartsWith(in, "../")) {
      in.remove_prefix(3);
    } else if (absl::StartsWith(in, "./")) {
      in.remove_prefix(2);
    } else if (absl::StartsWith(in, "/./")) {
      in.remove_prefix(2);
    } else if (in == "/.") {
      in = "/";
    } else if (absl::StartsWith(in, "/../")) {
      in.remove_prefix(3);
      drop_last_segment();
    } else if (in == "/..") {
      in = "/";
      drop_last_segment();
    } else if (in == "." || in == "..") {
      in = absl::string_view();
    } else {
      size_t next = in.find('/', in[0] == '/' ? 1 : 0);
      size_t n = next == absl::string_view::npos ? in.size() : next;
      out.append(in.data(), n);
      in.remove_prefix(n);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> NormalizePath(absl::string_view raw, PathNormalization mode) {
  size_t end = raw.find_first_of("?#");
  absl::string_view path = raw.substr(0, end);
  if (mode == PathNormalization::kNone) return std::string(path);

  const bool decode_slashes = mode == PathNormalization::kDecodeAndMergeSlashes;
  std::string decoded;
  decoded.reserve(path.size());
  for (size_t i = 0; i < path.size(); ++i) {
    if (path[i] == '%' && i + 2 < path.size()) {
      int hi = HexValue(path[i + 1]);
      int lo = HexValue(path[i + 2]);
      if (hi >= 0 && lo >= 0) {
        int c = hi * 16 + lo;
        if (c == 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("path '", raw, "' contains %00; Istio rejects it with HTTP 400"));
        }
        if (IsDecodedByBase(c) || (decode_slashes && (c == '/' || c == '\\'))) {
          decoded.push_back(static_cast<char>(c));
          i += 2;
          continue;
        }
      }
    }
    decoded.push_back(path[i]);
  }
  for (char& c : decoded) {
    if (c == '\\') c = '/';
  }
  std::string out = RemoveDotSegments(decoded);
  if (mode == PathNormalization::kMergeSlashes ||
      mode == PathNormalization::kDecodeAndMergeSlashes) {
    std::string merged;
    merged.reserve(out.size());
    for (char c : out) {
      if (c == '/' && !merged.empty() && merged.back() == '/') continue;
      merged.push_back(c);
    }
    out = std::move(merged);
  }
  return out;
}

}  // namespace ambit::authz
