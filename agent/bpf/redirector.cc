#include "agent/bpf/redirector.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <optional>

#include "abi/redirect.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/bpf/kernel.h"
#include "agent/bpf/skeleton.h"
#include "agent/bpf/wire.h"
#include "agent/common/log.h"
#include "agent/common/status.h"
#include "bpf/bpf.h"
#include "inbound.skel.h"
#include "redirect.skel.h"

AMBIT_BPF_SKELETON(ambit_redirect)
AMBIT_BPF_SKELETON(ambit_inbound)

namespace ambit::bpf {
namespace {

constexpr const char* kComponent = "bpf";

int LibbpfPrint(enum libbpf_print_level level, const char* format, va_list args) {
  char buf[4096];
  vsnprintf(buf, sizeof buf, format, args);
  std::string text(buf);
  while (!text.empty() && text.back() == '\n') text.pop_back();
  if (level == LIBBPF_WARN) {
    AMBIT_LOG(kComponent, Warning) << "libbpf: " << text;
  } else {
    AMBIT_LOG(kComponent, Debug) << "libbpf: " << text;
  }
  return 0;
}

absl::Status MakeDirs(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", path, ": ", ec.message()));
  chmod(path.c_str(), 0700);
  return absl::OkStatus();
}

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

bool IsMapPin(const std::string& name) { return name.find('.') == std::string::npos; }

// Pins every map of obj under root by its name; existing pins are re-used by libbpf at load.
absl::Status PinMaps(bpf_object* obj, const std::string& root) {
  bpf_map* map;
  bpf_object__for_each_map(map, obj) {
    std::string name = bpf_map__name(map);
    if (!IsMapPin(name)) continue;  // .rodata and friends
    if (bpf_map__set_pin_path(map, (root + "/" + name).c_str()) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("set pin path for map ", name));
    }
  }
  return absl::OkStatus();
}

// True when the pinned map at path has exactly the definition obj's map asks for, so that the
// programs of this ABI can use it as it is.
bool SameDefinition(int fd, bpf_map* map) {
  bpf_map_info info{};
  uint32_t len = sizeof info;
  if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0) return false;
  return info.type == static_cast<uint32_t>(bpf_map__type(map)) &&
         info.key_size == bpf_map__key_size(map) && info.value_size == bpf_map__value_size(map) &&
         info.max_entries == bpf_map__max_entries(map) && info.map_flags == bpf_map__map_flags(map);
}

// Re-pins an open link (or any BPF object) at path, replacing nothing: bpf_link__pin refuses a
// link that was opened from a pin.
absl::Status PinFd(int fd, const std::string& path) {
  if (bpf_obj_pin(fd, path.c_str()) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("pin ", path));
  }
  return absl::OkStatus();
}

// The program behind `fd`, named `name` (the kernel's own name when empty).
ProgramInfo Describe(int fd, std::string attached_to, std::string name) {
  bpf_prog_info info{};
  uint32_t len = sizeof info;
  ProgramInfo out;
  out.attached_to = std::move(attached_to);
  out.name = std::move(name);
  if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0) {
    if (out.name.empty()) out.name = info.name;
    out.id = info.id;
    out.verified_insns = info.verified_insns;
  }
  return out;
}

ProgramInfo Describe(const bpf_program* prog, std::string attached_to) {
  // The kernel keeps 15 characters of a name (BPF_OBJ_NAME_LEN: "ambit_getpeerna"); the object
  // file has the whole function name, as in bpf/progs and as bpftool shows it from BTF.
  const char* name = bpf_program__name(prog);
  return Describe(bpf_program__fd(prog), std::move(attached_to), name != nullptr ? name : "");
}

