#include "agent/kube/api_source.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/common/log.h"
#include "agent/common/status.h"

namespace ambit::kube {
namespace {

constexpr const char* kComponent = "kube";

// A 410 on a `continue` token (the list's snapshot was compacted mid-way) starts the list over;
// this many in a row is a failure like any other.
constexpr int kMaxListRestarts = 3;

}  // namespace

// One watched resource: its objects and how its list/watch is doing. The resource thread writes
// it under mu; the owner's thread reads it under mu.
struct KubeApiSource::Reflector {
  explicit Reflector(const Resource& r) : resource(r), store(resource) {}

  const Resource resource;
  mutable absl::Mutex mu;
  ObjectStore store ABSL_GUARDED_BY(mu);
  config::SourceResourceStats stats ABSL_GUARDED_BY(mu);
  bool absent ABSL_GUARDED_BY(mu) = false;  // a custom resource the server does not serve
  std::string last_error ABSL_GUARDED_BY(mu);
};

absl::StatusOr<std::unique_ptr<KubeApiSource>> KubeApiSource::Create(
    std::unique_ptr<KubeClient> client, Options options) {
  if (options.page_size <= 0) return absl::InvalidArgumentError("page size must be positive");
  AMBIT_ASSIGN_OR_RETURN(std::unique_ptr<config::DirectoryWatcher> watcher,
                         config::DirectoryWatcher::Create(options.config_dir));
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return absl::ErrnoToStatus(errno, "epoll_create1 for the API server source");
  UniqueFd event(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!event) return absl::ErrnoToStatus(errno, "eventfd for the API server source");
  for (int fd : {event.get(), watcher->fd()}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) < 0) {
      return absl::ErrnoToStatus(errno, "epoll_ctl for the API server source");
    }
  }
  auto source = std::unique_ptr<KubeApiSource>(
      new KubeApiSource(std::move(client), std::move(options), std::move(watcher), std::move(epoll),
                        std::move(event)));
  for (auto& r : source->reflectors_) {
    Reflector* reflector = r.get();
    KubeApiSource* self = source.get();
    source->threads_.emplace_back([self, reflector] { self->Run(*reflector); });
  }
  return source;
}

KubeApiSource::KubeApiSource(std::unique_ptr<KubeClient> client, Options options,
                             std::unique_ptr<config::DirectoryWatcher> watcher, UniqueFd epoll,
                             UniqueFd event)
    : client_(std::move(client)),
      options_(std::move(options)),
      loader_(options_.config_dir),
      watcher_(std::move(watcher)),
      epoll_(std::move(epoll)),
      event_(std::move(event)) {
  for (const Resource& r : options_.resources) {
    auto reflector = std::make_unique<Reflector>(r);
    absl::MutexLock lock(&reflector->mu);
    reflector->stats.resource = r.name;
    reflectors_.push_back(std::move(reflector));
  }
}

KubeApiSource::~KubeApiSource() {
  {
    absl::MutexLock lock(&stop_mu_);
    stopping_ = true;
  }
  cancel_.Cancel();
  for (std::thread& t : threads_) t.join();
}

void KubeApiSource::Notify() {
  uint64_t one = 1;
  // A full counter (never in practice) still leaves the fd readable: nothing is lost.
  [[maybe_unused]] ssize_t n = ::write(event_.get(), &one, sizeof one);
}

bool KubeApiSource::Sleep(absl::Duration d) {
  absl::MutexLock lock(&stop_mu_);
  auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(stop_mu_) { return stopping_; };
  stop_mu_.AwaitWithTimeout(absl::Condition(&stopping), d);
  return !stopping_;
}

