#include "agent/authz/request.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace ambit::authz {

absl::string_view LayerName(Layer layer) { return layer == Layer::kL4 ? "L4" : "L7"; }

ClaimValue ClaimValue::String(std::string value) {
  ClaimValue v;
  v.kind_ = Kind::kString;
  v.string_ = std::move(value);
  return v;
}

ClaimValue ClaimValue::Number(double value) {
  ClaimValue v;
  v.kind_ = Kind::kNumber;
  v.number_ = value;
  return v;
}

ClaimValue ClaimValue::Bool(bool value) {
  ClaimValue v;
  v.kind_ = Kind::kBool;
  v.bool_ = value;
  return v;
}

ClaimValue ClaimValue::ListOf(List values) {
  ClaimValue v;
  v.kind_ = Kind::kList;
  v.list_ = std::move(values);
  return v;
}

ClaimValue ClaimValue::ObjectOf(Object members) {
  ClaimValue v;
  v.kind_ = Kind::kObject;
  v.object_ = std::move(members);
  return v;
}

const std::string* ClaimValue::AsString() const {
  return kind_ == Kind::kString ? &string_ : nullptr;
}

const double* ClaimValue::AsNumber() const { return kind_ == Kind::kNumber ? &number_ : nullptr; }

const ClaimValue::List* ClaimValue::AsList() const {
  return kind_ == Kind::kList ? &list_ : nullptr;
}

const ClaimValue::Object* ClaimValue::AsObject() const {
  return kind_ == Kind::kObject ? &object_ : nullptr;
}

const ClaimValue* ClaimValue::Find(absl::string_view key) const {
  if (kind_ != Kind::kObject) return nullptr;
  auto it = object_.find(std::string(key));
  return it == object_.end() ? nullptr : &it->second;
}

std::string ClaimValue::ToString() const {
  switch (kind_) {
    case Kind::kNull:
      return "null";
    case Kind::kString:
      return absl::StrCat("\"", string_, "\"");
    case Kind::kNumber:
      if (std::isfinite(number_) && std::trunc(number_) == number_ && std::fabs(number_) < 1e18) {
        return absl::StrCat(static_cast<int64_t>(number_));
      }
      return absl::StrFormat("%.17g", number_);
    case Kind::kBool:
      return bool_ ? "true" : "false";
    case Kind::kList:
      return absl::StrCat(
          "[",
          absl::StrJoin(list_, ",",
                        [](std::string* out, const ClaimValue& v) { out->append(v.ToString()); }),
          "]");
    case Kind::kObject:
      return absl::StrCat("{",
                          absl::StrJoin(object_, ",",
                                        [](std::string* out, const auto& kv) {
                                          absl::StrAppend(out, "\"", kv.first,
                                                          "\":", kv.second.ToString());
                                        }),
                          "}");
  }
  return "null";
}

HeaderMap::HeaderMap(std::initializer_list<std::pair<std::string, std::string>> headers) {
  for (const auto& [name, value] : headers) Add(name, value);
}

void HeaderMap::Add(absl::string_view name, absl::string_view value) {
  std::string key = absl::AsciiStrToLower(name);
  auto [it, inserted] = headers_.try_emplace(std::move(key), std::string(value));
  if (!inserted) absl::StrAppend(&it->second, ",", value);
}

absl::string_view AsciiLowerView(absl::string_view name, std::string* storage) {
  if (std::none_of(name.begin(), name.end(), absl::ascii_isupper)) return name;
  *storage = absl::AsciiStrToLower(name);
  return *storage;
}

const std::string* HeaderMap::Find(absl::string_view name) const {
  std::string lowered;
  auto it = headers_.find(AsciiLowerView(name, &lowered));
  return it == headers_.end() ? nullptr : &it->second;
}

std::optional<SpiffeId> ParseSpiffeId(absl::string_view uri) {
  if (!absl::ConsumePrefix(&uri, "spiffe://")) return std::nullopt;
  std::vector<absl::string_view> parts = absl::StrSplit(uri, '/');
  if (parts.size() != 5 || parts[1] != "ns" || parts[3] != "sa" || parts[0].empty() ||
      parts[2].empty() || parts[4].empty()) {
    return std::nullopt;
  }
  return SpiffeId{std::string(parts[0]), std::string(parts[2]), std::string(parts[4])};
}

std::string Request::SourceNamespace() const {
  auto id = ParseSpiffeId(source_principal);
  return id ? id->namespace_name : std::string();
}

std::string Request::SourceServiceAccount() const {
  auto id = ParseSpiffeId(source_principal);
  return id ? id->service_account : std::string();
}

}  // namespace ambit::authz