// Deletes every ambit_pod_addrs entry of the pod except those in `keep`.
absl::Status ForgetPodAddresses(int map_fd, uint64_t netns_cookie,
                                const std::vector<IpAddress>& keep) {
  std::vector<ambit_addr_key> stale;
  ambit_addr_key key{}, next{};
  ambit_addr_key* prev = nullptr;
  while (bpf_map_get_next_key(map_fd, prev, &next) == 0) {
    uint64_t owner = 0;
    if (bpf_map_lookup_elem(map_fd, &next, &owner) == 0 && owner == netns_cookie &&
        std::none_of(keep.begin(), keep.end(), [&](const IpAddress& ip) {
          return std::memcmp(ip.bytes().data(), next.addr, 16) == 0;
        })) {
      stale.push_back(next);
    }
    key = next;
    prev = &key;
  }
  for (const auto& k : stale) {
    if (bpf_map_delete_elem(map_fd, &k) < 0 && errno != ENOENT) {
      return absl::ErrnoToStatus(errno,
                                 absl::StrCat("remove ", IpAddress::FromBytes(k.addr).ToString(),
                                              " from ambit_pod_addrs"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string VersionedPinRoot(const std::string& instance_dir) {
  return absl::StrCat(instance_dir, "/v", AMBIT_ABI_VERSION);
}

std::vector<PreviousAbi> FindPreviousAbis(const std::string& instance_dir) {
  namespace fs = std::filesystem;
  std::vector<PreviousAbi> out;
  std::error_code ec;
  bool legacy = false;
  for (const auto& entry : fs::directory_iterator(instance_dir, ec)) {
    std::string name = entry.path().filename().string();
    uint32_t version = 0;
    if (entry.is_directory(ec) && name.size() > 1 && name[0] == 'v' &&
        absl::SimpleAtoi(name.substr(1), &version)) {
      if (version != AMBIT_ABI_VERSION) out.push_back({version, entry.path().string()});
    } else {
      legacy = true;  // version 1 pinned maps and links/, pods/ right in the instance directory
    }
  }
  if (legacy) out.push_back({1, instance_dir});
  std::sort(out.begin(), out.end(),
            [](const PreviousAbi& a, const PreviousAbi& b) { return a.version > b.version; });
  return out;
}

struct Redirector::State {
  explicit State(Skeleton<ambit_redirect> loaded) : skel(std::move(loaded)) {}
  RedirectConfig config;
  std::string pin_root;
  Skeleton<ambit_redirect> skel;
  UniqueFd pods_map, listeners_map, ports_map, cidrs_map, drops_map, node_map, pod_addrs_map;
  UniqueFd wire_map;  // ambit_wire: not the redirect object's, pinned beside its maps
  std::vector<LinkPtr> links;
  std::vector<std::string> link_pins;  // the pin of each of `links`
  std::vector<ProgramInfo> programs;
  uint64_t cgroup_id = 0;  // of config.cgroup_path; 0 if it could not be read
  // Migration from a previous ABI: the newest one's pins, and every old version to remove.
  std::optional<PreviousAbi> previous;
  std::vector<PreviousAbi> to_remove;
  std::vector<std::string> adopted_maps, fresh_maps;
  struct PendingLink {
    LinkPtr link;  // opened from the previous ABI's pin
    bpf_program* prog;
    std::string pin;  // where this ABI pins it
  };
  std::vector<PendingLink> pending_links;
  bool migration_done = false;
  bool wire_described = false;       // the wire programs are in `programs`
  bool sk_lookup_described = false;  // and the sk_lookup program
};

Redirector::Redirector(std::unique_ptr<State> state) : state_(std::move(state)) {}
Redirector::~Redirector() = default;

absl::StatusOr<std::unique_ptr<Redirector>> Redirector::Open(const RedirectConfig& config) {
  libbpf_set_print(LibbpfPrint);
  // The attach point first: a wrong --cgroup must fail before anything is pinned.
  UniqueFd cgroup(open(config.cgroup_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cgroup) {
    return absl::ErrnoToStatus(
        errno, absl::StrCat("open cgroup ", config.cgroup_path, " (the --cgroup attach point)"));
  }
  const std::string pin_root = VersionedPinRoot(config.instance_dir);
  std::vector<PreviousAbi> previous = FindPreviousAbis(config.instance_dir);
  AMBIT_RETURN_IF_ERROR(MakeDirs(pin_root + "/links"));
  AMBIT_RETURN_IF_ERROR(MakeDirs(pin_root + "/pods"));

  AMBIT_ASSIGN_OR_RETURN(auto skel, Skeleton<ambit_redirect>::Open());
  skel->rodata->ambit_mark = config.socket_mark;
  skel->rodata->ambit_delivery_mark = config.delivery_mark;
  skel->rodata->ambit_prev_delivery_mark = config.previous_delivery_mark;
  skel->rodata->ambit_agent_cgroup = config.agent_cgroup_id;
  std::vector<std::string> adopted, fresh;
  std::vector<std::pair<bpf_map*, std::string>> pin_after_load;
  bpf_map* map;
  bpf_object__for_each_map(map, skel->obj) {
    std::string name = bpf_map__name(map);
    if (!IsMapPin(name)) continue;
    std::string pin = pin_root + "/" + name;
    if (!Exists(pin) && !previous.empty()) {
      // Maps the previous ABI pinned with this very definition are taken over as they are:
      // their entries stay valid, and the data plane keeps using the same maps.
      std::string old_pin = previous.front().root + "/" + name;
      UniqueFd old(bpf_obj_get(old_pin.c_str()));
      if (old && SameDefinition(old.get(), map)) {
        if (bpf_map__reuse_fd(map, old.get()) != 0) {
          return absl::ErrnoToStatus(errno, absl::StrCat("adopt map ", old_pin));
        }
        adopted.push_back(name);
        pin_after_load.emplace_back(map, pin);
        continue;
      }
      fresh.push_back(name);
    }
    if (bpf_map__set_pin_path(map, pin.c_str()) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("set pin path for map ", name));
    }
  }
  AMBIT_RETURN_IF_ERROR(skel.Load());
  for (const auto& [m, pin] : pin_after_load) {
    if (bpf_map__pin(m, pin.c_str()) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("pin adopted map at ", pin));
    }
  }

  auto state = std::make_unique<State>(std::move(skel));
  if (auto id = CgroupId(config.cgroup_path); id.ok()) state->cgroup_id = *id;
  auto& s = *state;
  s.config = config;
  s.pin_root = pin_root;
  if (!previous.empty()) {
    s.previous = previous.front();
    s.to_remove = previous;
    s.adopted_maps = std::move(adopted);
    s.fresh_maps = std::move(fresh);
  }
  bool reused = false;
  struct {
    bpf_program* prog;
    const char* pin;
  } progs[] = {
      {s.skel->progs.ambit_connect4, "connect4"},
      {s.skel->progs.ambit_connect6, "connect6"},
      {s.skel->progs.ambit_sockops, "sockops"},
      {s.skel->progs.ambit_getpeername4, "getpeername4"},
      {s.skel->progs.ambit_getpeername6, "getpeername6"},
  };
  for (const auto& p : progs) {
    std::string pin = absl::StrCat(pin_root, "/links/", p.pin);
    std::string old_pin =
        s.previous ? absl::StrCat(s.previous->root, "/links/", p.pin) : std::string();
    LinkPtr link;
    bool pending = false;  // the previous ABI's link, taken over by FinishMigration
    if (Exists(pin)) {
      // A previous run attached this hook: swap our program into its link (atomic for new
      // connections) instead of attaching a second copy.
      link.reset(bpf_link__open(pin.c_str()));
      if (!link) return absl::ErrnoToStatus(errno, absl::StrCat("open pinned link ", pin));
      int err = bpf_link__update_program(link.get(), p.prog);
      if (err == -ENOLINK) {
        // Detached underneath (bpftool link detach): the pin holds a dead link, and capture is
        // off. Attach anew in its place instead of refusing to start.
        AMBIT_LOG(kComponent, Warning)
            << "pinned link " << pin << " was detached from its cgroup; attaching again";
        link.reset();
        if (unlink(pin.c_str()) < 0) return absl::ErrnoToStatus(errno, "unpin " + pin);
      } else if (err != 0) {
        return absl::ErrnoToStatus(-err, absl::StrCat("update program in pinned link ", pin));
      } else {
        reused = true;
      }
    } else if (!old_pin.empty() && Exists(old_pin)) {
      // The previous ABI's hook stays attached with its own programs and maps until every pod
      // is in this ABI's maps (FinishMigration): swapping now would let an enrolled pod's
      // connections pass unredirected while its ambit_pods entry is missing.
      LinkPtr old(bpf_link__open(old_pin.c_str()));
      if (!old) return absl::ErrnoToStatus(errno, absl::StrCat("open pinned link ", old_pin));
      s.pending_links.push_back({std::move(old), p.prog, pin});
      reused = true;
      pending = true;
    }
    if (!link && !pending) {
      link.reset(bpf_program__attach_cgroup(p.prog, cgroup.get()));
      if (!link) {
        return absl::ErrnoToStatus(
            errno, absl::StrCat("attach ", p.pin, " to cgroup ", config.cgroup_path));
      }
      if (bpf_link__pin(link.get(), pin.c_str()) != 0) {
        return absl::ErrnoToStatus(errno, absl::StrCat("pin link ", pin));
      }
    }
    s.programs.push_back(Describe(p.prog, "cgroup " + config.cgroup_path));
    if (link) {
      s.links.push_back(std::move(link));
      s.link_pins.push_back(pin);
    }
  }
  auto dup_map = [](bpf_map* m) { return UniqueFd(fcntl(bpf_map__fd(m), F_DUPFD_CLOEXEC, 3)); };
  s.pods_map = dup_map(s.skel->maps.ambit_pods);
  s.listeners_map = dup_map(s.skel->maps.ambit_listen_v2);
  s.ports_map = dup_map(s.skel->maps.ambit_ports);
  s.cidrs_map = dup_map(s.skel->maps.ambit_cidrs);
  s.drops_map = dup_map(s.skel->maps.ambit_drops);
  s.node_map = dup_map(s.skel->maps.ambit_node);
  s.pod_addrs_map = dup_map(s.skel->maps.ambit_pod_addrs);
  AMBIT_ASSIGN_OR_RETURN(s.wire_map, OpenWireMap(pin_root));
  UniqueFd orig = dup_map(s.skel->maps.ambit_orig_dst);
  UniqueFd deliver = dup_map(s.skel->maps.ambit_deliver);
  UniqueFd probes = dup_map(s.skel->maps.ambit_probes);
  auto redirector = std::unique_ptr<Redirector>(new Redirector(std::move(state)));
  redirector->orig_dst_map_ = std::move(orig);
  redirector->deliver_map_ = std::move(deliver);
  redirector->probes_map_ = std::move(probes);
  redirector->reused_links_ = reused;
  return redirector;
}

absl::Status Redirector::FinishMigration() {
  auto& s = *state_;
  if (!s.previous || s.migration_done) return absl::OkStatus();
  for (auto& p : s.pending_links) {
    if (bpf_link__update_program(p.link.get(), p.prog) != 0) {
      return absl::ErrnoToStatus(
          errno, absl::StrCat("update program in pinned link ", bpf_link__pin_path(p.link.get())));
    }
    // Pinned under both names until the old tree goes: the link never loses its last pin.
    if (!Exists(p.pin)) AMBIT_RETURN_IF_ERROR(PinFd(bpf_link__fd(p.link.get()), p.pin));
    s.links.push_back(std::move(p.link));
    s.link_pins.push_back(p.pin);
  }
  s.pending_links.clear();
  namespace fs = std::filesystem;
  for (const auto& old : s.to_remove) {
    std::error_code ec;
    if (old.root == s.config.instance_dir) {
      // Version 1 pinned right in the instance directory, next to the versioned trees.
      for (const auto& entry : fs::directory_iterator(old.root, ec)) {
        std::string name = entry.path().filename().string();
        uint32_t version = 0;
        if (name.size() > 1 && name[0] == 'v' && absl::SimpleAtoi(name.substr(1), &version)) {
          continue;
        }
        fs::remove_all(entry.path(), ec);
        if (ec) break;
      }
    } else {
      fs::remove_all(old.root, ec);
    }
    if (ec) {
      return absl::InternalError(absl::StrCat("remove the pins of ABI v", old.version, " under ",
                                              old.root, ": ", ec.message()));
    }
  }
  s.to_remove.clear();
  s.migration_done = true;
  return absl::OkStatus();
}

bool Redirector::migrating() const { return state_->previous && !state_->migration_done; }

uint32_t Redirector::migrated_from() const {
  return state_->previous ? state_->previous->version : 0;
}
std::vector<std::string> Redirector::adopted_maps() const { return state_->adopted_maps; }
std::vector<std::string> Redirector::fresh_maps() const { return state_->fresh_maps; }
const std::string& Redirector::pin_root() const { return state_->pin_root; }
int Redirector::drops_map_fd() const { return state_->drops_map.get(); }
int Redirector::wire_map_fd() const { return state_->wire_map.get(); }

bool Redirector::HasPinnedLinks(const std::string& instance_dir) {
  auto has_links = [](const std::string& root) {
    std::error_code ec;
    return !std::filesystem::is_empty(root + "/links", ec) && !ec;
  };
  if (has_links(VersionedPinRoot(instance_dir))) return true;
  for (const auto& old : FindPreviousAbis(instance_dir)) {
    if (has_links(old.root)) return true;
  }
  return false;
}

absl::StatusOr<uint64_t> Redirector::Cleanup(const std::string& pin_root) {
  // pin_root: the instance directory, holding every ABI version's pins.
  std::error_code ec;
  if (!std::filesystem::exists(pin_root, ec)) return 0;
  // Counted first so that the caller reports what was there, not what it asked to remove.
  uint64_t pins = 0;
  for (auto it = std::filesystem::recursive_directory_iterator(pin_root, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_directory(ec)) ++pins;
  }
  // Removing the last reference to a pinned link detaches its program.
  std::filesystem::remove_all(pin_root, ec);
  if (ec) return absl::InternalError(absl::StrCat("remove ", pin_root, ": ", ec.message()));
  return pins;
}

absl::Status Redirector::EnrollPod(uint64_t netns_cookie, uint32_t slot, int netns_fd,
                                   const InboundListenerFds& listeners) {
  if (slot >= AMBIT_MAX_PODS) {
    return absl::ResourceExhaustedError(
        absl::StrCat("no free pod slot (at most ", AMBIT_MAX_PODS, " pods per node)"));
  }
  auto& s = *state_;
  struct {
    int fd;
    int family_index;
    int kind;
    const char* what;
  } entries[] = {
      {listeners.plain_v4, 0, AMBIT_LISTENER_PLAIN, "plaintext-inbound listener 127.0.0.1:15006"},
      {listeners.hbone_v4, 0, AMBIT_LISTENER_HBONE, "HBONE listener 127.0.0.1:15008"},
      {listeners.plain_v6, 1, AMBIT_LISTENER_PLAIN, "plaintext-inbound listener [::1]:15006"},
      {listeners.hbone_v6, 1, AMBIT_LISTENER_HBONE, "HBONE listener [::1]:15008"},
  };
  for (const auto& e : entries) {
    uint32_t key = AMBIT_LISTENER_KEY(slot, e.family_index, e.kind);
    if (e.fd < 0) {
      // No listener of that family: sk_lookup drops such SYNs rather than leave them to an
      // ordinary lookup.
      if (bpf_map_delete_elem(s.listeners_map.get(), &key) < 0 && errno != ENOENT) {
        return absl::ErrnoToStatus(errno, absl::StrCat("clear ", e.what, " in ambit_listen_v2"));
      }
      continue;
    }
    uint64_t value = static_cast<uint64_t>(e.fd);
    if (bpf_map_update_elem(s.listeners_map.get(), &key, &value, BPF_ANY) < 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("add ", e.what, " to ambit_listen_v2"));
    }
  }

  std::string pin = absl::StrCat(s.pin_root, "/pods/", netns_cookie);
  AMBIT_ASSIGN_OR_RETURN(auto skel, Skeleton<ambit_inbound>::Open());
  skel->rodata->pod_slot = slot;
  AMBIT_RETURN_IF_ERROR(PinMaps(skel->obj, s.pin_root));
  AMBIT_RETURN_IF_ERROR(skel.Load());
  LinkPtr link;
  std::string old_pin =
      s.previous ? absl::StrCat(s.previous->root, "/pods/", netns_cookie) : std::string();
  if (!Exists(pin) && !old_pin.empty() && Exists(old_pin)) {
    // The previous ABI's link on this netns: our program goes into it (its listeners are in
    // this ABI's map already, above), so inbound steering has no gap.
    link.reset(bpf_link__open(old_pin.c_str()));
    if (!link) return absl::ErrnoToStatus(errno, absl::StrCat("open pinned link ", old_pin));
    if (bpf_link__update_program(link.get(), skel->progs.ambit_sk_lookup) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("update sk_lookup program in ", old_pin));
    }
    AMBIT_RETURN_IF_ERROR(PinFd(bpf_link__fd(link.get()), pin));
    unlink(old_pin.c_str());
  } else if (Exists(pin)) {
    link.reset(bpf_link__open(pin.c_str()));
    if (!link) return absl::ErrnoToStatus(errno, absl::StrCat("open pinned link ", pin));
    int err = bpf_link__update_program(link.get(), skel->progs.ambit_sk_lookup);
    if (err == -ENOLINK) {
      // Detached from the pod's netns underneath: attach anew in its place.
      AMBIT_LOG(kComponent, Warning)
          << "pinned link " << pin << " was detached from the pod's netns; attaching again";
      link.reset();
      if (unlink(pin.c_str()) < 0) return absl::ErrnoToStatus(errno, "unpin " + pin);
    } else if (err != 0) {
      return absl::ErrnoToStatus(-err, absl::StrCat("update sk_lookup program in ", pin));
    }
  }
  if (!link) {
    link.reset(bpf_program__attach_netns(skel->progs.ambit_sk_lookup, netns_fd));
    if (!link) return absl::ErrnoToStatus(errno, "attach sk_lookup to pod network namespace");
    if (bpf_link__pin(link.get(), pin.c_str()) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("pin link ", pin));
    }
  }
  if (!s.sk_lookup_described) {
    s.sk_lookup_described = true;
    s.programs.push_back(Describe(skel->progs.ambit_sk_lookup, "netns of each enrolled pod"));
  }

  AMBIT_ASSIGN_OR_RETURN(WireAttachment wire, AttachWire(s.pin_root, netns_fd, netns_cookie));
  const std::vector<std::string>& interfaces = wire.interfaces;
  if (!s.wire_described) {
    // One line per program for ambitctl bpf, as for sk_lookup: every pod runs its own instance.
    s.programs.push_back(Describe(
        wire.ingress_fd, "clsact ingress of each enrolled pod's interfaces", "ambit_wire_ingress"));
    s.programs.push_back(Describe(wire.egress_fd, "clsact egress of each enrolled pod's interfaces",
                                  "ambit_wire_egress"));
    s.wire_described = true;
  }
  AMBIT_LOG(kComponent, Debug) << "wire accounting on " << absl::StrJoin(interfaces, ",")
                               << " of netns_cookie=" << netns_cookie;

  ambit_pod_info info{slot, 0};
  if (bpf_map_update_elem(s.pods_map.get(), &netns_cookie, &info, BPF_ANY) < 0) {
    return absl::ErrnoToStatus(errno, "add pod to ambit_pods");
  }
  return absl::OkStatus();
}

absl::Status Redirector::RemovePod(uint64_t netns_cookie, uint32_t slot, int netns_fd) {
  auto& s = *state_;
  absl::Status status;
  if (netns_fd >= 0) status.Update(DetachWire(netns_fd));
  if (auto forgot = ForgetWire(s.wire_map.get(), netns_cookie); !forgot.ok()) {
    status.Update(forgot.status());
  }
  if (bpf_map_delete_elem(s.pods_map.get(), &netns_cookie) < 0 && errno != ENOENT) {
    status.Update(absl::ErrnoToStatus(errno, "remove pod from ambit_pods"));
  }
  status.Update(ForgetPodAddresses(s.pod_addrs_map.get(), netns_cookie, {}));
  std::string pin = absl::StrCat(s.pin_root, "/pods/", netns_cookie);
  if (unlink(pin.c_str()) < 0 && errno != ENOENT) {
    status.Update(absl::ErrnoToStatus(errno, absl::StrCat("unpin ", pin)));
  }
  if (s.previous) unlink(absl::StrCat(s.previous->root, "/pods/", netns_cookie).c_str());
  for (uint32_t family_index = 0; family_index < AMBIT_LISTENER_FAMILIES; ++family_index) {
    for (uint32_t kind = 0; kind < AMBIT_LISTENER_KINDS; ++kind) {
      uint32_t key = AMBIT_LISTENER_KEY(slot, family_index, kind);
      if (bpf_map_delete_elem(s.listeners_map.get(), &key) < 0 && errno != ENOENT) {
        status.Update(absl::ErrnoToStatus(errno, "remove listener from ambit_listen_v2"));
      }
    }
  }
  return status;
}

absl::Status Redirector::SetPodAddresses(uint64_t netns_cookie, const std::vector<IpAddress>& ips) {
  int fd = state_->pod_addrs_map.get();
  for (const auto& ip : ips) {
    ambit_addr_key key{};
    std::memcpy(key.addr, ip.bytes().data(), 16);
    if (bpf_map_update_elem(fd, &key, &netns_cookie, BPF_ANY) < 0) {
      return absl::ErrnoToStatus(
          errno, absl::StrCat("add pod address ", ip.ToString(), " to ambit_pod_addrs"));
    }
  }
  return ForgetPodAddresses(fd, netns_cookie, ips);
}

absl::Status Redirector::SetNodeNetns(uint64_t netns_cookie) {
  uint32_t zero = 0;
  ambit_node_config node{};
  node.node_netns_cookie = netns_cookie;
  if (bpf_map_update_elem(state_->node_map.get(), &zero, &node, BPF_ANY) < 0) {
    return absl::ErrnoToStatus(errno, "write the node netns cookie to ambit_node");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::map<uint64_t, uint32_t>> Redirector::EnrolledPods() const {
  std::map<uint64_t, uint32_t> out;
  uint64_t key, next;
  uint64_t* prev = nullptr;
  while (bpf_map_get_next_key(state_->pods_map.get(), prev, &next) == 0) {
    ambit_pod_info info;
    if (bpf_map_lookup_elem(state_->pods_map.get(), &next, &info) == 0) out[next] = info.slot;
    key = next;
    prev = &key;
  }
  return out;
}

absl::Status Redirector::SetPortFlags(uint16_t port, uint8_t flags) {
  uint32_t key = port;
  if (bpf_map_update_elem(state_->ports_map.get(), &key, &flags, BPF_ANY) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("set bypass flags for port ", port));
  }
  return absl::OkStatus();
}

absl::Status Redirector::AddBypassCidr(const Cidr& cidr) {
  ambit_cidr_key key{};
  key.prefixlen = cidr.prefix_len;
  std::memcpy(key.addr, cidr.base.bytes().data(), 16);
  uint8_t one = 1;
  if (bpf_map_update_elem(state_->cidrs_map.get(), &key, &one, BPF_ANY) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("add bypass CIDR ", cidr.ToString()));
  }
  return absl::OkStatus();
}

std::vector<ProgramInfo> Redirector::Programs() const { return state_->programs; }

namespace {

absl::StatusOr<bpf_link_info> LinkInfo(int fd) {
  bpf_link_info info{};
  uint32_t len = sizeof info;
  if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0) {
    return absl::ErrnoToStatus(errno, "read link info");
  }
  return info;
}

}  // namespace

