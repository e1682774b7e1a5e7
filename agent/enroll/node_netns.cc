#include "agent/enroll/node_netns.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/common/unique_fd.h"

namespace ambit::enroll {
namespace {

absl::StatusOr<NetnsIdentity> IdentifyPath(const char* path, std::string what) {
  UniqueFd fd(open(path, O_RDONLY | O_CLOEXEC));
  if (!fd) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  auto id = IdentifyNetns(fd.get());
  if (!id.ok()) return id.status();
  id->what = std::move(what);
  return id;
}

}  // namespace

absl::StatusOr<NetnsIdentity> IdentifyNetns(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, "fstat of a network namespace");
  NetnsIdentity id;
  id.dev = st.st_dev;
  id.ino = st.st_ino;
  return id;
}

absl::StatusOr<NodeNetnsGuard> NodeNetnsGuard::ForThisProcess() {
  std::vector<NetnsIdentity> forbidden;
  auto own = IdentifyPath("/proc/self/ns/net", "ambitd's own network namespace");
  if (!own.ok()) {
    return absl::Status(own.status().code(),
                        absl::StrCat("identify ambitd's own network namespace to keep it from "
                                     "being enrolled: ",
                                     own.status().message()));
  }
  forbidden.push_back(*std::move(own));
  std::string unchecked;
  auto host = IdentifyPath("/proc/1/ns/net", "the host's network namespace (that of PID 1)");
  if (host.ok()) {
    forbidden.push_back(*std::move(host));
  } else {
    unchecked =
        absl::StrCat("the network namespace of PID 1 cannot be identified (",
                     host.status().message(), "); only ambitd's own is refused by identity");
  }
  return NodeNetnsGuard(std::move(forbidden), std::move(unchecked));
}

absl::Status NodeNetnsGuard::Check(int netns_fd) const {
  auto id = IdentifyNetns(netns_fd);
  if (!id.ok()) return id.status();
  return Check(*id);
}

absl::Status NodeNetnsGuard::Check(const NetnsIdentity& id) const {
  std::vector<std::string> matches;
  for (const NetnsIdentity& f : forbidden_) {
    if (f == id) matches.push_back(f.what);
  }
  if (matches.empty()) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      "it is ", absl::StrJoin(matches, " and "),
      ", not a pod's: a pod must have a network namespace of its own, so it is not enrolled"));
}

}  // namespace ambit::enroll
