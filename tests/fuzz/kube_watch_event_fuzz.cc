// Watch events arrive from the API server as newline-delimited JSON. Each line goes through the
// decoder and, for an object event, the store that converts it (config::ParseKubeYaml) with the
// last-good rule, as the source does. Checks, besides "no crash": a decoded object event has a
// resourceVersion; an ERROR event's code stays a plausible HTTP status; a store keeps at most one
// entry per key and what it collects converts back.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "agent/kube/watch.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace kube = ambit::kube;
  absl::string_view text(reinterpret_cast<const char*>(data), size);
  // The first byte picks the resource the lines are events of.
  if (text.empty()) return 0;
  const auto& resources = kube::WatchedResources();
  kube::ObjectStore store(resources[static_cast<uint8_t>(text[0]) % resources.size()]);
  text.remove_prefix(1);
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    auto event = kube::DecodeWatchEvent(line);
    if (!event.ok()) {
      FUZZ_REQUIRE(!event.status().message().empty());
      continue;
    }
    switch (event->type) {
      case kube::EventType::kError:
        FUZZ_REQUIRE(event->code >= 0 && event->code <= 999);
        (void)kube::IsExpired(event->code, event->reason);
        break;
      case kube::EventType::kBookmark:
        FUZZ_REQUIRE(!event->resource_version.empty());
        break;
      case kube::EventType::kAdded:
      case kube::EventType::kModified:
        FUZZ_REQUIRE(!event->resource_version.empty());
        store.Upsert(std::move(event->object));
        break;
      case kube::EventType::kDeleted:
        store.Remove(event->object);
        break;
    }
  }
  std::map<std::string, ambit::config::ConfigObject> objects;
  std::vector<ambit::config::ConfigError> errors;
  store.Collect(&objects, &errors);
  FUZZ_REQUIRE(objects.size() <= store.entries().size());
  (void)kube::ParseStatus(text);
  (void)kube::ParseRetryAfter(text);
  return 0;
}
