#include "agent/bpf/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "abi/wire.h"
#include "absl/strings/str_cat.h"
#include "agent/bpf/skeleton.h"
#include "agent/common/netns.h"
#include "agent/common/status.h"
#include "bpf/bpf.h"
#include "bpf/libbpf.h"
#include "wire.skel.h"

AMBIT_BPF_SKELETON(ambit_wire)

namespace ambit::bpf {
namespace {

// ambit's filter on each hook: one fixed handle and priority, so a restarted or upgraded agent
// replaces its own filter (BPF_TC_F_REPLACE) instead of adding a second. Priority 1 runs it
// before other filters, so it counts what a later filter drops too.
constexpr uint32_t kTcHandle = 0xa3b1;
constexpr uint32_t kTcPriority = 1;

struct IfNameIndexDeleter {
  void operator()(struct if_nameindex* p) const { if_freenameindex(p); }
};

struct Interface {
  unsigned index;
  std::string name;
};

// The namespace's interfaces that need the filter; runs inside the namespace. Loopback stays
// inside the namespace; an interface that is down carries nothing (tunnel fallback devices such
// as sit0 exist, down, in every namespace once their module is loaded).
absl::StatusOr<std::vector<Interface>> WireInterfaces() {
  std::unique_ptr<struct if_nameindex, IfNameIndexDeleter> list(if_nameindex());
  if (!list) return absl::ErrnoToStatus(errno, "list the pod's network interfaces");
  UniqueFd sock(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!sock) return absl::ErrnoToStatus(errno, "socket for interface ioctls in the pod");
  std::vector<Interface> out;
  for (struct if_nameindex* i = list.get(); i->if_index != 0; ++i) {
    ifreq req{};
    std::strncpy(req.ifr_name, i->if_name, IFNAMSIZ - 1);
    if (ioctl(sock.get(), SIOCGIFFLAGS, &req) < 0) {
      if (errno == ENODEV) continue;  // gone meanwhile
      return absl::ErrnoToStatus(errno, absl::StrCat("read the flags of ", i->if_name));
    }
    if ((req.ifr_flags & IFF_LOOPBACK) != 0) continue;
    const bool up = (req.ifr_flags & IFF_UP) != 0;
    if (ioctl(sock.get(), SIOCGIFHWADDR, &req) < 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("read the link type of ", i->if_name));
    }
    if (req.ifr_hwaddr.sa_family != ARPHRD_ETHER) {
      if (!up) continue;
      return absl::FailedPreconditionError(absl::StrCat(
          "interface ", i->if_name, " is up and not Ethernet (link type ", req.ifr_hwaddr.sa_family,
          "): wire accounting parses Ethernet frames only, and would count nothing "
          "that crosses it"));
    }
    out.push_back({i->if_index, i->if_name});
  }
  return out;
}

absl::Status AttachOne(const Interface& itf, bpf_tc_attach_point point, int prog_fd) {
  const char* hook_name = point == BPF_TC_INGRESS ? "ingress" : "egress";
  LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = static_cast<int>(itf.index), .attach_point = point);
  int err = bpf_tc_hook_create(&hook);
  if (err != 0 && err != -EEXIST) {
    return absl::ErrnoToStatus(-err, absl::StrCat("create the clsact qdisc on ", itf.name));
  }
  LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = prog_fd, .flags = BPF_TC_F_REPLACE, .handle = kTcHandle,
              .priority = kTcPriority);
  err = bpf_tc_attach(&hook, &opts);
  if (err != 0) {
    return absl::ErrnoToStatus(
        -err, absl::StrCat("attach wire accounting to ", itf.name, " ", hook_name));
  }
  return absl::OkStatus();
}

}  // namespace

std::string WireMapPin(const std::string& pin_root) { return pin_root + "/ambit_wire"; }

