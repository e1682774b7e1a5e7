#pragma once

// What ambitctl prints: commands build a Value (an ordered, JSON-shaped tree) and a renderer turns
// it into an aligned text table for people, or JSON / YAML for machines. Keys keep their insertion
// order in every format, so output is stable and reads in the order the command chose.
// Values are plain data: thread-compatible.

#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ambit::cli {

class Value {
 public:
  using List = std::vector<Value>;
  using Map = std::vector<std::pair<std::string, Value>>;  // ordered; keys unique via Set
  enum class Kind { kNull, kBool, kInt, kDouble, kString, kList, kMap };

  Value() = default;                                  // null
  Value(bool b) : v_(b) {}                            // NOLINT(google-explicit-constructor)
  Value(const char* s) : v_(std::string(s)) {}        // NOLINT(google-explicit-constructor)
  Value(std::string s) : v_(std::move(s)) {}          // NOLINT(google-explicit-constructor)
  Value(absl::string_view s) : v_(std::string(s)) {}  // NOLINT(google-explicit-constructor)
  Value(double d) : v_(d) {}                          // NOLINT(google-explicit-constructor)
  // Without this a pointer would silently become a bool.
  Value(const void*) = delete;
  template <typename T,
            std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  Value(T i) : v_(static_cast<int64_t>(i)) {}  // NOLINT(google-explicit-constructor)

  static Value MakeMap() { return Value(Map{}); }
  static Value MakeList() { return Value(List{}); }
  // Value::Object({{"name", "web"}, {"port", 8080}}).
  static Value Object(std::initializer_list<std::pair<std::string, Value>> entries);
  static Value Array(std::initializer_list<Value> items);

  Kind kind() const { return static_cast<Kind>(v_.index()); }
  bool is_null() const { return kind() == Kind::kNull; }
  bool is_scalar() const { return kind() != Kind::kList && kind() != Kind::kMap; }

  // Accessors; each requires the matching kind (checked).
  bool as_bool() const;
  int64_t as_int() const;
  double as_double() const;
  const std::string& as_string() const;
  const List& as_list() const;
  const Map& as_map() const;

  // Map building: a null Value becomes an empty map first. Set replaces an existing key in place.
  Value& Set(std::string key, Value value);
  // The value under `key`, or nullptr (also when this is not a map).
  const Value* Find(absl::string_view key) const;
  // List building: a null Value becomes an empty list first.
  Value& Append(Value value);

  friend bool operator==(const Value&, const Value&) = default;

 private:
  explicit Value(Map m) : v_(std::move(m)) {}
  explicit Value(List l) : v_(std::move(l)) {}

  // Order matches Kind.
  std::variant<std::monostate, bool, int64_t, double, std::string, List, Map> v_;
};

// kWide is a table with more columns (kubectl's -o wide); commands choose which.
enum class OutputFormat { kTable, kJson, kYaml, kWide };

// "table", "wide", "json" or "yaml"; InvalidArgument naming the accepted values otherwise.
absl::StatusOr<OutputFormat> ParseOutputFormat(absl::string_view name);

// For people. A list of maps becomes a table: one column per key (in first-seen order), headers
// from the keys ("trustDomain" -> "TRUST DOMAIN"), columns padded to align, missing cells "-".
// A map becomes "Key:  value" lines with aligned values; its list-valued entries follow as titled
// sub-tables. A list of scalars prints one per line; an empty list prints "(none)".
std::string RenderTable(const Value& value);
// Two-space indented JSON with a trailing newline. Invalid UTF-8 is replaced, never fatal.
std::string RenderJson(const Value& value);
// Block-style YAML with a trailing newline; strings that would read back as another type
// ("true", "8080", "") are quoted.
std::string RenderYaml(const Value& value);
std::string Render(const Value& value, OutputFormat format);

}  // namespace ambit::cli
