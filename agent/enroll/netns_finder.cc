#include "agent/enroll/netns_finder.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/nsfs.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <sched.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/common/netns.h"
#include "agent/common/status.h"

namespace ambit::enroll {
namespace {

// The loopback device is the first device of every network namespace (LOOPBACK_IFINDEX).
constexpr int kLoopbackIfindex = 1;

std::string IpList(const std::vector<IpAddress>& ips) {
  return absl::StrJoin(ips, ", ",
                       [](std::string* out, const IpAddress& ip) { out->append(ip.ToString()); });
}

bool HoldsAny(const ScannedNetns& n, const std::vector<IpAddress>& ips) {
  for (const auto& ip : ips) {
    if (std::find(n.addresses.begin(), n.addresses.end(), ip) != n.addresses.end()) return true;
  }
  return false;
}

struct NlSockDeleter {
  void operator()(nl_sock* s) const { nl_socket_free(s); }
};
struct NlCacheDeleter {
  void operator()(nl_cache* c) const { nl_cache_free(c); }
};

class KernelNetnsProbe final : public NetnsProbe {
 public:
  absl::StatusOr<std::vector<std::string>> List(const std::string& dir) override {
    std::error_code ec;
    std::vector<std::string> out;
    for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      out.push_back(it->path().string());
    }
    if (ec) {
      return absl::Status(ec == std::errc::no_such_file_or_directory
                              ? absl::StatusCode::kNotFound
                              : absl::StatusCode::kUnavailable,
                          absl::StrCat("list ", dir, ": ", ec.message()));
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  absl::StatusOr<UniqueFd> Open(const std::string& path) override {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    if (!fd) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
    // `ip netns add` creates the file before it bind-mounts the namespace on it, and anything
    // else may lie in the directory: only a network namespace counts.
    const int type = ioctl(fd.get(), NS_GET_NSTYPE);
    if (type != CLONE_NEWNET) {
      return absl::FailedPreconditionError(absl::StrCat(path, " is not a network namespace file"));
    }
    return fd;
  }

  absl::StatusOr<NetnsIdentity> Identify(int fd) override { return IdentifyNetns(fd); }

  absl::StatusOr<std::vector<IpAddress>> Addresses(int fd) override {
    std::vector<IpAddress> out;
    AMBIT_RETURN_IF_ERROR(RunInNetns(fd, [&]() -> absl::Status {
      std::unique_ptr<nl_sock, NlSockDeleter> sock(nl_socket_alloc());
      if (!sock) return absl::ResourceExhaustedError("allocate netlink socket");
      int err = nl_connect(sock.get(), NETLINK_ROUTE);
      if (err < 0) {
        return absl::InternalError(absl::StrCat("connect rtnetlink: ", nl_geterror(err)));
      }
      nl_cache* raw = nullptr;
      err = rtnl_addr_alloc_cache(sock.get(), &raw);
      if (err < 0) {
        return absl::InternalError(
            absl::StrCat("dump addresses (RTM_GETADDR): ", nl_geterror(err)));
      }
      std::unique_ptr<nl_cache, NlCacheDeleter> cache(raw);
      for (nl_object* o = nl_cache_get_first(cache.get()); o != nullptr; o = nl_cache_get_next(o)) {
        auto* addr = reinterpret_cast<rtnl_addr*>(o);
        if (rtnl_addr_get_ifindex(addr) == kLoopbackIfindex) continue;
        nl_addr* local = rtnl_addr_get_local(addr);
        if (local == nullptr) continue;
        const int family = nl_addr_get_family(local);
        const auto* bytes = static_cast<const uint8_t*>(nl_addr_get_binary_addr(local));
        if (family == AF_INET && nl_addr_get_len(local) == 4) {
          in_addr a;
          memcpy(&a, bytes, 4);
          out.push_back(IpAddress::FromV4(a));
        } else if (family == AF_INET6 && nl_addr_get_len(local) == 16) {
          in6_addr a;
          memcpy(&a, bytes, 16);
          out.push_back(IpAddress::FromV6(a));
        }
      }
      return absl::OkStatus();
    }));
    return out;
  }
};

}  // namespace

std::unique_ptr<NetnsProbe> MakeKernelNetnsProbe() { return std::make_unique<KernelNetnsProbe>(); }

std::vector<const ScannedNetns*> HoldersOf(const std::vector<ScannedNetns>& scanned,
                                           const std::vector<IpAddress>& ips) {
  std::vector<const ScannedNetns*> out;
  for (const auto& n : scanned) {
    if (HoldsAny(n, ips)) out.push_back(&n);
  }
  return out;
}

absl::StatusOr<const ScannedNetns*> PickHolder(const std::vector<const ScannedNetns*>& holders,
                                               const std::vector<IpAddress>& ips) {
  if (holders.empty()) {
    return absl::NotFoundError(
        absl::StrCat("no network namespace holds IP ", IpList(ips), " on an interface"));
  }
  if (holders.size() > 1) {
    std::vector<std::string> names;
    for (const ScannedNetns* h : holders) {
      names.push_back(h->forbidden.empty() ? h->path : absl::StrCat(h->path, " (the node's)"));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "IP ", IpList(ips), " is held by ", holders.size(), " network namespaces (",
        absl::StrJoin(names, ", "), "): not guessing which is the pod's; not enrolled"));
  }
  if (!holders[0]->forbidden.empty()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "IP ", IpList(ips), " is held by ", holders[0]->path, ", which is ", holders[0]->forbidden,
        " (a pod on the node's network, hostNetwork, is not enrolled)"));
  }
  return holders[0];
}

