#include "agent/cli/output.h"

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "yaml-cpp/yaml.h"

namespace ambit::cli {
namespace {

// A kind mismatch is a bug in the calling command, never a consequence of input.
void Require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "ambitctl: internal error: %s\n", what);
    std::abort();
  }
}

}  // namespace

Value Value::Object(std::initializer_list<std::pair<std::string, Value>> entries) {
  Value v = MakeMap();
  for (const auto& [key, value] : entries) v.Set(key, value);
  return v;
}

Value Value::Array(std::initializer_list<Value> items) { return Value(List(items)); }

bool Value::as_bool() const {
  Require(kind() == Kind::kBool, "Value is not a bool");
  return *std::get_if<bool>(&v_);
}

int64_t Value::as_int() const {
  Require(kind() == Kind::kInt, "Value is not a int");
  return *std::get_if<int64_t>(&v_);
}

double Value::as_double() const {
  Require(kind() == Kind::kDouble, "Value is not a double");
  return *std::get_if<double>(&v_);
}

const std::string& Value::as_string() const {
  Require(kind() == Kind::kString, "Value is not a string");
  return *std::get_if<std::string>(&v_);
}

const Value::List& Value::as_list() const {
  Require(kind() == Kind::kList, "Value is not a list");
  return *std::get_if<List>(&v_);
}

const Value::Map& Value::as_map() const {
  Require(kind() == Kind::kMap, "Value is not a map");
  return *std::get_if<Map>(&v_);
}

Value& Value::Set(std::string key, Value value) {
  if (is_null()) v_ = Map{};
  Require(kind() == Kind::kMap, "Value::Set on a non-map");
  Map& map = *std::get_if<Map>(&v_);
  for (auto& entry : map) {
    if (entry.first == key) {
      entry.second = std::move(value);
      return *this;
    }
  }
  map.emplace_back(std::move(key), std::move(value));
  return *this;
}

const Value* Value::Find(absl::string_view key) const {
  if (kind() != Kind::kMap) return nullptr;
  for (const auto& entry : *std::get_if<Map>(&v_)) {
    if (entry.first == key) return &entry.second;
  }
  return nullptr;
}

Value& Value::Append(Value value) {
  if (is_null()) v_ = List{};
  Require(kind() == Kind::kList, "Value::Append on a non-list");
  std::get_if<List>(&v_)->push_back(std::move(value));
  return *this;
}

absl::StatusOr<OutputFormat> ParseOutputFormat(absl::string_view name) {
  if (name == "table") return OutputFormat::kTable;
  if (name == "json") return OutputFormat::kJson;
  if (name == "yaml") return OutputFormat::kYaml;
  if (name == "wide") return OutputFormat::kWide;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown output format '", name, "': use table, wide, json or yaml"));
}

namespace {

// ---- JSON ----

nlohmann::ordered_json ToJson(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kNull:
      return nullptr;
    case Value::Kind::kBool:
      return v.as_bool();
    case Value::Kind::kInt:
      return v.as_int();
    case Value::Kind::kDouble:
      return v.as_double();
    case Value::Kind::kString:
      return v.as_string();
    case Value::Kind::kList: {
      nlohmann::ordered_json out = nlohmann::ordered_json::array();
      for (const Value& item : v.as_list()) out.push_back(ToJson(item));
      return out;
    }
    case Value::Kind::kMap: {
      nlohmann::ordered_json out = nlohmann::ordered_json::object();
      for (const auto& [key, item] : v.as_map()) out[key] = ToJson(item);
      return out;
    }
  }
  return nullptr;
}

// nlohmann throws on invalid UTF-8 by default; a byte from a peer must never abort the CLI.
std::string DumpJson(const Value& v, int indent) {
  return ToJson(v).dump(indent, ' ', /*ensure_ascii=*/false,
                        nlohmann::ordered_json::error_handler_t::replace);
}

// Shortest text that reads back as the same double ("0.1", not "0.10000000000000001").
std::string DoubleText(double d) { return nlohmann::json(d).dump(); }

// ---- YAML ----

