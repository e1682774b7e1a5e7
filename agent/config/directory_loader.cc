#include "agent/config/directory_loader.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <iterator>
#include <optional>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/common/unique_fd.h"
#include "agent/state/waypoint.h"

namespace ambit::config {
namespace {

// Larger than any sane hand-written or `kubectl get` file; protects the agent's memory.
constexpr size_t kMaxFileSize = 16 << 20;

absl::StatusOr<std::string> ReadFile(int dir_fd, const std::string& name) {
  UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd) return absl::ErrnoToStatus(errno, "open");
  struct stat st;
  if (::fstat(fd.get(), &st) < 0) return absl::ErrnoToStatus(errno, "stat");
  if (!S_ISREG(st.st_mode)) return absl::FailedPreconditionError("not a regular file");
  if (static_cast<size_t>(st.st_size) > kMaxFileSize) {
    return absl::ResourceExhaustedError(
        absl::StrCat("larger than ", kMaxFileSize >> 20, " MiB; split it into several files"));
  }
  std::string content;
  char buf[65536];
  while (true) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "read");
    }
    if (n == 0) break;
    content.append(buf, static_cast<size_t>(n));
    if (content.size() > kMaxFileSize) {
      return absl::ResourceExhaustedError(
          absl::StrCat("larger than ", kMaxFileSize >> 20, " MiB; split it into several files"));
    }
  }
  return content;
}

// A PeerAuthentication with a workload selector in the root namespace is valid but never applies
// (istiod ignores it; see authz/peer_authentication.h). Only known once every file, including the
// one holding the MeshConfig, is merged.
void WarnIgnoredPolicies(LoadResult* result) {
  const std::string& root = result->state.mesh.root_namespace;
  for (const auto& [key, pa] : result->security.peer_authentications) {
    if (pa.namespace_name != root || !pa.IsWorkloadLevel()) continue;
    result->errors.push_back(
        {pa.source_file, absl::StrCat("PeerAuthentication ", key), "spec.selector",
         absl::StrCat("a policy with a workload selector in the root namespace (", root,
                      ") is ignored, as in Istio: move it to the workload's namespace, or drop "
                      "the selector to make it mesh-wide"),
         /*warning=*/true});
  }
}

// A CUSTOM AuthorizationPolicy must name an ext_authz provider of the mesh config in force; only
// known once every file is merged. One that does not stays in force with its rules denying what
// they match, as istiod converts it: leaving it out would let through exactly the requests its
// author meant to send to an authorizer.
void CheckCustomProviders(LoadResult* result) {
  const state::MeshConfig& mesh = result->state.mesh;
  for (auto& [key, p] : result->security.authorization_policies) {
    p.provider_undefined = false;
    if (p.action != authz::Action::kCustom) continue;
    const state::ExtensionProvider* provider = mesh.FindExtensionProvider(p.provider);
    if (provider != nullptr && provider->IsExtAuthz()) continue;
    std::string message;
    if (provider != nullptr) {
      message = absl::StrCat("'", p.provider, "' is a ", provider->kind_name,
                             " extension provider, not an external authorizer "
                             "(envoyExtAuthzHttp or envoyExtAuthzGrpc)");
    } else {
      std::vector<std::string> names;
      for (const state::ExtensionProvider& e : mesh.extension_providers) {
        if (e.IsExtAuthz()) names.push_back(e.name);
      }
      message = absl::StrCat(
          "'", p.provider, "' is not in the mesh config's extensionProviders (",
          names.empty() ? "it defines no envoyExtAuthzHttp or envoyExtAuthzGrpc provider"
                        : absl::StrCat("ext_authz providers: ", absl::StrJoin(names, ", ")),
          ")");
    }
    p.provider_undefined = true;
    result->errors.push_back(
        {p.source_file, absl::StrCat("AuthorizationPolicy ", key), "spec.provider.name",
         absl::StrCat(message, "; its rules deny every request they match until it is defined"),
         /*warning=*/true});
  }
}

