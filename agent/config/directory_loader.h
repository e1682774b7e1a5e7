#pragma once

#include <cstdint>
#include <map>
#include <memory_resource>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/config/kube_yaml.h"
#include "agent/config/load_result.h"
#include "agent/state/pod_pack.h"

namespace ambit::config {

// True for the names the loader reads: *.yaml and *.yml, except hidden files (".x.yaml", which
// includes Emacs' ".#x.yaml" locks and most tools' temporary files).
bool IsConfigFileName(std::string_view name);

// Reads every config file (IsConfigFileName) directly in dir, sorted by name; symlinks are
// followed, subdirectories are not entered. Keeps memory between calls: when a file can no longer
// be read or parsed at all, or an object that was valid before is now invalid, the last good
// version of those objects stays in the state (the error is still reported). A deleted file
// removes its objects. If the directory itself cannot be read, the error is reported and the
// previous state stays. A duplicate object (same kind, namespace and name in two files) is an
// error naming both files; the first by file name wins. A CUSTOM AuthorizationPolicy whose
// provider is not an ext_authz entry of the merged mesh config's extensionProviders is an error
// and is left out. Two pods claiming one address: the older keeps it (state::IsOlder: the
// creationTimestamp, else when this loader first saw the pod, then namespace/name), the other is
// an error naming both pods and files and stays in the state without addresses
// (ClusterState::ip_conflicts). Files together may hold at most kMaxConfigBytes; the files past
// that total (by name) are not read, with an error, and their last good objects stay in force.
// Not thread-safe; one owner.
// The most a config directory may hold, all files together: about 8 times a 100 000-pod cluster.
inline constexpr uint64_t kMaxConfigBytes = uint64_t{256} << 20;

// Objects from outside the directory (the API server's), merged after every file as one more
// source named `name`: an object defined in a file too is an error naming both, and the file's
// is used. Checks that need every object (address conflicts, CUSTOM providers, waypoints) run on
// the merged whole.
struct ExternalObjects {
  std::string name;                             // "apiserver": errors and source_file say it
  std::map<std::string, ConfigObject> objects;  // by ParsedObject::id
  std::vector<ConfigError> errors;              // reported after the files' own
};

class DirectoryLoader {
 public:
  // clock stamps when a pod is first seen; it must outlive the loader.
  explicit DirectoryLoader(std::string dir, const Clock* clock = &RealClock::Get(),
                           uint64_t max_config_bytes = kMaxConfigBytes);

  LoadResult Load() { return Load(nullptr); }
  // The same, merged with `extra` (see ExternalObjects).
  LoadResult Load(ExternalObjects* extra);
  const std::string& dir() const { return dir_; }

  // What tells two loads' results apart without keeping a copy of either (a copy is a large
  // cluster's pods once more): the loader's version, bumped by every load in which the objects in
  // force may have changed (a file's or `extra`'s objects differ, a file came or went), and the
  // errors. Equal stamps: equal results.
  struct ResultStamp {
    uint64_t version = 0;
    std::vector<ConfigError> errors;
    friend bool operator==(const ResultStamp&, const ResultStamp&) = default;
  };
  ResultStamp StampOf(const LoadResult& result) const { return {version_, result.errors}; }

 private:
  // The objects of one file that are currently in force, by ParsedObject::id.
  using FileObjects = std::map<std::string, ConfigObject>;
  // The same, as kept between loads: pods (the bulk of a large cluster) packed, in id order,
  // everything else as it is.
  struct KeptObjects {
    FileObjects objects;  // every kind but Pod
    state::PodPack pods;
    bool empty() const { return objects.empty() && pods.empty(); }
    friend bool operator==(const KeptObjects&, const KeptObjects&) = default;
  };
  static KeptObjects Pack(FileObjects objects);
  static FileObjects Unpack(const KeptObjects& kept);

  // What one load's merge keeps on the side. The owners (object id -> the file it is taken from)
  // are in an arena of their own: allocated between the pods of the state being built, they
  // would leave a hole beside every pod once freed (about 150 bytes of resident memory a pod, in
  // a process holding 100 000).
  struct Scratch {
    std::pmr::monotonic_buffer_resource arena;
    std::pmr::map<std::pmr::string, std::pmr::string> owners{&arena};
    state::LabelPool labels;  // pods with equal labels share one map
  };
  void Merge(const std::string& file, const KeptObjects& kept, LoadResult* result,
             Scratch* scratch) const;
  // Merges `extra`, then runs the checks that need every object.
  void Finish(ExternalObjects* extra, LoadResult* result, Scratch* scratch);

  // What identifies one version of a file without reading it: a rewrite (in place or by
  // rename) changes the inode, the size or a timestamp.
  struct Stamp {
    uint64_t dev = 0, ino = 0, size = 0;
    int64_t mtime_ns = 0, ctime_ns = 0;
    friend bool operator==(const Stamp&, const Stamp&) = default;
  };
  // A file parsed earlier and unchanged since: its objects are in files_, its parse errors here,
  // so a load re-parses only what changed (a large cluster's files take seconds to parse).
  struct Parsed {
    Stamp stamp;
    std::vector<ConfigError> errors;
  };

  std::string dir_;
  const Clock* clock_;
  uint64_t max_config_bytes_;
  std::map<std::string, KeptObjects> files_;  // by file name, so in load order
  std::map<std::string, Parsed> parsed_;      // by file name
  // Stamps every pod with when it was first seen, then settles address conflicts.
  void ResolvePodAddresses(LoadResult* result);
  struct Sight {
    absl::Time time;
    uint64_t load;
  };
  // By a hash of Pod::Key(), pods of the last load only. A hash, not the key: this is held for
  // every pod of the cluster, and two pods sharing a 64-bit hash (about one chance in 10^9 at
  // 100 000 pods) would only share a first sighting, which orders nothing but the rare address
  // conflict between them.
  absl::flat_hash_map<uint64_t, Sight> first_seen_;
  uint64_t loads_ = 0;
  uint64_t version_ = 0;    // see ResultStamp
  KeptObjects extra_kept_;  // `extra`'s objects in the last load
};

}  // namespace ambit::config