// yaml-cpp's emitter leaves "true", "8080" or "null" unquoted, which a reader would take for a
// bool, a number or null. Quote anything a YAML 1.1 or 1.2 reader could resolve to a non-string.
bool NeedsYamlQuotes(const std::string& s) {
  if (s.empty()) return true;
  static constexpr absl::string_view kSpecial[] = {
      "~", "null", "true", "false", "yes",   "no",   "on", "off",
      "y", "n",    ".inf", "-.inf", "+.inf", ".nan", "<<",
  };
  std::string lower = absl::AsciiStrToLower(s);
  for (absl::string_view word : kSpecial) {
    if (lower == word) return true;
  }
  auto digit = [](char c) { return absl::ascii_isdigit(static_cast<unsigned char>(c)); };
  if (digit(s[0])) return true;
  return s.size() > 1 && (s[0] == '+' || s[0] == '-' || s[0] == '.') &&
         (digit(s[1]) || s[1] == '.');
}

void EmitYaml(YAML::Emitter& out, const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kNull:
      out << YAML::Null;
      return;
    case Value::Kind::kBool:
      out << (v.as_bool() ? "true" : "false");
      return;
    case Value::Kind::kInt:
      out << absl::StrCat(v.as_int());
      return;
    case Value::Kind::kDouble:
      out << DoubleText(v.as_double());
      return;
    case Value::Kind::kString:
      if (NeedsYamlQuotes(v.as_string())) out << YAML::DoubleQuoted;
      out << v.as_string();
      return;
    case Value::Kind::kList:
      if (v.as_list().empty()) out << YAML::Flow;
      out << YAML::BeginSeq;
      for (const Value& item : v.as_list()) EmitYaml(out, item);
      out << YAML::EndSeq;
      return;
    case Value::Kind::kMap:
      if (v.as_map().empty()) out << YAML::Flow;
      out << YAML::BeginMap;
      for (const auto& [key, item] : v.as_map()) {
        out << YAML::Key;
        if (NeedsYamlQuotes(key)) out << YAML::DoubleQuoted;
        out << key << YAML::Value;
        EmitYaml(out, item);
      }
      out << YAML::EndMap;
      return;
  }
}

// ---- table ----

// "trustDomain", "trust_domain" or "trust-domain" -> {"trust", "domain"}.
std::vector<std::string> KeyWords(absl::string_view key) {
  std::vector<std::string> words;
  std::string word;
  for (size_t i = 0; i < key.size(); ++i) {
    char c = key[i];
    if (c == '_' || c == '-' || c == ' ') {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
      continue;
    }
    bool upper = absl::ascii_isupper(static_cast<unsigned char>(c));
    bool prev_lower = i > 0 && (absl::ascii_islower(static_cast<unsigned char>(key[i - 1])) ||
                                absl::ascii_isdigit(static_cast<unsigned char>(key[i - 1])));
    if (upper && prev_lower && !word.empty()) {
      words.push_back(std::move(word));
      word.clear();
    }
    word.push_back(absl::ascii_tolower(static_cast<unsigned char>(c)));
  }
  if (!word.empty()) words.push_back(std::move(word));
  return words;
}

std::string ColumnHeader(absl::string_view key) {
  return absl::AsciiStrToUpper(absl::StrJoin(KeyWords(key), " "));
}

std::string FieldLabel(absl::string_view key) {
  std::string label = absl::StrJoin(KeyWords(key), " ");
  if (!label.empty()) label[0] = absl::ascii_toupper(static_cast<unsigned char>(label[0]));
  return label;
}

bool AllScalars(const Value::List& list) {
  return std::all_of(list.begin(), list.end(), [](const Value& v) { return v.is_scalar(); });
}

bool AllMaps(const Value::List& list) {
  return !list.empty() && std::all_of(list.begin(), list.end(),
                                      [](const Value& v) { return v.kind() == Value::Kind::kMap; });
}

// One cell or one value on a key/value line: never empty, never more than one line.
std::string CellText(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kNull:
      return "-";
    case Value::Kind::kBool:
      return v.as_bool() ? "true" : "false";
    case Value::Kind::kInt:
      return absl::StrCat(v.as_int());
    case Value::Kind::kDouble:
      return DoubleText(v.as_double());
    case Value::Kind::kString: {
      if (v.as_string().empty()) return "-";
      std::string s = v.as_string();
      std::replace(s.begin(), s.end(), '\n', ' ');
      return s;
    }
    case Value::Kind::kList:
      if (AllScalars(v.as_list()) && !v.as_list().empty()) {
        std::vector<std::string> parts;
        for (const Value& item : v.as_list()) parts.push_back(CellText(item));
        return absl::StrJoin(parts, ",");
      }
      return DumpJson(v, -1);
    case Value::Kind::kMap:
      return DumpJson(v, -1);
  }
  return "-";
}