absl::StatusOr<UniqueFd> OpenWireMap(const std::string& pin_root) {
  const std::string pin = WireMapPin(pin_root);
  UniqueFd fd(bpf_obj_get(pin.c_str()));
  if (fd) return fd;
  if (errno != ENOENT) return absl::ErrnoToStatus(errno, absl::StrCat("open ", pin));
  // Loading the object creates the map at its pin path; the programs are dropped unattached.
  AMBIT_ASSIGN_OR_RETURN(auto skel, Skeleton<ambit_wire>::Open());
  if (bpf_map__set_pin_path(skel->maps.ambit_wire, pin.c_str()) != 0) {
    return absl::ErrnoToStatus(errno, "set pin path for map ambit_wire");
  }
  AMBIT_RETURN_IF_ERROR(skel.Load());
  fd = UniqueFd(fcntl(bpf_map__fd(skel->maps.ambit_wire), F_DUPFD_CLOEXEC, 3));
  if (!fd) return absl::ErrnoToStatus(errno, "duplicate the ambit_wire map descriptor");
  return fd;
}

absl::StatusOr<WireAttachment> AttachWire(const std::string& pin_root, int netns_fd,
                                          uint64_t netns_cookie) {
  AMBIT_ASSIGN_OR_RETURN(auto skel, Skeleton<ambit_wire>::Open());
  skel->rodata->pod_cookie = netns_cookie;
  if (bpf_map__set_pin_path(skel->maps.ambit_wire, WireMapPin(pin_root).c_str()) != 0) {
    return absl::ErrnoToStatus(errno, "set pin path for map ambit_wire");
  }
  AMBIT_RETURN_IF_ERROR(skel.Load());
  const int ingress = bpf_program__fd(skel->progs.ambit_wire_ingress);
  const int egress = bpf_program__fd(skel->progs.ambit_wire_egress);
  std::vector<std::string> attached;
  // The filters hold the programs (and they the pinned map): the skeleton may go after this.
  AMBIT_RETURN_IF_ERROR(RunInNetns(netns_fd, [&]() -> absl::Status {
    AMBIT_ASSIGN_OR_RETURN(std::vector<Interface> interfaces, WireInterfaces());
    for (const Interface& itf : interfaces) {
      AMBIT_RETURN_IF_ERROR(AttachOne(itf, BPF_TC_INGRESS, ingress));
      AMBIT_RETURN_IF_ERROR(AttachOne(itf, BPF_TC_EGRESS, egress));
      attached.push_back(itf.name);
    }
    return absl::OkStatus();
  }));
  WireAttachment out;
  out.interfaces = std::move(attached);
  out.ingress_fd = ingress;
  out.egress_fd = egress;
  out.holder = std::make_shared<Skeleton<ambit_wire>>(std::move(skel));
  return out;
}

absl::Status DetachWire(int netns_fd) {
  return RunInNetns(netns_fd, []() -> absl::Status {
    AMBIT_ASSIGN_OR_RETURN(std::vector<Interface> interfaces, WireInterfaces());
    for (const Interface& itf : interfaces) {
      for (bpf_tc_attach_point point : {BPF_TC_INGRESS, BPF_TC_EGRESS}) {
        LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = static_cast<int>(itf.index),
                    .attach_point = point);
        LIBBPF_OPTS(bpf_tc_opts, opts, .handle = kTcHandle, .priority = kTcPriority);
        int err = bpf_tc_detach(&hook, &opts);
        if (err != 0 && err != -ENOENT && err != -EINVAL) {
          return absl::ErrnoToStatus(-err, absl::StrCat("detach wire accounting from ", itf.name));
        }
      }
    }
    return absl::OkStatus();
  });
}

