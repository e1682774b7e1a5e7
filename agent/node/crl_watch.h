#pragma once

// Follows `ambitd --crl-file` the way a mounted ConfigMap changes (a symlink swap, an edit in
// place): the file is read again on every heartbeat tick and, when its bytes changed, checked
// (ca::ParseCrlFile). A good file replaces the CRLs in force; a malformed one is reported once
// and the last good CRLs stay; a missing file is reported once and also keeps them (ztunnel waits
// for a CRL_PATH that is mounted later). Control thread only.

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace ambit::node {

class CrlWatch {
 public:
  explicit CrlWatch(std::string path) : path_(std::move(path)) {}

  // Reads the file again; true when the CRLs in force changed (send them to the data planes).
  // `roots` is the trust bundle the CRLs of a root must be signed by.
  bool Poll(const std::vector<std::string>& roots);

  const std::string& path() const { return path_; }
  // The PEM CRLs in force (empty: none yet, or the file holds none).
  const std::vector<std::string>& pems() const { return pems_; }
  // Why the file on disk is not the one in force; OK when it is.
  const absl::Status& problem() const { return problem_; }

 private:
  std::string path_;
  bool read_once_ = false;
  std::string content_;  // the bytes last read, good or not
  std::vector<std::string> pems_;
  absl::Status problem_;
};

}  // namespace ambit::node