void KubeApiSource::Run(Reflector& r) {
  Backoff backoff(options_.backoff_initial, options_.backoff_max, std::random_device()());
  std::string rv;
  bool need_list = true;
  bool failing = false;  // logged once per run of failures
  auto fail = [&](const absl::Status& status, std::optional<absl::Duration> retry_after) {
    absl::Duration delay = backoff.Next(retry_after);
    {
      absl::MutexLock lock(&r.mu);
      ++r.stats.errors;
      r.last_error = std::string(status.message());
    }
    if (!failing) {
      AMBIT_LOG(kComponent, Warning) << r.resource.name << ": " << status.message()
                                     << "; retrying in " << delay << " (with back-off)";
    }
    failing = true;
    Notify();  // Pending() says why
    return Sleep(delay);
  };
  while (!cancel_.cancelled()) {
    std::optional<absl::Duration> retry_after;
    if (need_list) {
      absl::Status listed = List(r, &rv, &retry_after);
      if (cancel_.cancelled()) break;
      if (!listed.ok()) {
        if (!fail(listed, retry_after)) break;
        continue;
      }
      if (failing) {
        AMBIT_LOG(kComponent, Info) << r.resource.name << ": listed again";
      }
      failing = false;
      backoff.Reset();
      need_list = false;
      bool absent;
      {
        absl::MutexLock lock(&r.mu);
        absent = r.absent;
      }
      if (absent) {
        if (!Sleep(options_.absent_recheck)) break;
        need_list = true;
        continue;
      }
    }
    absl::Status error;
    const absl::Time started = absl::Now();
    uint64_t events = 0;
    WatchEnd end = WatchOnce(r, &rv, &retry_after, &error, &events);
    if (cancel_.cancelled()) break;
    {
      absl::MutexLock lock(&r.mu);
      ++r.stats.watch_restarts;
    }
    if (events > 0 || absl::Now() - started > absl::Seconds(10)) {
      // The watch worked for a while: a failure now is a new one, not the same one again.
      backoff.Reset();
      failing = false;
    }
    switch (end) {
      case WatchEnd::kClosed:
        // A server that closes every watch at once would make this a busy loop.
        if (absl::Now() - started < absl::Seconds(1) && !Sleep(backoff.Next())) return;
        break;
      case WatchEnd::kExpired:
        AMBIT_LOG(kComponent, Info)
            << r.resource.name << ": resourceVersion " << rv << " expired; listing again";
        need_list = true;
        break;
      case WatchEnd::kFailed:
        // An undecodable event may have been one that mattered: list again to be sure.
        if (error.code() == absl::StatusCode::kInvalidArgument ||
            error.code() == absl::StatusCode::kResourceExhausted) {
          need_list = true;
        }
        if (!fail(error, retry_after)) return;
        break;
    }
  }
}

