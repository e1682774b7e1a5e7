#include "agent/cni/install.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/common/status.h"
#include "agent/common/unique_fd.h"

namespace ambit::cni {
namespace {

using Json = nlohmann::ordered_json;

// Network configurations larger than this are not ours to rewrite.
constexpr size_t kMaxConfFile = 1 << 20;

std::string Dump(const Json& j) {
  return j.dump(2, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace) + "\n";
}

bool IsOurs(const Json& plugin) {
  auto it = plugin.find("type");
  return it != plugin.end() && it->is_string() && it->get_ref<const std::string&>() == kPluginType;
}

absl::StatusOr<Json> ParseObject(absl::string_view text, absl::string_view file) {
  Json j = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": not valid JSON; left untouched (fix or remove it, then retry)"));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": not a JSON object; left untouched"));
  }
  return j;
}

absl::Status CheckPlugins(const Json& j, absl::string_view file) {
  auto it = j.find("plugins");
  if (it == j.end() || !it->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": \"plugins\" missing or not a list; left untouched"));
  }
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& p = (*it)[i];
    if (!p.is_object() || !p.contains("type") || !p["type"].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": \"plugins\"[", i, "] has no \"type\" string; left untouched"));
    }
  }
  return absl::OkStatus();
}

Json Entry(const Json& entry) {
  Json e = Json::object();
  e["type"] = std::string(kPluginType);
  for (auto it = entry.begin(); it != entry.end(); ++it) {
    if (it.key() != "type") e[it.key()] = it.value();
  }
  return e;
}

std::string Join(const std::string& dir, const std::string& name) {
  return absl::StrCat(dir, "/", name);
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::ErrnoToStatus(errno, absl::StrCat("read ", path));
    if (n == 0) break;
    out.append(buf, n);
    if (out.size() > kMaxConfFile) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": larger than ", kMaxConfFile, " bytes; left untouched"));
    }
  }
  return out;
}

absl::Status WriteAll(int fd, absl::string_view data, const std::string& what) {
  while (!data.empty()) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::ErrnoToStatus(errno, absl::StrCat("write ", what));
    data.remove_prefix(n);
  }
  return absl::OkStatus();
}

// Writes a complete file next to `path` (a name no runtime reads: no .conf/.conflist/.json
// suffix), flushes it, then renames it over `path`.
absl::Status ReplaceFile(const std::string& path, absl::string_view data, mode_t mode) {
  size_t slash = path.rfind('/');
  std::string tmp = absl::StrCat(path.substr(0, slash + 1), ".", path.substr(slash + 1), ".",
                                 getpid(), ".ambit-tmp");
  {
    UniqueFd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
    if (!fd) return absl::ErrnoToStatus(errno, absl::StrCat("create ", tmp));
    absl::Status s = WriteAll(fd.get(), data, tmp);
    if (s.ok() && fchmod(fd.get(), mode) < 0) s = absl::ErrnoToStatus(errno, "fchmod " + tmp);
    if (s.ok() && fsync(fd.get()) < 0) s = absl::ErrnoToStatus(errno, "fsync " + tmp);
    if (!s.ok()) {
      unlink(tmp.c_str());
      return s;
    }
  }
  if (rename(tmp.c_str(), path.c_str()) < 0) {
    absl::Status s = absl::ErrnoToStatus(errno, absl::StrCat("rename ", tmp, " to ", path));
    unlink(tmp.c_str());
    return s;
  }
  return absl::OkStatus();
}

mode_t ModeOf(const std::string& path, mode_t fallback) {
  struct stat st;
  if (stat(path.c_str(), &st) < 0) return fallback;
  return st.st_mode & 07777;
}

bool IsConfName(const std::string& name) {
  return absl::EndsWith(name, ".conf") || absl::EndsWith(name, ".conflist") ||
         absl::EndsWith(name, ".json");
}