// Waypoint bindings that cannot be served as declared (state/waypoint.h); known once every file,
// and which pods own their addresses, is known.
void WarnWaypointProblems(LoadResult* result) {
  for (state::WaypointProblem& p : state::ResolveWaypoints(result->state).problems) {
    result->errors.push_back({std::move(p.source_file), std::move(p.object), std::move(p.field),
                              std::move(p.message), /*warning=*/true});
  }
}

// Parses on a short-lived thread of its own, then copies the result on this one. glibc gives
// that thread its own arena, so yaml-cpp's node graph (several KiB per pod, freed as soon as the
// file is converted) and the objects converted from it never share pages with what this thread
// keeps: the copy made here is compact, and once the original is freed the parser's arena is
// wholly free and goes back to the kernel. Parsed in place, the objects kept were scattered
// among the freed nodes and pinned their pages: about 5 KiB of RSS per pod at 100 000 pods.
ParsedFile ParseInOwnArena(const std::string& name, const std::string& content) {
  struct Job {
    const std::string* name;
    const std::string* content;
    std::optional<ParsedFile> parsed;
  } job{&name, &content, std::nullopt};
  auto run = [](void* arg) -> void* {
    auto* j = static_cast<Job*>(arg);
    j->parsed.emplace(ParseConfigFile(*j->name, *j->content));
    return nullptr;
  };
  pthread_t thread;
  if (pthread_create(&thread, nullptr, run, &job) != 0) {
    return ParseConfigFile(name, content);  // no thread to spare: the same result, less compact
  }
  pthread_join(thread, nullptr);
  ParsedFile copy = *job.parsed;
  job.parsed.reset();
  return copy;
}

}  // namespace

bool IsConfigFileName(std::string_view name) {
  if (name.empty() || name.front() == '.') return false;
  return name.ends_with(".yaml") || name.ends_with(".yml");
}

DirectoryLoader::DirectoryLoader(std::string dir, const Clock* clock, uint64_t max_config_bytes)
    : dir_(std::move(dir)), clock_(clock), max_config_bytes_(max_config_bytes) {}

void DirectoryLoader::ResolvePodAddresses(LoadResult* result) {
  state::ClusterState& state = result->state;
  const absl::Time now = clock_->Now();
  ++loads_;
  absl::flat_hash_map<uint64_t, Sight> seen;
  seen.reserve(state.pods.size());
  for (auto& [key, pod] : state.pods) {
    const uint64_t hash = absl::Hash<std::string>()(key);
    auto old = first_seen_.find(hash);
    const Sight sight = old != first_seen_.end() ? old->second : Sight{now, loads_};
    pod.first_seen = sight.time;
    pod.first_seen_load = sight.load;
    seen.emplace(hash, sight);
  }
  first_seen_ = std::move(seen);
  state::ResolveIpConflicts(&state);
  for (const auto& [key, conflict] : state.ip_conflicts) {
    const state::Pod& pod = state.pods.at(key);
    result->errors.push_back(
        {pod.source_file, absl::StrCat("Pod ", key), "status.podIPs",
         absl::StrCat("address ", conflict.ip.ToString(), " is also claimed by Pod ",
                      conflict.holder, " (", conflict.holder_file, "), which is older (",
                      conflict.holder_age, "); ", key,
                      " is not enrolled and none of its addresses is routed to it until one of "
                      "the two changes")});
  }
}

