#pragma once

// The pure parts of list/watch: decoding watch events and Status answers, back-off, and the
// objects of one watched resource with their last good versions. No I/O; thread-compatible.

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/config/error.h"
#include "agent/config/kube_yaml.h"
#include "agent/state/pod_pack.h"
#include "nlohmann/json.hpp"

namespace ambit::kube {

// JSON from the API server nests a dozen levels; far deeper is hostile (the library's
// serializer and destructor recurse per level).
inline constexpr size_t kMaxJsonDepth = 128;
// How deep `text` nests ({ and [ outside strings), without parsing it.
size_t JsonDepth(absl::string_view text);
// Parses JSON of at most kMaxJsonDepth levels; `what` names it in errors.
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, absl::string_view what);

// One resource the source lists and watches.
struct Resource {
  std::string name;         // "pods", as in metrics and readiness messages
  std::string path;         // "/api/v1/pods"
  std::string kind;         // "Pod": list items carry no kind, it is set from here
  std::string api_version;  // "v1"
  // A custom resource whose definition may not be installed: a 404 means "none", not an error.
  bool optional = false;
};

// What the source watches, in the order errors are reported: pods (one unfiltered watch: the
// local pods are among them, and the model needs every pod as a peer), namespaces, services,
// and the security.istio.io and gateway.networking.k8s.io resources.
const std::vector<Resource>& WatchedResources();

enum class EventType { kAdded, kModified, kDeleted, kBookmark, kError };

struct WatchEvent {
  EventType type = EventType::kError;
  nlohmann::json object;         // the object; for kError the Status
  std::string resource_version;  // object.metadata.resourceVersion
  // kError: the Status's code, reason and message.
  int code = 0;
  std::string reason, message;
};

// Decodes one line of a watch stream: {"type": ..., "object": {...}}. An error names what is
// wrong; the caller ends the watch and lists again (an event lost is never guessed at).
absl::StatusOr<WatchEvent> DecodeWatchEvent(absl::string_view line);

// True for an ERROR event (or a Status answer) that means "the resourceVersion is too old":
// code 410, or reason Expired or Gone. The cure is a fresh list.
bool IsExpired(int code, absl::string_view reason);

// The code, reason and message of a Status body (a non-200 answer); zeros when it is none.
struct ApiStatus {
  int code = 0;
  std::string reason, message;
};
ApiStatus ParseStatus(absl::string_view body);

// Retry-After as delta-seconds (what the API server sends), capped at kMaxRetryAfter; nullopt
// when absent or not a number (an HTTP date is not honoured: the back-off applies).
inline constexpr absl::Duration kMaxRetryAfter = absl::Minutes(5);
std::optional<absl::Duration> ParseRetryAfter(absl::string_view value);

// Exponential back-off with jitter: each delay is a random duration in [d/2, d], d doubling from
// `initial` up to `max`; never shorter than a server's Retry-After.
class Backoff {
 public:
  Backoff(absl::Duration initial, absl::Duration max, uint64_t seed)
      : initial_(initial), max_(max), next_(initial), rng_(seed) {}
  absl::Duration Next(std::optional<absl::Duration> retry_after = std::nullopt);
  void Reset() { next_ = initial_; }

 private:
  absl::Duration initial_, max_, next_;
  std::mt19937_64 rng_;
};

// The objects of one resource, as the API server last listed or reported them, each converted
// by config::ParseKubeYaml on its own (as a file's documents are), with the same last-good
// rule: an object that turns invalid keeps its last good version in force (with its errors and a
// warning saying so). Pods are kept packed (state::PodPack).
class ObjectStore {
 public:
  // One object as converted.
  struct Entry {
    std::string id;  // "Pod ns/name" (config::ParsedObject::id); empty if none could be made
    // The version in force: none, a packed pod, or any other kind.
    std::variant<std::monostate, state::PodPack, config::ConfigObject> good;
    std::vector<config::ConfigError> errors;
  };
  using Entries = std::map<std::string, Entry>;  // by "namespace/name" (or "name")

  explicit ObjectStore(const Resource& resource) : resource_(resource) {}

  // The key ("namespace/name") and resourceVersion of an object; an error if it has no name.
  static absl::StatusOr<std::string> KeyOf(const nlohmann::json& object);

  // Converts `object` (a list item or an event's object); `previous` is the entry it replaces.
  Entry Convert(nlohmann::json object, const Entry* previous) const;

  // An ADDED or MODIFIED event.
  void Upsert(nlohmann::json object);
  // A DELETED event.
  void Remove(const nlohmann::json& object);
  // A full list: `entries` (made by Convert) replace everything.
  void Replace(Entries entries) { entries_ = std::move(entries); }

  const Entries& entries() const { return entries_; }
  const Entry* Find(const std::string& key) const {
    auto it = entries_.find(key);
    return it == entries_.end() ? nullptr : &it->second;
  }
  // Adds every version in force to `objects` (by id) and every error to `errors`.
  void Collect(std::map<std::string, config::ConfigObject>* objects,
               std::vector<config::ConfigError>* errors) const;

 private:
  const Resource& resource_;
  Entries entries_;
};

// How errors and Pod::source_file name the API server.
inline constexpr char kSourceName[] = "apiserver";

}  // namespace ambit::kube
