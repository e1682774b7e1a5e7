// What the admin API shows of the agent: each view built on the control thread from the state in
// force and handed to AdminState whole; `check` answered on gRPC threads from an immutable
// snapshot; BPF map fill read live from the pinned maps.

#include "agent/node/admin_views.h"

#include <bpf/bpf.h>
#include <errno.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "abi/redirect.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "agent/admin/explain.h"
#include "agent/admin/prometheus.h"
#include "agent/authz/peer_authentication.h"
#include "agent/bpf/drops.h"
#include "agent/common/framed.h"
#include "agent/common/log.h"
#include "agent/config/load_result.h"
#include "agent/issuance/pem_info.h"
#include "agent/node/agent.h"
#include "agent/state/waypoint.h"
#include "agent/xds/xds_source.h"

namespace ambit::node {
namespace {

namespace pb = ::ambit::admin::v1;

// The stats sockets of data planes draining after a roll, next to these control sockets.
std::vector<std::string> DrainingStatsSockets(const std::vector<std::string>& control_sockets) {
  std::vector<std::string> out;
  for (const std::string& socket : control_sockets) {
    const std::filesystem::path stats = StatsSocketFor(socket);
    const std::string prefix = stats.filename().string() + ".draining-";
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(stats.parent_path(), ec)) {
      if (entry.path().filename().string().rfind(prefix, 0) == 0) {
        out.push_back(entry.path().string());
      }
    }
  }
  return out;
}

std::string LabelText(const std::map<std::string, std::string>& labels) {
  std::vector<std::string> parts;
  for (const auto& [k, v] : labels) parts.push_back(absl::StrCat(k, "=", v));
  return absl::StrCat("{", absl::StrJoin(parts, ", "), "}");
}

std::string MapTypeName(uint32_t type) {
  switch (type) {
    case BPF_MAP_TYPE_HASH:
      return "hash";
    case BPF_MAP_TYPE_ARRAY:
      return "array";
    case BPF_MAP_TYPE_LRU_HASH:
      return "lru_hash";
    case BPF_MAP_TYPE_LPM_TRIE:
      return "lpm_trie";
    case BPF_MAP_TYPE_SOCKMAP:
      return "sockmap";
    case BPF_MAP_TYPE_SOCKHASH:
      return "sockhash";
    case BPF_MAP_TYPE_SK_STORAGE:
      return "sk_storage";
    case BPF_MAP_TYPE_PERCPU_HASH:
      return "percpu_hash";
    case BPF_MAP_TYPE_PERCPU_ARRAY:
      return "percpu_array";
    case BPF_MAP_TYPE_LRU_PERCPU_HASH:
      return "lru_percpu_hash";
    case BPF_MAP_TYPE_RINGBUF:
      return "ringbuf";
    default:
      return absl::StrCat("type ", type);
  }
}

// Fills in the maps and links pinned under the response's pin root. Thread-safe: it only opens
// pins and reads through fds of its own.
void ReadPinnedObjects(pb::GetBpfResponse* out) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<fs::path> maps;
  for (const auto& entry : fs::directory_iterator(out->pin_root(), ec)) {
    if (!entry.is_directory(ec)) maps.push_back(entry.path());
  }
  std::sort(maps.begin(), maps.end());
  for (const auto& path : maps) {
    auto* m = out->add_maps();
    m->set_name(path.filename().string());
    m->set_pinned(path.string());
    UniqueFd fd(bpf_obj_get(path.c_str()));
    if (fd.get() < 0) {
      m->set_error(absl::StrCat("open pin: ", strerror(errno)));
      continue;
    }
    bpf_map_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd.get(), &info, &len) != 0) {
      m->set_error(absl::StrCat("map info: ", strerror(errno)));
      continue;
    }
    m->set_id(info.id);
    m->set_type(MapTypeName(info.type));
    m->set_max_entries(info.max_entries);
    if (info.type == BPF_MAP_TYPE_SK_STORAGE) {
      // Socket-local storage has no keys to walk; its size follows the sockets that hold it.
      m->set_error("entries not countable (per-socket storage)");
      continue;
    }
    if (info.type == BPF_MAP_TYPE_ARRAY || info.type == BPF_MAP_TYPE_SOCKMAP) {
      // Every index of an array is a key: count the slots in use instead (a sockmap slot holds
      // a socket, an array slot a non-zero value).
      std::vector<char> value(std::max<uint32_t>(info.value_size, 8));
      uint64_t used = 0;
      for (uint32_t i = 0; i < info.max_entries; ++i) {
        std::fill(value.begin(), value.end(), 0);
        if (bpf_map_lookup_elem(fd.get(), &i, value.data()) != 0) continue;
        if (info.type == BPF_MAP_TYPE_SOCKMAP ||
            std::any_of(value.begin(), value.end(), [](char c) { return c != 0; })) {
          ++used;
        }
      }
      m->set_entries(used);
      continue;
    }
    std::vector<char> key(std::max<uint32_t>(info.key_size, 1)), next(key.size());
    uint64_t count = 0;
    const void* prev = nullptr;
    // Capped: a hash map that changes while it is walked may restart from its first key.
    while (count <= static_cast<uint64_t>(info.max_entries) &&
           bpf_map_get_next_key(fd.get(), prev, next.data()) == 0) {
      ++count;
      key.swap(next);
      prev = key.data();
    }
    if (errno != ENOENT && count == 0) {
      m->set_error(absl::StrCat("walk keys: ", strerror(errno)));
    }
    m->set_entries(std::min<uint64_t>(count, info.max_entries));
  }
  out->set_abi_version(AMBIT_ABI_VERSION);
  const std::string drops_pin = (fs::path(out->pin_root()) / "ambit_drops").string();
  UniqueFd drops(bpf_obj_get(drops_pin.c_str()));
  absl::StatusOr<std::vector<uint64_t>> counts =
      drops ? bpf::ReadDropCounters(drops.get())
            : absl::ErrnoToStatus(errno, absl::StrCat("open ", drops_pin));
  if (!counts.ok()) {
    out->set_drops_error(std::string(counts.status().message()));
  } else {
    const auto& reasons = bpf::DropReasons();
    for (size_t i = 0; i < reasons.size() && i < counts->size(); ++i) {
      auto* d = out->add_drops();
      d->set_reason(reasons[i].name);
      d->set_program(reasons[i].program);
      d->set_meaning(reasons[i].meaning);
      d->set_count((*counts)[i]);
    }
  }
  for (const char* dir : {"links", "pods"}) {
    std::vector<fs::path> links;
    for (const auto& entry : fs::directory_iterator(fs::path(out->pin_root()) / dir, ec)) {
      links.push_back(entry.path());
    }
    std::sort(links.begin(), links.end());
    for (const auto& path : links) {
      auto* l = out->add_links();
      l->set_pinned(path.string());
      UniqueFd fd(bpf_obj_get(path.c_str()));
      if (fd.get() < 0) continue;
      bpf_link_info info{};
      uint32_t len = sizeof info;
      if (bpf_obj_get_info_by_fd(fd.get(), &info, &len) != 0) continue;
      l->set_id(info.id);
      l->set_prog_id(info.prog_id);
      l->set_type(info.type == BPF_LINK_TYPE_CGROUP  ? "cgroup"
                  : info.type == BPF_LINK_TYPE_NETNS ? "netns"
                                                     : absl::StrCat("type ", info.type));
    }
  }
}

