#include "agent/kube/watch.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ambit::kube {
namespace {

const nlohmann::json* Member(const nlohmann::json& j, const char* name) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(name);
  return it == j.end() ? nullptr : &*it;
}

std::string StringMember(const nlohmann::json& j, const char* name) {
  const nlohmann::json* m = Member(j, name);
  return m != nullptr && m->is_string() ? m->get<std::string>() : std::string();
}

}  // namespace

size_t JsonDepth(absl::string_view text) {
  size_t depth = 0, max_depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '{':
      case '[':
        max_depth = std::max(max_depth, ++depth);
        break;
      case '}':
      case ']':
        if (depth > 0) --depth;
        break;
      default:
        break;
    }
  }
  return max_depth;
}

absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, absl::string_view what) {
  if (JsonDepth(text) > kMaxJsonDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " nests deeper than ", kMaxJsonDepth, " levels"));
  }
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(what, " is not JSON"));
  return j;
}

const std::vector<Resource>& WatchedResources() {
  static const std::vector<Resource> kResources = {
      {"pods", "/api/v1/pods", "Pod", "v1", false},
      {"namespaces", "/api/v1/namespaces", "Namespace", "v1", false},
      {"services", "/api/v1/services", "Service", "v1", false},
      {"peerauthentications", "/apis/security.istio.io/v1/peerauthentications",
       "PeerAuthentication", "security.istio.io/v1", true},
      {"authorizationpolicies", "/apis/security.istio.io/v1/authorizationpolicies",
       "AuthorizationPolicy", "security.istio.io/v1", true},
      {"requestauthentications", "/apis/security.istio.io/v1/requestauthentications",
       "RequestAuthentication", "security.istio.io/v1", true},
      {"gateways", "/apis/gateway.networking.k8s.io/v1/gateways", "Gateway",
       "gateway.networking.k8s.io/v1", true},
  };
  return kResources;
}

absl::StatusOr<WatchEvent> DecodeWatchEvent(absl::string_view line) {
  absl::StatusOr<nlohmann::json> parsed = ParseJson(line, "watch event");
  if (!parsed.ok()) return parsed.status();
  nlohmann::json& j = *parsed;
  if (!j.is_object()) return absl::InvalidArgumentError("watch event is not a JSON object");
  const std::string type = StringMember(j, "type");
  WatchEvent event;
  if (type == "ADDED") {
    event.type = EventType::kAdded;
  } else if (type == "MODIFIED") {
    event.type = EventType::kModified;
  } else if (type == "DELETED") {
    event.type = EventType::kDeleted;
  } else if (type == "BOOKMARK") {
    event.type = EventType::kBookmark;
  } else if (type == "ERROR") {
    event.type = EventType::kError;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("watch event has type '", type.substr(0, 40),
                     "', not ADDED, MODIFIED, DELETED, BOOKMARK or ERROR"));
  }
  auto object = j.find("object");
  if (object == j.end() || !object->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(type, " watch event has no object"));
  }
  event.object = std::move(*object);
  if (event.type == EventType::kError) {
    const nlohmann::json* code = Member(event.object, "code");
    if (code != nullptr && code->is_number_integer()) {
      event.code = static_cast<int>(std::clamp<int64_t>(code->get<int64_t>(), 0, 999));
    }
    event.reason = StringMember(event.object, "reason");
    event.message = StringMember(event.object, "message");
    return event;
  }
  const nlohmann::json* metadata = Member(event.object, "metadata");
  if (metadata == nullptr || !metadata->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(type, " watch event's object has no metadata"));
  }
  event.resource_version = StringMember(*metadata, "resourceVersion");
  if (event.resource_version.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(type, " watch event's object has no metadata.resourceVersion"));
  }
  return event;
}

bool IsExpired(int code, absl::string_view reason) {
  return code == 410 || reason == "Expired" || reason == "Gone";
}

ApiStatus ParseStatus(absl::string_view body) {
  ApiStatus status;
  absl::StatusOr<nlohmann::json> j = ParseJson(body, "status");
  if (!j.ok() || !j->is_object()) return status;
  const nlohmann::json* code = Member(*j, "code");
  if (code != nullptr && code->is_number_integer()) {
    status.code = static_cast<int>(std::clamp<int64_t>(code->get<int64_t>(), 0, 999));
  }
  status.reason = StringMember(*j, "reason");
  status.message = StringMember(*j, "message").substr(0, 1000);
  return status;
}

