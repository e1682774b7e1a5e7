#include "agent/common/log.h"

#include <time.h>
#include <unistd.h>

#include <array>
#include <map>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "agent/common/log_line.h"

namespace ambit::log {
namespace {

using LevelMap = std::map<std::string, Level, std::less<>>;

absl::Mutex mu;  // serializes level changes
// The per-component levels, read without a lock on every log statement (data-path threads
// included): a change publishes a new immutable table. Every table published stays alive, since
// a reader may still hold the previous one; changes are rare (start-up flags, an operator's
// `ambitctl log`), so this costs a few hundred bytes per change.
std::atomic<const LevelMap*> levels{nullptr};
std::vector<std::unique_ptr<LevelMap>>* tables ABSL_GUARDED_BY(mu) = nullptr;
std::atomic<int> default_level{static_cast<int>(Level::kInfo)};

const char* Name(Level level) {
  switch (level) {
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarning:
      return "warn";
    case Level::kError:
      return "error";
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
  if (tables == nullptr) tables = new std::vector<std::unique_ptr<LevelMap>>();
  const LevelMap* current = levels.load(std::memory_order_acquire);
  auto next = std::make_unique<LevelMap>(current != nullptr ? *current : LevelMap());
  (*next)[std::string(component)] = level;
  levels.store(next.get(), std::memory_order_release);
  tables->push_back(std::move(next));
}

bool Enabled(std::string_view component, Level level) {
  if (const LevelMap* m = levels.load(std::memory_order_acquire)) {
    auto it = m->find(component);
    if (it != m->end()) return level >= it->second;
  }
  return static_cast<int>(level) >= default_level.load(std::memory_order_relaxed);
}

bool IsKnownComponent(std::string_view component) {
  for (std::string_view c : kComponents) {
    if (c == component) return true;
  }
  return false;
}

bool ParseLevel(std::string_view text, Level* level) {
  if (text == "debug")
    *level = Level::kDebug;
  else if (text == "info")
    *level = Level::kInfo;
  else if (text == "warn" || text == "warning")
    *level = Level::kWarning;
  else if (text == "error")
    *level = Level::kError;
  else
    return false;
  return true;
}

void AppendTimestamp(std::string* out, int64_t unix_millis) {
  thread_local int64_t cached_second = INT64_MIN;
  thread_local char cached[32];
  thread_local size_t cached_len = 0;
  // Floor division: a time before 1970 belongs to the second that began before it.
  const int64_t second = unix_millis / 1000 - (unix_millis % 1000 < 0 ? 1 : 0);
  if (second != cached_second) {
    const time_t t = static_cast<time_t>(second);
    struct tm tm;
    if (static_cast<int64_t>(t) != second || gmtime_r(&t, &tm) == nullptr) {
      out->push_back('-');
      return;
    }
    cached_len = strftime(cached, sizeof cached, "%Y-%m-%dT%H:%M:%S", &tm);
    cached_second = second;
  }
  const int64_t frac = unix_millis - second * 1000;
  out->append(cached, cached_len);
  out->push_back('.');
  out->push_back(static_cast<char>('0' + frac / 100));
  out->push_back(static_cast<char>('0' + frac / 10 % 10));
  out->push_back(static_cast<char>('0' + frac % 10));
  out->push_back('Z');
}

std::string FormatLine(std::string_view component, Level level, std::string_view text) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  std::string line;
  line.reserve(24 + 1 + 6 + component.size() + 2 + text.size() + 1);
  AppendTimestamp(&line, static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000);
  line.append(" ").append(Name(level)).append(" ");
  line.append(component).append(": ").append(text).append("\n");
  return line;
}

Line::~Line() {
  // One write per line so lines from several threads never interleave.
  const std::string line = FormatLine(component_, level_, out_.str());
  (void)!::write(STDERR_FILENO, line.data(), line.size());
}

namespace {

// The characters a value may hold unquoted: [A-Za-z0-9./:_@%[]-].
constexpr std::array<bool, 256> kPlain = [] {
  std::array<bool, 256> t{};
  for (int c = '0'; c <= '9'; ++c) t[c] = true;
  for (int c = 'a'; c <= 'z'; ++c) t[c] = true;
  for (int c = 'A'; c <= 'Z'; ++c) t[c] = true;
  for (char c : std::string_view("./:_@%[]-")) t[static_cast<unsigned char>(c)] = true;
  return t;
}();

}  // namespace

void AppendFieldValue(std::string* out, std::string_view value) {
  if (value.empty()) {
    out->push_back('-');
    return;
  }
  bool plain = true;
  for (char c : value) {
    if (!kPlain[static_cast<unsigned char>(c)]) {
      plain = false;
      break;
    }
  }
  if (plain) {
    out->append(value);
    return;
  }
  out->push_back('"');
  for (char c : value) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') out->push_back('\\');
    if (c == '\n' || c == '\r' || c == '\t') {
      out->push_back(' ');
    } else {
      out->push_back((u < 0x20 || u == 0x7f) ? '?' : c);
    }
  }
  out->push_back('"');
}

std::string FieldValue(std::string_view value) {
  std::string out;
  AppendFieldValue(&out, value);
  return out;
}

}  // namespace ambit::log