std::string LevelName(log::Level level) {
  switch (level) {
    case log::Level::kDebug:
      return "debug";
    case log::Level::kInfo:
      return "info";
    case log::Level::kWarning:
      return "warn";
    case log::Level::kError:
      return "error";
  }
  return "?";
}

std::string EffectiveLevel(const std::string& component) {
  for (log::Level l : {log::Level::kDebug, log::Level::kInfo, log::Level::kWarning}) {
    if (log::Enabled(component, l)) return LevelName(l);
  }
  return LevelName(log::Level::kError);
}

// ambitd's components, and any other a user set a level for.
// ambitd's levels, and the data plane's: a change is applied to both processes (components of
// the same name share a level; the data plane's own are tunnel, access, hbone, tls).
class LogLevels {
 public:
  explicit LogLevels(std::vector<std::string> control_sockets)
      : control_sockets_(std::move(control_sockets)) {}
  absl::StatusOr<pb::LogLevelResponse> Handle(const pb::LogLevelRequest& req) {
    if (!req.component().empty() && !log::IsKnownComponent(req.component())) {
      // A typo would otherwise set a level nothing logs under, and say it worked.
      std::vector<std::string> names(std::begin(log::kComponents), std::end(log::kComponents));
      return absl::InvalidArgumentError(absl::StrCat("unknown log component '", req.component(),
                                                     "'; components: default, ",
                                                     absl::StrJoin(names, ", ")));
    }
    if (!req.level().empty()) {
      log::Level level;
      if (!log::ParseLevel(req.level(), &level)) {
        return absl::InvalidArgumentError(
            absl::StrCat("'", req.level(), "' is not a log level: debug, info, warn or error"));
      }
      {
        absl::MutexLock lock(&mu_);
        log::SetLevel(req.component(), level);
        if (!req.component().empty()) components_.insert(req.component());
        changed_[req.component()] = req.level();
      }
      AMBIT_LOG("admin", Info) << "log level of "
                               << (req.component().empty() ? "default" : req.component())
                               << " set to " << LevelName(level);
      Forward(req.component(), req.level());  // outside the lock: the data plane may be slow
    }
    absl::MutexLock lock(&mu_);
    pb::LogLevelResponse resp;
    auto add = [&resp](const std::string& c) {
      auto* l = resp.add_levels();
      l->set_component(c.empty() ? "default" : c);
      l->set_level(EffectiveLevel(c));
    };
    if (!req.component().empty()) {
      add(req.component());
    } else {
      add("");
      for (const auto& c : components_) add(c);
    }
    return resp;
  }