std::vector<std::string> Redirector::VerifyCapture() const {
  const auto& s = *state_;
  std::vector<std::string> problems;
  for (size_t i = 0; i < s.links.size(); ++i) {
    const std::string& pin = s.link_pins[i];
    const std::string name = pin.substr(pin.rfind('/') + 1);
    auto held = LinkInfo(bpf_link__fd(s.links[i].get()));
    if (!held.ok()) {
      problems.push_back(absl::StrCat("cgroup program ", name, ": ", held.status().message()));
      continue;
    }
    // A detached cgroup link (bpftool link detach) keeps its descriptor but names no cgroup.
    if (held->cgroup.cgroup_id == 0 ||
        (s.cgroup_id != 0 && held->cgroup.cgroup_id != s.cgroup_id)) {
      problems.push_back(absl::StrCat("cgroup program ", name, " is no longer attached to ",
                                      s.config.cgroup_path, " (link id ", held->id,
                                      " was detached): outbound connections are not captured"));
    }
    UniqueFd pinned(bpf_obj_get(pin.c_str()));
    if (!pinned) {
      problems.push_back(absl::StrCat("pin ", pin, " is gone (", strerror(errno),
                                      "): the next ambitd start would not find this capture"));
      continue;
    }
    auto info = LinkInfo(pinned.get());
    if (info.ok() && info->id != held->id) {
      problems.push_back(absl::StrCat("pin ", pin, " holds link id ", info->id,
                                      ", not the attached link id ", held->id));
    }
  }
  bpf_map* map;
  bpf_object__for_each_map(map, s.skel->obj) {
    std::string name = bpf_map__name(map);
    if (!IsMapPin(name)) continue;
    std::string pin = absl::StrCat(s.pin_root, "/", name);
    if (!Exists(pin)) {
      problems.push_back(
          absl::StrCat("map pin ", pin, " is gone: the next ambitd start would lose its entries"));
    }
  }
  if (!Exists(WireMapPin(s.pin_root))) {
    problems.push_back(absl::StrCat("map pin ", WireMapPin(s.pin_root),
                                    " is gone: the next ambitd start would lose its entries"));
  }
  return problems;
}