absl::Status KubeApiSource::List(Reflector& r, std::string* rv,
                                 std::optional<absl::Duration>* retry_after) {
  ObjectStore::Entries fresh;
  std::string cont;
  int restarts = 0;
  ObjectStore converter(r.resource);  // Convert only reads the resource
  while (true) {
    std::string path =
        absl::StrCat(r.resource.path, "?limit=", options_.page_size,
                     cont.empty() ? "" : absl::StrCat("&continue=", QueryEscape(cont)));
    AMBIT_ASSIGN_OR_RETURN(KubeResponse response,
                           client_->Request("GET", path, {}, options_.request_timeout, &cancel_));
    if (response.status == 404 && r.resource.optional && cont.empty()) {
      absl::MutexLock lock(&r.mu);
      if (!r.absent) {
        AMBIT_LOG(kComponent, Info)
            << r.resource.name << ": the API server does not serve " << r.resource.path
            << " (its CustomResourceDefinition is not installed); looking again every "
            << options_.absent_recheck;
      }
      r.absent = true;
      r.store.Replace({});
      r.stats.synced = true;
      ++r.stats.lists;
      r.stats.last_sync = absl::Now();
      r.last_error.clear();
      Notify();
      return absl::OkStatus();
    }
    if (response.status == 410 && !cont.empty() && ++restarts <= kMaxListRestarts) {
      cont.clear();
      fresh.clear();
      continue;
    }
    if (response.status != 200) {
      if (response.status == 429 || response.status >= 500) {
        *retry_after = ParseRetryAfter(response.Header("retry-after"));
      }
      ApiStatus status = ParseStatus(response.body);
      return absl::UnavailableError(absl::StrCat(
          "list ", r.resource.path, ": HTTP ", response.status,
          status.message.empty() ? "" : absl::StrCat(": ", status.message),
          response.status == 401 || response.status == 403
              ? " (check the token and that the ClusterRole grants list and watch on it)"
              : ""));
    }
    AMBIT_ASSIGN_OR_RETURN(nlohmann::json list, ParseJson(response.body, "list answer"));
    response.body = std::string();
    if (!list.is_object() || !list.contains("items") ||
        !(list["items"].is_array() || list["items"].is_null())) {
      return absl::InvalidArgumentError(
          absl::StrCat("list ", r.resource.path, ": the answer is not a list (no items)"));
    }
    nlohmann::json& metadata = list["metadata"];
    std::string next;
    if (metadata.is_object()) {
      if (auto v = metadata.find("resourceVersion"); v != metadata.end() && v->is_string()) {
        *rv = v->get<std::string>();
      }
      if (auto c = metadata.find("continue"); c != metadata.end() && c->is_string()) {
        next = c->get<std::string>();
      }
    }
    if (list["items"].is_array()) {
      for (nlohmann::json& item : list["items"]) {
        absl::StatusOr<std::string> key = ObjectStore::KeyOf(item);
        if (!key.ok()) continue;
        fresh.insert_or_assign(*key, converter.Convert(std::move(item), nullptr));
      }
    }
    if (next.empty()) break;
    cont = std::move(next);
  }
  if (rv->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("list ", r.resource.path, ": the answer has no metadata.resourceVersion"));
  }
  {
    absl::MutexLock lock(&r.mu);
    // The last-good rule across a relist: an object now invalid keeps the version in force.
    for (auto& [key, entry] : fresh) {
      if (!std::holds_alternative<std::monostate>(entry.good)) continue;
      const ObjectStore::Entry* old = r.store.Find(key);
      if (old == nullptr || std::holds_alternative<std::monostate>(old->good)) continue;
      if (!entry.id.empty() && entry.id != old->id) continue;
      entry.id = old->id;
      entry.good = old->good;
      entry.errors.push_back({std::string(kSourceName), entry.id, "",
                              "is invalid; its last good version stays in force",
                              /*warning=*/true});
    }
    r.store.Replace(std::move(fresh));
    r.absent = false;
    r.stats.synced = true;
    ++r.stats.lists;
    r.stats.last_sync = absl::Now();
    r.last_error.clear();
  }
  Notify();
  return absl::OkStatus();
}