  // Passes every level changed at run time to a data plane that started after the change (it
  // starts from --log-level). Control thread; the data plane answers at once when it is up.
  void Reapply(const std::string& control_socket) {
    std::map<std::string, std::string> changed;
    {
      absl::MutexLock lock(&mu_);
      changed = changed_;
    }
    for (const auto& [component, level] : changed) Send(control_socket, component, level);
  }

 private:
  // To every data-plane process there is. The waypoint process's socket exists once it was
  // started; one started later gets the level from Reapply.
  void Forward(const std::string& component, const std::string& level) {
    for (size_t i = 0; i < control_sockets_.size(); ++i) {
      std::error_code ec;
      if (i > 0 && !std::filesystem::exists(control_sockets_[i], ec)) continue;
      Send(control_sockets_[i], component, level);
    }
  }
  static void Send(const std::string& control_socket, const std::string& component,
                   const std::string& level) {
    auto sent = supervisor::DataPlane::SetLogLevel(control_socket, component, level);
    if (!sent.ok()) {
      AMBIT_LOG("admin", Warning) << "log level of " << (component.empty() ? "default" : component)
                                  << " not passed to the data plane at " << control_socket << ": "
                                  << sent.message();
    }
  }

  const std::vector<std::string> control_sockets_;
  absl::Mutex mu_;
  std::map<std::string, std::string> changed_ ABSL_GUARDED_BY(mu_);  // component -> level
  std::set<std::string> components_ ABSL_GUARDED_BY(mu_) = {std::begin(log::kComponents),
                                                            std::end(log::kComponents)};
};

}  // namespace