// The network configuration files of dir in the order libcni lists them (by name).
absl::StatusOr<std::vector<std::string>> ConfFiles(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return absl::ErrnoToStatus(errno, absl::StrCat("CNI conf dir ", dir));
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (!IsConfName(name)) continue;
    struct stat st;
    if (stat(Join(dir, name).c_str(), &st) == 0 && S_ISREG(st.st_mode)) names.push_back(name);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

absl::Status InstallBinary(const InstallOptions& options) {
  UniqueFd in(open(options.self.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return absl::ErrnoToStatus(errno, absl::StrCat("open ", options.self));
  std::string target = Join(options.bin_dir, std::string(kPluginType));
  std::string tmp = Join(options.bin_dir, absl::StrCat(".", kPluginType, ".", getpid(), ".tmp"));
  UniqueFd out(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755));
  if (!out) return absl::ErrnoToStatus(errno, absl::StrCat("create ", tmp, " in CNI bin dir"));
  char buf[1 << 16];
  absl::Status s;
  for (;;) {
    ssize_t n = read(in.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      s = absl::ErrnoToStatus(errno, absl::StrCat("read ", options.self));
      break;
    }
    if (n == 0) break;
    s = WriteAll(out.get(), absl::string_view(buf, n), tmp);
    if (!s.ok()) break;
  }
  if (s.ok() && fchmod(out.get(), 0755) < 0) s = absl::ErrnoToStatus(errno, "fchmod " + tmp);
  if (s.ok() && fsync(out.get()) < 0) s = absl::ErrnoToStatus(errno, "fsync " + tmp);
  out.Reset();
  // A running runtime may be executing the old binary: rename replaces the name, not the file.
  if (s.ok() && rename(tmp.c_str(), target.c_str()) < 0) {
    s = absl::ErrnoToStatus(errno, absl::StrCat("rename ", tmp, " to ", target));
  }
  if (!s.ok()) unlink(tmp.c_str());
  return s;
}

}  // namespace

absl::StatusOr<std::string> ConflistWithPlugin(absl::string_view text, absl::string_view file,
                                               const Json& entry) {
  AMBIT_ASSIGN_OR_RETURN(Json j, ParseObject(text, file));
  AMBIT_RETURN_IF_ERROR(CheckPlugins(j, file));
  Json& plugins = j["plugins"];
  Json kept = Json::array();
  std::optional<Json> converted_from;
  for (const Json& p : plugins) {
    if (IsOurs(p)) {
      // A re-install keeps the note that lets --uninstall restore the original *.conf.
      if (auto c = p.find(kConvertedFromKey); c != p.end()) converted_from = *c;
    } else {
      kept.push_back(p);
    }
  }
  Json e = Entry(entry);
  if (converted_from.has_value()) e[std::string(kConvertedFromKey)] = *converted_from;
  kept.push_back(std::move(e));
  plugins = std::move(kept);
  return Dump(j);
}

absl::StatusOr<std::string> ConfToConflist(absl::string_view text, absl::string_view file,
                                           const Json& entry) {
  AMBIT_ASSIGN_OR_RETURN(Json j, ParseObject(text, file));
  if (j.contains("plugins")) return ConflistWithPlugin(text, file, entry);
  if (!j.contains("type") || !j["type"].is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": neither \"plugins\" nor a \"type\" string; left untouched"));
  }
  if (IsOurs(j)) {
    return absl::InvalidArgumentError(
        absl::StrCat(file,
                     ": the primary network configuration is ambit-cni alone; ambit-cni "
                     "must be chained after the plug-in that creates the interface"));
  }
  Json out = Json::object();
  for (const char* key : {"cniVersion", "name"}) {
    if (j.contains(key)) out[key] = j[key];
  }
  Json plugin = Json::object();
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() != "cniVersion" && it.key() != "name") plugin[it.key()] = it.value();
  }
  Json e = Entry(entry);
  size_t slash = file.rfind('/');
  e[std::string(kConvertedFromKey)] =
      std::string(slash == absl::string_view::npos ? file : file.substr(slash + 1));
  out["plugins"] = Json::array({std::move(plugin), std::move(e)});
  return Dump(out);
}

absl::StatusOr<std::optional<Removed>> WithoutPlugin(absl::string_view text,
                                                     absl::string_view file) {
  AMBIT_ASSIGN_OR_RETURN(Json j, ParseObject(text, file));
  if (!j.contains("plugins")) return std::nullopt;  // a single plug-in file: never ours
  AMBIT_RETURN_IF_ERROR(CheckPlugins(j, file));
  Json kept = Json::array();
  std::optional<std::string> converted_from;
  bool found = false;
  for (const Json& p : j["plugins"]) {
    if (!IsOurs(p)) {
      kept.push_back(p);
      continue;
    }
    found = true;
    if (auto c = p.find(kConvertedFromKey); c != p.end() && c->is_string()) {
      converted_from = c->get<std::string>();
    }
  }
  if (!found) return std::nullopt;
  std::string dir;
  if (size_t slash = file.rfind('/'); slash != absl::string_view::npos) {
    dir = std::string(file.substr(0, slash + 1));
  }
  // Only a plain file name ending in .conf names the file to restore; anything else stays a
  // conflist, which means the same to a runtime.
  if (converted_from.has_value() && kept.size() == 1 && kept[0].is_object() &&
      (absl::EndsWith(*converted_from, ".conf") || absl::EndsWith(*converted_from, ".json")) &&
      converted_from->find('/') == std::string::npos && (*converted_from)[0] != '.') {
    Json conf = Json::object();
    for (const char* key : {"cniVersion", "name"}) {
      if (j.contains(key)) conf[key] = j[key];
    }
    for (auto it = kept[0].begin(); it != kept[0].end(); ++it) conf[it.key()] = it.value();
    return Removed{Dump(conf), dir + *converted_from};
  }
  j["plugins"] = std::move(kept);
  return Removed{Dump(j), std::string(file)};
}

