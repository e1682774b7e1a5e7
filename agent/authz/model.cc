#include "agent/authz/model.h"

#include "absl/strings/str_cat.h"

namespace ambit::authz {

absl::string_view ActionName(Action action) {
  switch (action) {
    case Action::kAllow:
      return "ALLOW";
    case Action::kDeny:
      return "DENY";
    case Action::kAudit:
      return "AUDIT";
    case Action::kCustom:
      return "CUSTOM";
  }
  return "ALLOW";
}

std::string Policy::Key() const { return absl::StrCat(namespace_name, "/", name); }

}  // namespace ambit::authz