LogLevelHandlers NewLogLevelHandlers(std::vector<std::string> control_sockets) {
  auto levels = std::make_shared<LogLevels>(std::move(control_sockets));
  return {[levels](const pb::LogLevelRequest& req) { return levels->Handle(req); },
          [levels](const std::string& control_socket) { levels->Reapply(control_socket); }};
}

void Agent::PublishBpf() {
  pb::GetBpfResponse bpf;
  bpf.set_pin_root(redirector_->pin_root());
  for (const auto& p : redirector_->Programs()) {
    auto* out = bpf.add_programs();
    out->set_name(p.name);
    out->set_id(p.id);
    out->set_verified_insns(p.verified_insns);
    out->set_attached_to(p.attached_to);
  }
  admin_state_->SetBpf(std::move(bpf), ReadPinnedObjects);
}

void Agent::InitAdminHandlers() {
  PublishBpf();
  // Kept inside the state it reads: valid as long as the state is.
  admin::AdminState* state = admin_state_.get();
  admin_state_->SetReadinessChecker(
      [state](absl::Time now) { return admin::ReadinessProblems(*state, now); });
  LogLevelHandlers levels =
      NewLogLevelHandlers({options_.control_socket(), options_.waypoint_control_socket()});
  admin_state_->SetLogLevelHandler(std::move(levels.handle));
  reapply_log_levels_ = std::move(levels.reapply);
  InitRollHandler();
  InitConfigDumpHandler();
  InitPlanHandlers();
  admin_state_->SetStatsFetcher(
      [socket = options_.control_socket(), waypoint_socket = options_.waypoint_control_socket()](
          bool connections, bool metrics) {
        ambit::dataplane::v1::StatsRequest request;
        request.set_connections(connections);
        request.set_metrics(metrics);
        auto stats = supervisor::DataPlane::FetchStats(socket, request);
        // A predecessor still draining after a roll: its connections are live too. It moved its
        // stats socket aside (<stats socket>.draining-<pid>) for its successor's.
        if (stats.ok()) {
          for (const std::string& aside : DrainingStatsSockets({socket, waypoint_socket})) {
            auto old = supervisor::DataPlane::FetchStatsAt(aside, request);
            if (!old.ok()) continue;  // exited meanwhile
            for (auto& f : *old->mutable_flows()) *stats->add_flows() = std::move(f);
          }
        }
        // The waypoint process's live connections join the tunnel's, and its HTTP metrics (its
        // own families) are appended. Its TCP counters are not: the same series names would be
        // exported twice.
        std::error_code ec;
        if (stats.ok() && std::filesystem::exists(waypoint_socket, ec)) {
          auto waypoint = supervisor::DataPlane::FetchStats(waypoint_socket, request);
          if (waypoint.ok()) {
            for (auto& f : *waypoint->mutable_flows()) *stats->add_flows() = std::move(f);
            stats->set_l7_metrics_text(waypoint->l7_metrics_text());
          } else {
            AMBIT_LOG("admin", Warning) << "the waypoint data plane's connections and metrics "
                                           "left out: "
                                        << waypoint.status().message();
          }
        }
        return stats;
      });
}

std::string Agent::MissingDataPlane(const Process& process) const {
  if (process.connected()) return "";
  const bool waypoint = process.kind == DataPlaneKind::kWaypoint;
  const char* binary = waypoint ? "ambit-waypoint" : "ambit-tunnel";
  if (options_.external_dataplane) {
    return absl::StrCat(
        binary, " is started apart from ambitd (--dataplane=external) and is not connected on ",
        waypoint ? options_.waypoint_control_socket() : options_.control_socket(),
        process.connect_error.empty() ? "" : ": ", process.connect_error);
  }
  if (process.dp == nullptr) return absl::StrCat(binary, " is not started yet");
  return absl::StrCat(binary, " (started by ambitd) exited and is being restarted",
                      process.connect_error.empty() ? "" : ": ", process.connect_error);
}