absl::Status NetnsFinder::Rescan() {
  ++scans_;
  last_scan_ = clock_->Now();
  std::vector<std::string> paths;
  auto listed = probe_->List(options_.dir);
  if (listed.ok()) {
    paths = *std::move(listed);
    last_scan_error_.clear();
  } else {
    last_scan_error_ = std::string(listed.status().message());
  }
  paths.insert(paths.end(), options_.extra_paths.begin(), options_.extra_paths.end());
  std::vector<ScannedNetns> scanned;
  for (const auto& path : paths) {
    // A namespace removed or half-created while the directory is read is skipped: its pod, if
    // any, is found by a later scan.
    auto fd = probe_->Open(path);
    if (!fd.ok()) continue;
    auto id = probe_->Identify(fd->get());
    if (!id.ok()) continue;
    // One namespace bound under two names is one namespace, not two holders of its IPs.
    if (std::any_of(scanned.begin(), scanned.end(),
                    [&](const ScannedNetns& s) { return s.id == *id; })) {
      continue;
    }
    ScannedNetns entry;
    entry.path = path;
    entry.id = *id;
    if (guard_ != nullptr) {
      if (absl::Status s = guard_->Check(*id); !s.ok()) entry.forbidden = std::string(s.message());
    }
    auto addresses = probe_->Addresses(fd->get());
    if (!addresses.ok()) continue;
    entry.addresses = *std::move(addresses);
    scanned.push_back(std::move(entry));
  }
  cache_ = std::move(scanned);
  return absl::OkStatus();
}

absl::StatusOr<NetnsFinder::Found> NetnsFinder::Revalidate(const ScannedNetns& entry,
                                                           const std::vector<IpAddress>& ips) {
  const std::string path = entry.path;
  auto drop = [&] {
    cache_.erase(std::remove_if(cache_.begin(), cache_.end(),
                                [&](const ScannedNetns& s) { return s.path == path; }),
                 cache_.end());
  };
  auto fd = probe_->Open(path);
  if (!fd.ok()) {
    drop();
    return fd.status();
  }
  auto id = probe_->Identify(fd->get());
  if (!id.ok() || !(*id == entry.id)) {
    drop();
    return absl::UnavailableError(absl::StrCat(path, " is another namespace now"));
  }
  ScannedNetns now = entry;
  auto addresses = probe_->Addresses(fd->get());
  if (!addresses.ok()) {
    drop();
    return addresses.status();
  }
  now.addresses = *std::move(addresses);
  if (!HoldsAny(now, ips)) {
    drop();
    return absl::UnavailableError(absl::StrCat(path, " no longer holds IP ", IpList(ips)));
  }
  if (guard_ != nullptr) {
    if (absl::Status s = guard_->Check(*id); !s.ok()) {
      return absl::PermissionDeniedError(absl::StrCat(path, ": ", s.message()));
    }
  }
  return Found{*std::move(fd), path};
}

absl::StatusOr<NetnsFinder::Found> NetnsFinder::Find(const std::vector<IpAddress>& ips) {
  if (ips.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the pod has no IP (status.podIPs) to find its network namespace by under ",
                     options_.dir, ", and names none (ambit.dev/netns)"));
  }
  // A cached answer holds until its namespace goes or changes; then the directory is read again
  // at once (that is news, not a miss to back off from).
  bool stale = false;
  {
    auto holders = HoldersOf(cache_, ips);
    if (holders.size() == 1 && holders[0]->forbidden.empty()) {
      auto found = Revalidate(*holders[0], ips);
      if (found.ok() || absl::IsPermissionDenied(found.status())) return found;
      stale = true;
    }
  }
  const absl::Time now = clock_->Now();
  bool scanned = false;
  if (stale || !last_scan_.has_value() || now >= *last_scan_ + backoff_) {
    AMBIT_RETURN_IF_ERROR(Rescan());
    scanned = true;
  }
  auto holders = HoldersOf(cache_, ips);
  auto pick = PickHolder(holders, ips);
  if (pick.ok()) {
    backoff_ = absl::ZeroDuration();  // the next miss is a new pod: scan for it at once
    return Revalidate(**pick, ips);
  }
  if (!absl::IsNotFound(pick.status())) {
    return absl::Status(pick.status().code(),
                        absl::StrCat("find network namespace under ", options_.dir,
                                     " by IP: ", pick.status().message()));
  }
  if (scanned) {
    backoff_ = std::clamp(backoff_ * 2, options_.min_rescan, options_.max_rescan);
  }
  const absl::Time next = *last_scan_ + backoff_;
  return absl::UnavailableError(absl::StrCat(
      "no network namespace under ", options_.dir, " holds IP ", IpList(ips), " on an interface (",
      cache_.size(), " namespaces scanned ",
      absl::FormatDuration(absl::Trunc(now - *last_scan_, absl::Milliseconds(1))), " ago",
      last_scan_error_.empty() ? "" : absl::StrCat("; ", last_scan_error_), "; next scan in ",
      absl::FormatDuration(
          absl::Trunc(std::max(next - now, absl::ZeroDuration()), absl::Milliseconds(1))),
      "): not enrolled until it appears"));
}

}  // namespace ambit::enroll