absl::StatusOr<InstallReport> Install(const InstallOptions& options) {
  // The binary first: a configuration naming ambit-cni before it exists would fail every pod.
  AMBIT_RETURN_IF_ERROR(InstallBinary(options));
  AMBIT_ASSIGN_OR_RETURN(std::vector<std::string> files, ConfFiles(options.conf_dir));
  if (files.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CNI conf dir ", options.conf_dir,
        ": no *.conf, *.conflist or *.json: the primary CNI has not written its network "
        "configuration yet (ambit-cni chains after it; retry once it has)"));
  }
  InstallReport report;
  const std::string path = Join(options.conf_dir, files[0]);
  AMBIT_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  AMBIT_ASSIGN_OR_RETURN(Json parsed, ParseObject(text, path));
  mode_t mode = ModeOf(path, 0644);
  if (parsed.contains("plugins")) {
    AMBIT_ASSIGN_OR_RETURN(std::string updated, ConflistWithPlugin(text, path, options.entry));
    report.conf_file = path;
    if (updated != text) {
      AMBIT_RETURN_IF_ERROR(ReplaceFile(path, updated, mode));
      report.conf_changed = true;
    }
    return report;
  }
  AMBIT_ASSIGN_OR_RETURN(std::string conflist, ConfToConflist(text, path, options.entry));
  // A single-plug-in *.json keeps its name (a runtime reads either shape from it).
  std::string target = path;
  if (absl::EndsWith(target, ".conf")) target += "list";
  if (target != path && access(target.c_str(), F_OK) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is a single plug-in and ", target,
                     " exists too; cannot convert it (remove one of them)"));
  }
  AMBIT_RETURN_IF_ERROR(ReplaceFile(target, conflist, mode));
  // The conflist sorts right after the *.conf it replaces, so it is the primary once that goes.
  if (target != path && unlink(path.c_str()) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("remove ", path, " after converting it"));
  }
  report.conf_file = target;
  report.conf_changed = true;
  report.converted = true;
  return report;
}

absl::Status Uninstall(const InstallOptions& options) {
  absl::StatusOr<std::vector<std::string>> files = ConfFiles(options.conf_dir);
  if (!files.ok() && files.status().code() != absl::StatusCode::kNotFound) return files.status();
  for (const std::string& name : files.value_or(std::vector<std::string>{})) {
    const std::string path = Join(options.conf_dir, name);
    AMBIT_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
    absl::StatusOr<std::optional<Removed>> removed = WithoutPlugin(text, path);
    // Files that are not ours to read are left as they are; only the primary was ever edited.
    if (!removed.ok()) {
      if (!absl::StrContains(text, kPluginType)) continue;
      return removed.status();
    }
    if (!removed->has_value()) continue;
    const Removed& r = **removed;
    if (r.file != path && access(r.file.c_str(), F_OK) == 0) {
      // The original name is taken again: keep the conflist form, without ambit-cni.
      AMBIT_ASSIGN_OR_RETURN(Json j, ParseObject(text, path));
      Json kept = Json::array();
      for (const Json& p : j["plugins"]) {
        if (!IsOurs(p)) kept.push_back(p);
      }
      j["plugins"] = std::move(kept);
      AMBIT_RETURN_IF_ERROR(ReplaceFile(path, Dump(j), ModeOf(path, 0644)));
      continue;
    }
    AMBIT_RETURN_IF_ERROR(ReplaceFile(r.file, r.text, ModeOf(path, 0644)));
    if (r.file != path && unlink(path.c_str()) < 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("remove ", path, " after restoring ", r.file));
    }
  }
  std::string bin = Join(options.bin_dir, std::string(kPluginType));
  if (unlink(bin.c_str()) < 0 && errno != ENOENT) {
    return absl::ErrnoToStatus(errno, absl::StrCat("remove ", bin));
  }
  return absl::OkStatus();
}

}  // namespace ambit::cni