void Agent::PublishHealth() {
  admin::NodeHealth h;
  h.bpf_attached = redirector_ != nullptr && !redirector_->Programs().empty();
  h.dataplane_connected = tunnel_.connected();
  h.dataplane_missing = MissingDataPlane(tunnel_);
  h.dataplane_restarts = tunnel_.restart.restarts();
  h.dataplane_mode = options_.external_dataplane ? "external" : "spawn";
  h.dataplane_socket = options_.control_socket();
  h.dataplane_pid = tunnel_.connected() ? tunnel_.dp->pid() : 0;
  h.dataplane_roll = tunnel_.roll;
  for (const auto& d : tunnel_.draining) h.dataplane_draining.push_back(d.pid);
  h.waypoint.roll = waypoint_.roll;
  for (const auto& d : waypoint_.draining) h.waypoint.draining.push_back(d.pid);
  for (const auto& [uid, e] : enrolled_) {
    h.enrolled.emplace_back(uid, state::SpiffeId(state_->mesh, e.pod));
  }
  if (zds_server_ != nullptr) {
    h.zds_sessions[zds::SourceName(zds::Source::kAmbitCni)] =
        zds_stats_.sessions[static_cast<size_t>(zds::Source::kAmbitCni)];
  }
  if (zds_client_ != nullptr) {
    h.zds_sessions[zds::SourceName(zds::Source::kIstioCni)] =
        zds_stats_.sessions[static_cast<size_t>(zds::Source::kIstioCni)];
  }
  h.zds_requests = zds_stats_.requests;
  if (const auto* xds = dynamic_cast<const xds::XdsSource*>(source_.get()); xds != nullptr) {
    xds::XdsSource::StreamCounters c = xds->counters();
    admin::NodeHealth::Xds& x = h.xds.emplace();
    x.connected = c.connected;
    x.reconnects = c.connects > 0 ? c.connects - 1 : 0;
    for (const auto& t : c.types) x.types.push_back({t.type_url, t.resources, t.acks, t.nacks});
  }
  const auto& failed = enrollment_.failed();
  const auto& failing_since = enrollment_.failing_since();
  h.enroll_failures = static_cast<int>(failed.size());
  for (const auto& [uid, error] : failed) {
    auto since = failing_since.find(uid);
    h.enroll_failing.push_back(
        {uid, error, since != failing_since.end() ? since->second : absl::Now()});
  }
  if (tunnel_.heartbeat != nullptr) {
    h.heartbeat_waiting_since = tunnel_.heartbeat->waiting_since();
    h.heartbeat_deadline = tunnel_.heartbeat->deadline();
  }
  h.capture_problems = capture_problems_;
  for (const Process* p : {&tunnel_, &waypoint_}) {
    for (auto& l : ListenerProblems(*p)) h.listener_problems.push_back(std::move(l));
  }
  // The tunnel's generation, as before; the waypoint process's is judged below.
  h.config_loaded = config_applied_;
  if (source_ != nullptr) {
    h.config_pending = source_->Pending();
    for (const config::SourceResourceStats& s : source_->Stats()) {
      h.config_source.push_back(
          {s.resource, s.synced, s.lists, s.watch_restarts, s.errors, s.last_sync});
    }
  }
  h.desired_generation = tunnel_.generation.version();
  h.applied_generation = tunnel_.dp != nullptr ? tunnel_.dp->acked_version() : 0;
  tunnel_.health_acked = h.applied_generation;
  tunnel_.health_nacked = tunnel_.dp != nullptr ? tunnel_.dp->nacked_version() : 0;
  if (h.desired_generation != h.applied_generation) {
    h.pending_since = tunnel_.generation.pending_since();
    if (tunnel_.generation.needs_resend()) {
      h.generation_error = absl::StrCat("not delivered: ", tunnel_.generation.delivery_error());
      h.fail_closed = true;
    } else if (tunnel_.health_nacked != 0) {
      h.generation_error = absl::StrCat("the data plane refused generation ", tunnel_.health_nacked,
                                        ": ", tunnel_.dp->nack_error());
      h.fail_closed = true;
    }
  }
  std::vector<std::string> enrolled;
  for (const auto& [uid, e] : enrolled_) enrolled.push_back(uid);
  admin::NodeHealth::WaypointProcess& w = h.waypoint;
  w.needed = WaypointNeeded(enrolled, waypoint_pods_);
  w.connected = waypoint_.connected();
  w.missing = MissingDataPlane(waypoint_);
  w.socket = options_.waypoint_control_socket();
  w.pid = waypoint_.connected() ? waypoint_.dp->pid() : 0;
  w.restarts = waypoint_.restart.restarts();
  if (w.connected) {
    w.heartbeat_waiting_since = waypoint_.heartbeat->waiting_since();
    w.desired_generation = waypoint_.generation.version();
    w.applied_generation = waypoint_.dp->acked_version();
    waypoint_.health_acked = w.applied_generation;
    waypoint_.health_nacked = waypoint_.dp->nacked_version();
    if (w.desired_generation != w.applied_generation) {
      w.pending_since = waypoint_.generation.pending_since();
      if (waypoint_.generation.needs_resend()) {
        w.generation_error = absl::StrCat("not delivered: ", waypoint_.generation.delivery_error());
        w.fail_closed = true;
      } else if (waypoint_.health_nacked != 0) {
        w.generation_error = absl::StrCat("it refused generation ", waypoint_.health_nacked, ": ",
                                          waypoint_.dp->nack_error());
        w.fail_closed = true;
      }
    }
  }
  admin_state_->SetHealth(std::move(h));
}