LoadResult DirectoryLoader::Load(ExternalObjects* extra) {
  namespace fs = std::filesystem;
  LoadResult result;
  Scratch scratch;

  std::vector<std::string> names;
  std::error_code ec;
  fs::directory_iterator it(dir_, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (!IsConfigFileName(name)) continue;
    std::error_code type_ec;
    if (!it->is_regular_file(type_ec)) continue;  // subdirectories, dangling symlinks
    names.push_back(std::move(name));
  }
  if (ec) {
    result.errors.push_back(
        {dir_, "", "",
         absl::StrCat("cannot read the config directory: ", ec.message(),
                      files_.empty() ? "" : "; the last loaded configuration stays in force")});
    for (const auto& [file, objects] : files_) Merge(file, objects, &result, &scratch);
    Finish(extra, &result, &scratch);
    return result;
  }
  std::sort(names.begin(), names.end());

  // Forget deleted files.
  for (auto f = files_.begin(); f != files_.end();) {
    if (std::binary_search(names.begin(), names.end(), f->first)) {
      ++f;
    } else {
      f = files_.erase(f);
      ++version_;
    }
  }

  for (auto p = parsed_.begin(); p != parsed_.end();) {
    p = std::binary_search(names.begin(), names.end(), p->first) ? std::next(p) : parsed_.erase(p);
  }

  UniqueFd dir_fd(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  uint64_t total = 0;
  for (const std::string& name : names) {
    KeptObjects& current = files_[name];
    struct stat st {};
    bool stat_ok = dir_fd && ::fstatat(dir_fd.get(), name.c_str(), &st, 0) == 0;
    Stamp stamp;
    if (stat_ok) {
      stamp = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
               static_cast<uint64_t>(st.st_size),
               int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec,
               int64_t{st.st_ctim.tv_sec} * 1000000000 + st.st_ctim.tv_nsec};
      total += stamp.size;
      if (total > max_config_bytes_) {
        result.errors.push_back(
            {name, "", "",
             absl::StrCat("not read: the config directory may hold at most ", max_config_bytes_,
                          " bytes of files in all, and this file brings it "
                          "to ",
                          total, "; split the configuration across nodes or remove unused objects",
                          current.empty() ? "" : "; its last good objects stay in force")});
        Merge(name, current, &result, &scratch);
        continue;
      }
    }
    if (auto cached = parsed_.find(name);
        stat_ok && cached != parsed_.end() && cached->second.stamp == stamp) {
      result.errors.insert(result.errors.end(), cached->second.errors.begin(),
                           cached->second.errors.end());
      Merge(name, current, &result, &scratch);
      continue;
    }
    parsed_.erase(name);
    size_t errors_before = result.errors.size();
    absl::StatusOr<std::string> content = ReadFile(dir_fd.get(), name);
    if (!content.ok()) {
      result.errors.push_back(
          {name, "", "",
           absl::StrCat("cannot read: ", content.status().message(),
                        current.empty() ? "" : "; its last good objects stay in force")});
      Merge(name, current, &result, &scratch);
      continue;
    }
    ParsedFile parsed = ParseInOwnArena(name, *content);
    std::move(parsed.errors.begin(), parsed.errors.end(), std::back_inserter(result.errors));
    if (parsed.unparseable) {
      if (!current.empty()) {
        result.errors.push_back({name, "", "",
                                 "the file's last good objects stay in force until it is fixed",
                                 /*warning=*/true});
      }
      Merge(name, current, &result, &scratch);
      continue;
    }
    FileObjects next;
    for (ParsedObject& object : parsed.objects) {
      if (!next.emplace(object.id, std::move(object.object)).second) {
        result.errors.push_back(
            {name, object.id, "", "defined twice in this file; the first definition is used"});
      }
    }
    if (!parsed.rejected_ids.empty()) {
      FileObjects previous = Unpack(current);
      for (const std::string& id : parsed.rejected_ids) {
        if (next.contains(id)) continue;
        auto old = previous.find(id);
        if (old == previous.end()) continue;
        next.emplace(id, std::move(old->second));
        result.errors.push_back(
            {name, id, "", "is invalid; its last good version stays in force", /*warning=*/true});
      }
    }
    size_t errors_end = result.errors.size();  // Merge's own errors are made anew each load
    if (KeptObjects packed = Pack(std::move(next)); !(packed == current)) {
      current = std::move(packed);
      ++version_;
    }
    Merge(name, current, &result, &scratch);
    // Remembered only when the file parsed cleanly as a whole and nothing of an earlier version
    // was kept: then the same bytes always give the same objects and errors.
    if (stat_ok && parsed.rejected_ids.empty()) {
      parsed_[name] = Parsed{stamp, std::vector<ConfigError>(result.errors.begin() + errors_before,
                                                             result.errors.begin() + errors_end)};
    }
  }
  Finish(extra, &result, &scratch);
  return result;
}