namespace {

// Whether the program with this id uses the map with that id.
bool ProgramUsesMap(uint32_t prog_id, uint32_t map_id) {
  UniqueFd prog(bpf_prog_get_fd_by_id(prog_id));
  if (!prog) return false;  // gone meanwhile
  uint32_t ids[8] = {};
  bpf_prog_info info{};
  info.nr_map_ids = sizeof ids / sizeof ids[0];
  info.map_ids = reinterpret_cast<uint64_t>(ids);
  uint32_t len = sizeof info;
  if (bpf_obj_get_info_by_fd(prog.get(), &info, &len) != 0) return false;
  const uint32_t n = std::min<uint32_t>(info.nr_map_ids, sizeof ids / sizeof ids[0]);
  for (uint32_t i = 0; i < n; ++i) {
    if (ids[i] == map_id) return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<uint32_t> PinnedMapId(const std::string& path) {
  UniqueFd fd(bpf_obj_get(path.c_str()));
  if (!fd) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  bpf_map_info info{};
  uint32_t len = sizeof info;
  if (bpf_obj_get_info_by_fd(fd.get(), &info, &len) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("read the map pinned at ", path));
  }
  return info.id;
}

absl::StatusOr<int> DetachWireOfMap(int netns_fd, uint32_t map_id) {
  int removed = 0;
  absl::Status status = RunInNetns(netns_fd, [&]() -> absl::Status {
    // Every interface, whatever its type or state: a filter is looked for, not attached.
    std::unique_ptr<struct if_nameindex, IfNameIndexDeleter> list(if_nameindex());
    if (!list) return absl::ErrnoToStatus(errno, "list the network interfaces");
    for (struct if_nameindex* i = list.get(); i->if_index != 0; ++i) {
      for (bpf_tc_attach_point point : {BPF_TC_INGRESS, BPF_TC_EGRESS}) {
        LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = static_cast<int>(i->if_index),
                    .attach_point = point);
        LIBBPF_OPTS(bpf_tc_opts, query, .handle = kTcHandle, .priority = kTcPriority);
        if (bpf_tc_query(&hook, &query) != 0) continue;        // no clsact, or no filter of ambit's
        if (!ProgramUsesMap(query.prog_id, map_id)) continue;  // another instance's
        LIBBPF_OPTS(bpf_tc_opts, opts, .handle = kTcHandle, .priority = kTcPriority);
        int err = bpf_tc_detach(&hook, &opts);
        if (err == 0) {
          ++removed;
        } else if (err != -ENOENT) {
          return absl::ErrnoToStatus(-err,
                                     absl::StrCat("detach wire accounting from ", i->if_name));
        }
      }
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return removed;
}

absl::StatusOr<std::vector<WireEntry>> ReadWire(int map_fd) {
  int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return absl::ErrnoToStatus(-cpus, "count possible CPUs");
  std::vector<ambit_wire_value> per_cpu(static_cast<size_t>(cpus));
  static_assert(sizeof(ambit_wire_value) % 8 == 0, "per-CPU values are 8-byte aligned");
  std::vector<WireEntry> out;
  ambit_wire_key key{}, next{};
  ambit_wire_key* prev = nullptr;
  while (bpf_map_get_next_key(map_fd, prev, &next) == 0) {
    key = next;
    prev = &key;
    if (bpf_map_lookup_elem(map_fd, &next, per_cpu.data()) != 0) {
      if (errno == ENOENT) continue;  // evicted meanwhile
      return absl::ErrnoToStatus(errno, "read ambit_wire");
    }
    WireEntry e;
    e.netns_cookie = next.netns_cookie;
    e.peer = IpAddress::FromBytes(next.peer_addr);
    e.port = next.port;
    e.proto = next.proto;
    e.egress = (next.flags & AMBIT_WIRE_EGRESS) != 0;
    e.local_port = (next.flags & AMBIT_WIRE_LOCAL_PORT) != 0;
    e.mtls = (next.flags & AMBIT_WIRE_MTLS) != 0;
    for (const ambit_wire_value& v : per_cpu) {
      e.bytes += v.bytes;
      e.packets += v.packets;
      e.payload += v.payload;
      e.syns += v.syns;
      e.resets += v.resets;
    }
    out.push_back(e);
  }
  return out;
}

absl::StatusOr<uint64_t> ForgetWire(int map_fd, uint64_t netns_cookie) {
  std::vector<ambit_wire_key> doomed;
  ambit_wire_key key{}, next{};
  ambit_wire_key* prev = nullptr;
  while (bpf_map_get_next_key(map_fd, prev, &next) == 0) {
    if (next.netns_cookie == netns_cookie) doomed.push_back(next);
    key = next;
    prev = &key;
  }
  for (const auto& k : doomed) {
    if (bpf_map_delete_elem(map_fd, &k) < 0 && errno != ENOENT) {
      return absl::ErrnoToStatus(errno, "remove a pod's entries from ambit_wire");
    }
  }
  return doomed.size();
}

}  // namespace ambit::bpf