namespace {

// Istio's waypoint binding: the pod's istio.io/use-waypoint label, else its namespace's; "none"
// on the pod opts out of a namespace waypoint. istio.io/use-waypoint-namespace names another
// namespace for the waypoint.
// `ambitctl check`'s question to this node's waypoint data plane; runs on a gRPC thread.
std::function<
    absl::StatusOr<supervisor::ExtAuthzProbeAnswer>(const supervisor::ExtAuthzProbeQuery&)>
ExtAuthzProber(std::string waypoint_socket) {
  return [waypoint_socket = std::move(waypoint_socket)](const supervisor::ExtAuthzProbeQuery& query)
             -> absl::StatusOr<supervisor::ExtAuthzProbeAnswer> {
    std::error_code ec;
    if (!std::filesystem::exists(waypoint_socket, ec)) {
      return absl::UnavailableError(
          "no waypoint data plane (ambit-waypoint) runs on this node: no pod of a waypoint is "
          "enrolled here");
    }
    return supervisor::DataPlane::ProbeExtAuthz(waypoint_socket, query);
  };
}

std::string Find(const std::map<std::string, std::string>& map, const std::string& key) {
  auto it = map.find(key);
  return it == map.end() ? std::string() : it->second;
}

}  // namespace

void Agent::PublishViews() {
  // The sk_lookup program joins the list when the first pod is enrolled.
  PublishBpf();
  const auto peer_authns = security_.PeerAuthenticationList();

  // The same resolution the data plane's snapshot gets (node/waypoints.h).
  auto waypoints =
      std::make_shared<const state::WaypointResolution>(state::ResolveWaypoints(*state_));
  // Built on request from immutable copies: the cluster state is shared, the rest is this
  // node's (a few entries).
  struct Redirect {
    uint64_t netns_cookie;
    uint32_t slot;
    std::string netns_source;
    std::vector<std::string> listeners;
  };
  std::map<std::string, Redirect> redirects;
  for (const auto& [uid, e] : enrolled_) {
    Redirect& r = redirects[uid];
    r.netns_cookie = e.netns_cookie;
    r.slot = e.slot;
    r.netns_source = e.netns_source;
    const auto& l = e.listeners;
    if (l.outbound_v4) r.listeners.push_back("outbound-v4");
    if (l.outbound_v6) r.listeners.push_back("outbound-v6");
    if (l.plain_v4) r.listeners.push_back("inbound-plain-v4");
    if (l.plain_v6) r.listeners.push_back("inbound-plain-v6");
    if (l.hbone_v4) r.listeners.push_back("hbone-v4");
    if (l.hbone_v6) r.listeners.push_back("hbone-v6");
  }
  admin_state_->SetWorkloads([cluster = state_, peer_authns, redirects = std::move(redirects),
                              failed = enrollment_.failed(), refused = enrollment_.refused(),
                              node_name = options_.node_name, waypoints,
                              object_warnings = object_warnings_] {
    pb::ListWorkloadsResponse workloads;
    for (const auto& [key, pod] : cluster->pods) {
      auto* w = workloads.add_workloads();
      w->set_namespace_(pod.namespace_name);
      w->set_name(pod.name);
      for (const auto& ip : pod.ips) w->add_ips(ip.ToString());
      w->set_node(pod.node_name);
      w->set_identity(state::SpiffeId(cluster->mesh, pod));
      auto e = redirects.find(key);
      if (e != redirects.end()) {
        w->set_role("enrolled");
        auto* r = w->mutable_redirect();
        r->set_netns_cookie(e->second.netns_cookie);
        r->set_slot(e->second.slot);
        r->set_netns_source(e->second.netns_source);
        for (const auto& l : e->second.listeners) r->add_listeners(l);
      } else if (state::InMesh(pod, *cluster)) {
        w->set_role(pod.node_name == node_name ? "pending" : "peer");
      } else {
        w->set_role("outside");
      }
      if (auto f = failed.find(key); f != failed.end()) w->set_enroll_error(f->second);
      if (auto c = cluster->ip_conflicts.find(key); c != cluster->ip_conflicts.end()) {
        if (w->role() == "pending") w->set_role("refused");
        w->set_status(absl::StrCat("conflict: ", c->second.Summary()));
        w->set_enroll_error(absl::StrCat("address ", c->second.ip.ToString(),
                                         " is held by the older Pod ", c->second.holder, " (",
                                         c->second.holder_file, ", ", c->second.holder_age, ")"));
      } else if (auto r = refused.find(key); r != refused.end()) {
        w->set_role("refused");
        w->set_status("refused: names the node's own network namespace");
        w->set_enroll_error(r->second);
      } else if (failed.contains(key)) {
        w->set_status("enroll failed; retrying");
      } else {
        w->set_status("ok");
      }
      auto mtls = authz::ResolveMtlsMode(peer_authns, cluster->mesh.root_namespace,
                                         pod.namespace_name, pod.labels, 0);
      w->set_mtls_mode(std::string(authz::MtlsModeName(mtls.mode)));
      w->set_mtls_policy(mtls.policy);
      w->set_waypoint(Find(waypoints->workloads, key));
      w->set_waypoint_instance_of(Find(waypoints->instance_of, key));
      w->set_waypoint_bypass_allowed(waypoints->bypass_allowed.contains(key));
      if (auto f = object_warnings.find(absl::StrCat("Pod ", key)); f != object_warnings.end()) {
        for (const auto& m : f->second) w->add_warnings(m);
      }
    }
    return workloads;
  });

  // config::Lint's notes on a policy, each naming it, as the engine's load warnings do.
  auto add_object_warnings = [this](const std::string& object, pb::PolicyEntry* out) {
    auto f = object_warnings_.find(object);
    if (f == object_warnings_.end()) return;
    for (const auto& m : f->second) out->add_warnings(absl::StrCat(object, ": ", m));
  };
  pb::ListPoliciesResponse policies;
  const std::string& root = state_->mesh.root_namespace;
  for (const auto& [key, p] : security_.authorization_policies) {
    auto* out = policies.add_policies();
    out->set_kind("AuthorizationPolicy");
    out->set_namespace_(p.namespace_name);
    out->set_name(p.name);
    out->set_action(std::string(authz::ActionName(p.action)));
    out->set_provider(p.provider);
    if (!p.target_refs.empty()) {
      std::vector<std::string> refs;
      for (const auto& r : p.target_refs) refs.push_back(absl::StrCat(r.kind, "/", r.name));
      out->set_scope(absl::StrCat("targetRefs ", absl::StrJoin(refs, ", ")));
    } else if (p.selector.has_value() && !p.selector->empty()) {
      out->set_scope(absl::StrCat("selector ", LabelText(*p.selector)));
    } else {
      out->set_scope(p.namespace_name == root ? "mesh-wide" : "namespace");
    }
    out->set_dry_run(p.dry_run);
    out->set_source_file(p.source_file);
    if (engine_) {
      for (const auto& w : engine_->LoadWarnings()) {
        if (absl::StartsWith(w, key + ":")) out->add_warnings(w);
      }
    }
    add_object_warnings(absl::StrCat("AuthorizationPolicy ", key), out);
  }
  for (const auto& [key, p] : security_.peer_authentications) {
    auto* out = policies.add_policies();
    out->set_kind("PeerAuthentication");
    out->set_namespace_(p.namespace_name);
    out->set_name(p.name);
    out->set_action(std::string(authz::MtlsModeName(p.mode)));
    if (!p.selector.empty()) {
      out->set_scope(absl::StrCat("selector ", LabelText(p.selector)));
    } else {
      out->set_scope(p.namespace_name == root ? "mesh-wide" : "namespace");
    }
    for (const auto& [port, mode] : p.port_level) {
      out->add_port_level(absl::StrCat(port, "=", authz::MtlsModeName(mode)));
    }
    out->set_source_file(p.source_file);
    add_object_warnings(absl::StrCat("PeerAuthentication ", key), out);
  }
  for (const auto& e : load_errors_) {
    auto* out = policies.add_problems();
    out->set_file(e.file);
    out->set_line(e.line);
    out->set_object(e.object);
    out->set_field(e.field);
    out->set_message(e.message);
    out->set_warning(e.warning);
    out->set_text(e.ToString());
  }
  admin_state_->SetPolicies(std::move(policies));

  pb::ListServicesResponse services;
  for (const auto& [key, svc] : state_->services) {
    auto* out = services.add_services();
    out->set_namespace_(svc.namespace_name);
    out->set_name(svc.name);
    for (const auto& ip : svc.cluster_ips) out->add_cluster_ips(ip.ToString());
    for (const auto& p : svc.ports) {
      auto* port = out->add_ports();
      port->set_name(p.name);
      port->set_port(p.port);
      port->set_target_port(p.target_port);
      port->set_protocol(p.protocol);
    }
    for (const auto& [pk, pod] : state_->pods) {
      if (state::Selects(svc, pod) && !state_->HasIpConflict(pk)) out->add_endpoints(pod.Key());
    }
    out->set_waypoint(Find(waypoints->services, key));
  }
  admin_state_->SetServices(std::move(services));

  if (engine_) {
    admin_state_->SetCheckEvaluator(NewCheckEvaluator(
        {.state = state_,
         .peer_authns = peer_authns,
         .engine = engine_,
         .request_authns = security_.RequestAuthenticationList(),
         .waypoints = waypoints,
         .ext_authz_prober = ExtAuthzProber(options_.waypoint_control_socket())}));
  }
  PublishHealth();
}

void AddTrustBundle(const std::vector<std::string>& roots,
                    ambit::admin::v1::ListCertificatesResponse* certificates) {
  for (const auto& pem : roots) {
    auto info = issuance::DescribeCertificate(pem);
    if (!info.ok()) continue;
    auto* root = certificates->add_trust_bundle();
    root->set_subject(info->subject);
    root->set_serial(info->serial_hex);
    root->mutable_not_after()->set_unix_seconds(absl::ToUnixSeconds(info->not_after));
    root->set_sha256_fingerprint(info->sha256_fingerprint);
  }
}

}  // namespace ambit::node