KubeApiSource::WatchEnd KubeApiSource::WatchOnce(Reflector& r, std::string* rv,
                                                 std::optional<absl::Duration>* retry_after,
                                                 absl::Status* error, uint64_t* events) {
  // Between half and all of the configured timeout, so that agents do not re-watch in step.
  thread_local std::mt19937_64 rng(std::random_device{}());
  const int64_t max_s = std::max<int64_t>(1, absl::ToInt64Seconds(options_.watch_timeout));
  const int64_t timeout_s = std::uniform_int_distribution<int64_t>((max_s + 1) / 2, max_s)(rng);
  const std::string path = absl::StrCat(
      r.resource.path, "?watch=true&allowWatchBookmarks=true&resourceVersion=", QueryEscape(*rv),
      "&timeoutSeconds=", timeout_s);
  bool expired = false;
  auto on_line = [&](absl::string_view line) -> absl::Status {
    AMBIT_ASSIGN_OR_RETURN(WatchEvent event, DecodeWatchEvent(line));
    switch (event.type) {
      case EventType::kError:
        if (IsExpired(event.code, event.reason)) {
          expired = true;
          return absl::CancelledError("expired");
        }
        return absl::UnavailableError(absl::StrCat("watch ", r.resource.path, ": ERROR event ",
                                                   event.code, " ", event.reason, ": ",
                                                   event.message.substr(0, 300)));
      case EventType::kBookmark: {
        absl::MutexLock lock(&r.mu);
        r.stats.last_sync = absl::Now();
        break;
      }
      case EventType::kAdded:
      case EventType::kModified: {
        absl::MutexLock lock(&r.mu);
        r.store.Upsert(std::move(event.object));
        r.stats.last_sync = absl::Now();
        break;
      }
      case EventType::kDeleted: {
        absl::MutexLock lock(&r.mu);
        r.store.Remove(event.object);
        r.stats.last_sync = absl::Now();
        break;
      }
    }
    *rv = std::move(event.resource_version);
    ++*events;
    if (event.type != EventType::kBookmark) Notify();
    return absl::OkStatus();
  };
  absl::StatusOr<KubeResponse> response =
      client_->Watch(path, on_line, absl::Seconds(timeout_s) + absl::Seconds(30), &cancel_);
  if (expired) return WatchEnd::kExpired;
  if (!response.ok()) {
    *error = response.status();
    return WatchEnd::kFailed;
  }
  if (response->status == 200) return WatchEnd::kClosed;
  ApiStatus status = ParseStatus(response->body);
  if (response->status == 410 || IsExpired(status.code, status.reason)) return WatchEnd::kExpired;
  if (response->status == 429 || response->status >= 500) {
    *retry_after = ParseRetryAfter(response->Header("retry-after"));
  }
  *error = absl::UnavailableError(
      absl::StrCat("watch ", r.resource.path, ": HTTP ", response->status,
                   status.message.empty() ? "" : absl::StrCat(": ", status.message)));
  return WatchEnd::kFailed;
}

config::LoadResult KubeApiSource::Load() {
  config::ExternalObjects extra;
  extra.name = std::string(kSourceName);
  for (const auto& r : reflectors_) {
    absl::MutexLock lock(&r->mu);
    r->store.Collect(&extra.objects, &extra.errors);
    if (r->absent) {
      extra.errors.push_back({std::string(kSourceName), "", "",
                              absl::StrCat("the API server does not serve ", r->resource.path,
                                           " (CustomResourceDefinition not installed): no ",
                                           r->resource.kind, " applies"),
                              /*warning=*/true});
    }
  }
  return loader_.Load(&extra);
}

std::optional<config::LoadResult> KubeApiSource::Poll() {
  uint64_t count;
  bool api_changed = ::read(event_.get(), &count, sizeof count) == sizeof count;
  bool dir_changed = watcher_->Drain();
  if (!api_changed && !dir_changed) return std::nullopt;
  if (!Pending().empty()) return std::nullopt;
  config::LoadResult result = Load();
  auto stamp = loader_.StampOf(result);
  if (last_ && *last_ == stamp) return std::nullopt;
  last_ = std::move(stamp);
  return result;
}

config::LoadResult KubeApiSource::Current() {
  uint64_t count;
  [[maybe_unused]] ssize_t n = ::read(event_.get(), &count, sizeof count);
  watcher_->Drain();
  config::LoadResult result = Load();
  last_ = loader_.StampOf(result);
  return result;
}

std::vector<std::string> KubeApiSource::Pending() const {
  std::vector<std::string> pending;
  for (const auto& r : reflectors_) {
    absl::MutexLock lock(&r->mu);
    if (r->stats.synced) continue;
    pending.push_back(absl::StrCat("waiting for the first list of ", r->resource.name,
                                   " from the API server (", client_->config().server, ")",
                                   r->last_error.empty() ? "" : absl::StrCat(": ", r->last_error)));
  }
  return pending;
}

std::vector<config::SourceResourceStats> KubeApiSource::Stats() const {
  std::vector<config::SourceResourceStats> stats;
  for (const auto& r : reflectors_) {
    absl::MutexLock lock(&r->mu);
    stats.push_back(r->stats);
  }
  return stats;
}

}  // namespace ambit::kube