void DirectoryLoader::Finish(ExternalObjects* extra, LoadResult* result, Scratch* scratch) {
  KeptObjects packed;
  if (extra != nullptr) {
    std::move(extra->errors.begin(), extra->errors.end(), std::back_inserter(result->errors));
    extra->errors.clear();
    packed = Pack(std::move(extra->objects));
    extra->objects.clear();
  }
  if (!(packed == extra_kept_)) {
    extra_kept_ = std::move(packed);
    ++version_;
  }
  if (extra != nullptr) Merge(extra->name, extra_kept_, result, scratch);
  WarnIgnoredPolicies(result);
  CheckCustomProviders(result);
  ResolvePodAddresses(result);
  WarnWaypointProblems(result);
}

namespace {

// Every pod's id ("Pod namespace/name") starts so; sorted ids keep them together.
constexpr absl::string_view kPodIdPrefix = "Pod ";

std::string PodId(const state::Pod& pod) { return absl::StrCat(kPodIdPrefix, pod.Key()); }

}  // namespace

DirectoryLoader::KeptObjects DirectoryLoader::Pack(FileObjects objects) {
  KeptObjects kept;
  for (auto it = objects.begin(); it != objects.end();) {
    if (const auto* pod = std::get_if<state::Pod>(&it->second); pod != nullptr) {
      kept.pods.Add(*pod);
      it = objects.erase(it);
    } else {
      ++it;
    }
  }
  kept.pods.ShrinkToFit();
  kept.objects = std::move(objects);
  return kept;
}

DirectoryLoader::FileObjects DirectoryLoader::Unpack(const KeptObjects& kept) {
  FileObjects objects = kept.objects;
  state::PodPack::Reader reader(kept.pods);
  state::Pod pod;
  while (reader.Next(&pod)) objects.emplace(PodId(pod), pod);
  return objects;
}

void DirectoryLoader::Merge(const std::string& file, const KeptObjects& kept, LoadResult* result,
                            Scratch* scratch) const {
  state::ClusterState& state = result->state;
  SecurityConfig& security = result->security;
  // The pods go where their ids sort among the other objects, so that errors come in id order.
  bool pods_merged = false;
  auto merge_pods = [&] {
    pods_merged = true;
    state::PodPack::Reader reader(kept.pods);
    state::Pod pod;
    while (reader.Next(&pod)) {
      std::string id = PodId(pod);
      auto [owner, inserted] = scratch->owners.emplace(id, file);
      if (!inserted) {
        result->errors.push_back({file, id, "",
                                  absl::StrCat("is also defined in ", owner->second,
                                               "; the one in ", owner->second, " is used")});
        continue;
      }
      pod.labels.Intern(&scratch->labels);
      std::string key = pod.Key();
      state.pods.insert_or_assign(std::move(key), std::move(pod));
      pod = state::Pod();
    }
  };
  for (const auto& [id, object] : kept.objects) {
    if (!pods_merged && absl::string_view(id) > kPodIdPrefix) merge_pods();
    auto [owner, inserted] = scratch->owners.emplace(id, file);
    if (!inserted) {
      result->errors.push_back({file, id, "",
                                absl::StrCat("is also defined in ", owner->second, "; the one in ",
                                             owner->second, " is used")});
      continue;
    }
    std::visit(
        [&state, &security](const auto& o) {
          using T = std::decay_t<decltype(o)>;
          if constexpr (std::is_same_v<T, authz::PeerAuthentication>) {
            security.peer_authentications[o.Key()] = o;
          } else if constexpr (std::is_same_v<T, authz::Policy>) {
            security.authorization_policies[o.Key()] = o;
          } else if constexpr (std::is_same_v<T, authn::RequestAuthentication>) {
            security.request_authentications[o.Key()] = o;
          } else if constexpr (std::is_same_v<T, state::Pod>) {
            state.pods[o.Key()] = o;
          } else if constexpr (std::is_same_v<T, state::Namespace>) {
            state.namespaces[o.name] = o;
          } else if constexpr (std::is_same_v<T, state::Service>) {
            state.services[o.Key()] = o;
          } else if constexpr (std::is_same_v<T, state::Gateway>) {
            state.gateways[o.Key()] = o;
          } else {
            static_assert(std::is_same_v<T, state::MeshConfig>);
            state.mesh = o;
          }
        },
        object);
  }
  if (!pods_merged) merge_pods();
}

}  // namespace ambit::config
