#pragma once

// Finds a pod's network namespace by its IP, for pods that do not name one (ambit.dev/netns):
// in a cluster the API server knows a pod's IPs but not its namespace, while the container
// runtime bind-mounts every pod's namespace under one directory (/var/run/netns for CRI
// runtimes). The namespace whose non-loopback interfaces hold the pod's IP is the pod's.
//
// Never a guess: two namespaces holding one of the pod's IPs is an error, and a namespace that
// is the node's own (NodeNetnsGuard) is refused. Scans are cached by namespace identity (nsfs
// inode), a cached answer is re-checked before it is used, and a miss re-scans at most once
// per back-off interval (doubling while misses last, reset when a scan finds a pod), so a pod
// whose namespace never appears costs a bounded number of scans.
//
// Thread-safety: none; used from ambitd's control thread.

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/common/ip_address.h"
#include "agent/common/unique_fd.h"
#include "agent/enroll/node_netns.h"

namespace ambit::enroll {

// The kernel side of a scan, behind an interface so the finder's logic is tested without root.
class NetnsProbe {
 public:
  virtual ~NetnsProbe() = default;
  // The entries of dir (full paths), sorted. NotFound when dir does not exist.
  virtual absl::StatusOr<std::vector<std::string>> List(const std::string& dir) = 0;
  // Opens a namespace file; fails for a file that is not a network namespace.
  virtual absl::StatusOr<UniqueFd> Open(const std::string& path) = 0;
  virtual absl::StatusOr<NetnsIdentity> Identify(int fd) = 0;
  // The addresses on the namespace's interfaces other than loopback (RTM_GETADDR inside it).
  virtual absl::StatusOr<std::vector<IpAddress>> Addresses(int fd) = 0;
};

// The real one: directory listing, open(2), fstat, and a netlink dump on a thread that joined
// the namespace (RunInNetns).
std::unique_ptr<NetnsProbe> MakeKernelNetnsProbe();

// One scanned namespace file.
struct ScannedNetns {
  std::string path;
  NetnsIdentity id;
  std::vector<IpAddress> addresses;
  std::string forbidden;  // non-empty: the node's namespace (the guard's reason)
};

// The namespaces among `scanned` that hold any of `ips`. Pure.
std::vector<const ScannedNetns*> HoldersOf(const std::vector<ScannedNetns>& scanned,
                                           const std::vector<IpAddress>& ips);

// The verdict on the holders of a pod's IPs: the one namespace, or why none is used.
// NotFound: none holds them. FailedPrecondition: more than one does (named). PermissionDenied:
// the one holding them is the node's own. Pure.
absl::StatusOr<const ScannedNetns*> PickHolder(const std::vector<const ScannedNetns*>& holders,
                                               const std::vector<IpAddress>& ips);

class NetnsFinder {
 public:
  struct Options {
    std::string dir = "/var/run/netns";
    // Also scanned, never chosen: an IP found only there is the node's (a hostNetwork pod).
    std::vector<std::string> extra_paths = {"/proc/self/ns/net"};
    absl::Duration min_rescan = absl::Milliseconds(200);
    absl::Duration max_rescan = absl::Seconds(5);
  };

  NetnsFinder(Options options, std::unique_ptr<NetnsProbe> probe, const NodeNetnsGuard* guard,
              const Clock* clock)
      : options_(std::move(options)), probe_(std::move(probe)), guard_(guard), clock_(clock) {}

  struct Found {
    UniqueFd fd;  // the namespace, opened and checked against the node's
    std::string path;
  };
  // The namespace holding the pod's IPs. Errors name the directory and the IPs: Unavailable
  // when none holds them (retry: a re-scan may find it), FailedPrecondition when several do,
  // PermissionDenied when it is the node's own, InvalidArgument when the pod has no IP.
  absl::StatusOr<Found> Find(const std::vector<IpAddress>& ips);

  // Scans done so far (for tests and logs).
  int scans() const { return scans_; }

 private:
  absl::Status Rescan();
  // Re-checks a cached namespace before it is used: same file, same inode, still holding one of
  // the IPs. The entry is dropped from the cache when not.
  absl::StatusOr<Found> Revalidate(const ScannedNetns& entry, const std::vector<IpAddress>& ips);

  Options options_;
  std::unique_ptr<NetnsProbe> probe_;
  const NodeNetnsGuard* guard_;
  const Clock* clock_;
  std::vector<ScannedNetns> cache_;  // the last scan, one entry per namespace identity
  std::optional<absl::Time> last_scan_;
  absl::Duration backoff_ = absl::ZeroDuration();
  std::string last_scan_error_;  // why the last scan could not read the directory
  int scans_ = 0;
};

}  // namespace ambit::enroll