absl::Status Redirector::VerifyPod(uint64_t netns_cookie, int netns_fd) const {
  const auto& s = *state_;
  ambit_pod_info info;
  if (bpf_map_lookup_elem(s.pods_map.get(), &netns_cookie, &info) != 0) {
    return absl::NotFoundError(absl::StrCat("missing from ambit_pods (netns_cookie=", netns_cookie,
                                            "): outbound is not captured"));
  }
  std::string pin = absl::StrCat(s.pin_root, "/pods/", netns_cookie);
  UniqueFd link(bpf_obj_get(pin.c_str()));
  if (!link) {
    // The pin is the link's only holder: without it the program is detached.
    return absl::ErrnoToStatus(
        errno, absl::StrCat("sk_lookup link pin ", pin, " is gone: inbound is not captured"));
  }
  AMBIT_ASSIGN_OR_RETURN(bpf_link_info l, LinkInfo(link.get()));
  struct stat st;
  if (fstat(netns_fd, &st) != 0) return absl::ErrnoToStatus(errno, "stat pod netns");
  if (l.netns.netns_ino == 0 || l.netns.netns_ino != static_cast<uint32_t>(st.st_ino)) {
    return absl::FailedPreconditionError(
        absl::StrCat("sk_lookup link id ", l.id, " (", pin,
                     ") is no longer attached to the pod's network "
                     "namespace: inbound is not captured"));
  }
  return absl::OkStatus();
}

}  // namespace ambit::bpf
