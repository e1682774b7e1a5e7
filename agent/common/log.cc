#include "agent/common/log.h"

#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <map>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace ambit::log {
namespace {

absl::Mutex mu;
std::map<std::string, Level, std::less<>>* levels ABSL_GUARDED_BY(mu) = nullptr;
std::atomic<int> default_level{static_cast<int>(Level::kInfo)};
// Set when any component has its own level, so the common case reads one atomic.
std::atomic<bool> has_overrides{false};

const char* Name(Level level) {
  switch (level) {
    case Level::kDebug: return "debug";
    case Level::kInfo: return "info";
    case Level::kWarning: return "warn";
    case Level::kError: return "error";
  }
  return "?";
}

}  // namespace

void SetLevel(std::string_view component, Level level) {
  if (component.empty()) {
    default_level.store(static_cast<int>(level), std::memory_order_relaxed);
    return;
  }
  absl::MutexLock lock(&mu);
  if (levels == nullptr) levels = new std::map<std::string, Level, std::less<>>();
  (*levels)[std::string(component)] = level;
  has_overrides.store(true, std::memory_order_release);
}

bool Enabled(std::string_view component, Level level) {
  if (has_overrides.load(std::memory_order_acquire)) {
    absl::MutexLock lock(&mu);
    auto it = levels->find(component);
    if (it != levels->end()) return level >= it->second;
  }
  return static_cast<int>(level) >= default_level.load(std::memory_order_relaxed);
}

bool ParseLevel(std::string_view text, Level* level) {
  if (text == "debug") *level = Level::kDebug;
  else if (text == "info") *level = Level::kInfo;
  else if (text == "warn" || text == "warning") *level = Level::kWarning;
  else if (text == "error") *level = Level::kError;
  else return false;
  return true;
}

Line::~Line() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char stamp[40];
  strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  std::string text = out_.str();
  // One write per line so lines from several threads never interleave.
  std::string line = std::string(stamp) + "." + std::to_string(ts.tv_nsec / 1000000 + 1000).substr(1) +
                     "Z " + Name(level_) + " " + std::string(component_) + ": " + text + "\n";
  (void)!::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace ambit::log
