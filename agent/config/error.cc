#include "agent/config/error.h"

#include "absl/strings/str_cat.h"

namespace ambit::config {

std::string ConfigError::ToString() const {
  std::string out = file;
  if (line > 0) {
    absl::StrAppend(&out, ":", line);
    if (column > 0) absl::StrAppend(&out, ":", column);
  }
  absl::StrAppend(&out, ": ");
  if (warning) absl::StrAppend(&out, "warning: ");
  if (!object.empty()) absl::StrAppend(&out, object, ": ");
  if (!field.empty()) absl::StrAppend(&out, "field ", field, ": ");
  absl::StrAppend(&out, message);
  return out;
}

}  // namespace ambit::config