void AppendLine(std::string& out, int indent, absl::string_view line) {
  // Padding of a last column never reaches the output: no trailing blanks.
  absl::string_view trimmed = absl::StripTrailingAsciiWhitespace(line);
  absl::StrAppend(&out, std::string(indent, ' '), trimmed, "\n");
}

void RenderRows(std::string& out, int indent, const Value::List& rows) {
  std::vector<std::string> keys;
  for (const Value& row : rows) {
    for (const auto& entry : row.as_map()) {
      if (std::find(keys.begin(), keys.end(), entry.first) == keys.end()) {
        keys.push_back(entry.first);
      }
    }
  }
  std::vector<std::vector<std::string>> cells;
  std::vector<std::string> header;
  for (const std::string& key : keys) header.push_back(ColumnHeader(key));
  cells.push_back(std::move(header));
  for (const Value& row : rows) {
    std::vector<std::string> line;
    for (const std::string& key : keys) {
      const Value* v = row.Find(key);
      line.push_back(v == nullptr ? "-" : CellText(*v));
    }
    cells.push_back(std::move(line));
  }
  std::vector<size_t> widths(keys.size(), 0);
  for (const auto& line : cells) {
    for (size_t i = 0; i < line.size(); ++i) widths[i] = std::max(widths[i], line[i].size());
  }
  for (const auto& line : cells) {
    std::string text;
    for (size_t i = 0; i < line.size(); ++i) {
      text += line[i];
      if (i + 1 < line.size()) text += std::string(widths[i] - line[i].size() + 3, ' ');
    }
    AppendLine(out, indent, text);
  }
}

void RenderTableAt(std::string& out, int indent, const Value& v);

void RenderMap(std::string& out, int indent, const Value::Map& map) {
  // Scalars (and short scalar lists) as aligned "Label:  value" lines, then anything nested as a
  // titled section, so the alignment of the simple fields is not broken up.
  auto is_line = [](const Value& v) {
    return v.is_scalar() ||
           (v.kind() == Value::Kind::kList && AllScalars(v.as_list()) && !v.as_list().empty());
  };
  size_t width = 0;
  for (const auto& [key, v] : map) {
    if (is_line(v)) width = std::max(width, FieldLabel(key).size() + 1);
  }
  for (const auto& [key, v] : map) {
    if (!is_line(v)) continue;
    std::string label = FieldLabel(key) + ":";
    AppendLine(out, indent, label + std::string(width - label.size() + 2, ' ') + CellText(v));
  }
  for (const auto& [key, v] : map) {
    if (is_line(v)) continue;
    if (!out.empty()) out += "\n";
    AppendLine(out, indent, FieldLabel(key) + ":");
    RenderTableAt(out, indent + 2, v);
  }
}

void RenderTableAt(std::string& out, int indent, const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kList: {
      const Value::List& list = v.as_list();
      if (list.empty()) {
        AppendLine(out, indent, "(none)");
      } else if (AllMaps(list)) {
        RenderRows(out, indent, list);
      } else {
        for (const Value& item : list) AppendLine(out, indent, CellText(item));
      }
      return;
    }
    case Value::Kind::kMap:
      if (v.as_map().empty()) {
        AppendLine(out, indent, "(none)");
      } else {
        RenderMap(out, indent, v.as_map());
      }
      return;
    default:
      AppendLine(out, indent, CellText(v));
      return;
  }
}

}  // namespace

std::string RenderTable(const Value& value) {
  std::string out;
  RenderTableAt(out, 0, value);
  return out;
}

std::string RenderJson(const Value& value) { return DumpJson(value, 2) + "\n"; }

std::string RenderYaml(const Value& value) {
  YAML::Emitter out;
  EmitYaml(out, value);
  // The emitter only fails on unbalanced Begin/End calls, which EmitYaml never makes.
  Require(out.good(), "unbalanced YAML emitter calls");
  return absl::StrCat(out.c_str(), "\n");
}

std::string Render(const Value& value, OutputFormat format) {
  switch (format) {
    case OutputFormat::kTable:
    case OutputFormat::kWide:
      return RenderTable(value);
    case OutputFormat::kJson:
      return RenderJson(value);
    case OutputFormat::kYaml:
      return RenderYaml(value);
  }
  return RenderTable(value);
}

}  // namespace ambit::cli
