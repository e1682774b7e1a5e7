#pragma once

#include <map>
#include <string>
#include <string_view>

#include "agent/config/kube_yaml.h"
#include "agent/config/load_result.h"

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
// and is left out.
// Not thread-safe; one owner.
class DirectoryLoader {
 public:
  explicit DirectoryLoader(std::string dir);

  LoadResult Load();
  const std::string& dir() const { return dir_; }

 private:
  // The objects of one file that are currently in force, by ParsedObject::id.
  using FileObjects = std::map<std::string, ConfigObject>;

  void Merge(const std::string& file, const FileObjects& objects, LoadResult* result,
             std::map<std::string, std::string>* owners) const;

  std::string dir_;
  std::map<std::string, FileObjects> files_;  // by file name, so in load order
};

}  // namespace ambit::config