std::optional<absl::Duration> ParseRetryAfter(absl::string_view value) {
  value = absl::StripAsciiWhitespace(value);
  int64_t seconds = 0;
  if (value.empty() || !absl::SimpleAtoi(value, &seconds) || seconds < 0) return std::nullopt;
  return std::min(absl::Seconds(seconds), kMaxRetryAfter);
}

absl::Duration Backoff::Next(std::optional<absl::Duration> retry_after) {
  const absl::Duration d = next_;
  next_ = std::min(next_ * 2, max_);
  std::uniform_int_distribution<int64_t> jitter(absl::ToInt64Microseconds(d) / 2,
                                                absl::ToInt64Microseconds(d));
  absl::Duration delay = absl::Microseconds(jitter(rng_));
  if (retry_after.has_value()) delay = std::max(delay, *retry_after);
  return delay;
}

absl::StatusOr<std::string> ObjectStore::KeyOf(const nlohmann::json& object) {
  const nlohmann::json* metadata = Member(object, "metadata");
  if (metadata == nullptr) return absl::InvalidArgumentError("object has no metadata");
  std::string name = StringMember(*metadata, "name");
  if (name.empty()) return absl::InvalidArgumentError("object has no metadata.name");
  std::string ns = StringMember(*metadata, "namespace");
  return ns.empty() ? name : absl::StrCat(ns, "/", name);
}

ObjectStore::Entry ObjectStore::Convert(nlohmann::json object, const Entry* previous) const {
  // A list's items carry no kind; the converter dispatches on it.
  if (object.is_object()) {
    object["kind"] = resource_.kind;
    if (!object.contains("apiVersion")) object["apiVersion"] = resource_.api_version;
    // Written by the API server for its own bookkeeping; the converter has no use for them.
    if (auto m = object.find("metadata"); m != object.end() && m->is_object()) {
      m->erase("managedFields");
    }
  }
  const std::string text = object.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  config::ParsedFile parsed = config::ParseKubeYaml(kSourceName, text);
  Entry entry;
  for (config::ConfigError& e : parsed.errors) {
    e.line = 0;  // a position in JSON this agent re-serialized helps nobody
    e.column = 0;
    entry.errors.push_back(std::move(e));
  }
  if (!parsed.objects.empty()) {
    config::ParsedObject& o = parsed.objects.front();
    entry.id = o.id;
    if (auto* pod = std::get_if<state::Pod>(&o.object)) {
      state::PodPack pack;
      pack.Add(*pod);
      pack.ShrinkToFit();
      entry.good = std::move(pack);
    } else {
      entry.good = std::move(o.object);
    }
    return entry;
  }
  if (!parsed.rejected_ids.empty()) entry.id = parsed.rejected_ids.front();
  if (previous != nullptr && !std::holds_alternative<std::monostate>(previous->good) &&
      (entry.id.empty() || entry.id == previous->id)) {
    entry.id = previous->id;
    entry.good = previous->good;
    entry.errors.push_back({std::string(kSourceName), entry.id, "",
                            "is invalid; its last good version stays in force",
                            /*warning=*/true});
  }
  return entry;
}

void ObjectStore::Upsert(nlohmann::json object) {
  absl::StatusOr<std::string> key = KeyOf(object);
  if (!key.ok()) return;  // DecodeWatchEvent let through an object without a name
  auto it = entries_.find(*key);
  Entry entry = Convert(std::move(object), it == entries_.end() ? nullptr : &it->second);
  entries_.insert_or_assign(*key, std::move(entry));
}

void ObjectStore::Remove(const nlohmann::json& object) {
  absl::StatusOr<std::string> key = KeyOf(object);
  if (key.ok()) entries_.erase(*key);
}

void ObjectStore::Collect(std::map<std::string, config::ConfigObject>* objects,
                          std::vector<config::ConfigError>* errors) const {
  for (const auto& [key, entry] : entries_) {
    errors->insert(errors->end(), entry.errors.begin(), entry.errors.end());
    if (const auto* pack = std::get_if<state::PodPack>(&entry.good)) {
      state::PodPack::Reader reader(*pack);
      state::Pod pod;
      if (reader.Next(&pod)) objects->emplace(entry.id, std::move(pod));
    } else if (const auto* o = std::get_if<config::ConfigObject>(&entry.good)) {
      objects->emplace(entry.id, *o);
    }
  }
}

}  // namespace ambit::kube
