#include "agent/node/dataplane_state.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ambit::node {

uint64_t GenerationTracker::Track(uint64_t version, uint64_t acked, absl::Time now) {
  if (version_ == acked || pending_since_ == absl::InfiniteFuture()) pending_since_ = now;
  version_ = version;
  return version_;
}

const char* DataPlaneName(DataPlaneKind kind) {
  switch (kind) {
    case DataPlaneKind::kTunnel:
      return "data plane";
    case DataPlaneKind::kWaypoint:
      return "waypoint data plane";
    case DataPlaneKind::kNone:
      break;
  }
  return "no data plane";
}

DataPlaneKind ProcessFor(const std::string& uid, const std::set<std::string>& waypoint_pods) {
  return waypoint_pods.contains(uid) ? DataPlaneKind::kWaypoint : DataPlaneKind::kTunnel;
}

bool WaypointNeeded(const std::vector<std::string>& enrolled,
                    const std::set<std::string>& waypoint_pods) {
  return std::any_of(enrolled.begin(), enrolled.end(), [&waypoint_pods](const std::string& uid) {
    return waypoint_pods.contains(uid);
  });
}

std::vector<PodMove> PlanMoves(const std::map<std::string, DataPlaneKind>& served,
                               const std::set<std::string>& waypoint_pods,
                               const std::map<DataPlaneKind, bool>& connected) {
  std::vector<PodMove> out;
  for (const auto& [uid, from] : served) {
    const DataPlaneKind to = ProcessFor(uid, waypoint_pods);
    if (from == to) continue;
    auto up = connected.find(to);
    const bool reachable = up != connected.end() && up->second;
    if (from == DataPlaneKind::kNone && !reachable) continue;  // its session will send it
    out.push_back({uid, from, to});
  }
  return out;
}

std::vector<std::string> SessionPods(DataPlaneKind kind, const std::vector<std::string>& enrolled,
                                     const std::set<std::string>& waypoint_pods) {
  std::vector<std::string> out;
  for (const auto& uid : enrolled) {
    if (ProcessFor(uid, waypoint_pods) == kind) out.push_back(uid);
  }
  return out;
}

absl::Duration RestartBackoff::OnExit(absl::Time now) {
  // Only a run that came up (OnStarted) and lasted earns a quick restart. A process that dies
  // before it comes up has no run to measure: it backs off, whatever an earlier run achieved.
  if (started_ != absl::InfinitePast() && now - started_ > options_.healthy_run) {
    next_ = options_.initial;
  }
  started_ = absl::InfinitePast();
  ++restarts_;
  return Take();
}

absl::Duration RestartBackoff::Take() {
  const absl::Duration delay = next_;
  next_ = std::min(next_ * 2, options_.max);
  return delay;
}

absl::Status DecideCsr(const std::string& identity,
                       const std::set<std::string>& enrolled_identities) {
  if (enrolled_identities.contains(identity)) return absl::OkStatus();
  return absl::PermissionDeniedError("no enrolled pod on this node has identity " + identity);
}

std::vector<supervisor::CertificateState> ChangedCertificates(
    const std::vector<supervisor::CertificateState>& before,
    const std::vector<supervisor::CertificateState>& now) {
  std::vector<supervisor::CertificateState> out;
  for (const auto& c : now) {
    const bool same = std::any_of(before.begin(), before.end(), [&c](const auto& old) {
      return old.identity == c.identity && old.state == c.state && old.serial_hex == c.serial_hex;
    });
    if (!same) out.push_back(c);
  }
  return out;
}

}  // namespace ambit::node

namespace ambit::node {

std::vector<std::string> StandbyProblems(const std::vector<supervisor::ExpectedListeners>& pods,
                                         const std::vector<std::string>& identities,
                                         const supervisor::PongReport& pong,
                                         const std::vector<supervisor::CertificateState>& certs,
                                         uint64_t sent_version, uint64_t acked_version,
                                         int64_t now_unix) {
  std::vector<std::string> problems = supervisor::ListenerProblems(pods, pong);
  for (const auto& x : pods) {
    if (x.sent_at_seq > pong.seq) {
      // Sent after the ping this answers: not judged by it, and so not known to serve yet.
      problems.push_back(absl::StrCat("pod ", x.uid, ": not yet in a heartbeat answer"));
      continue;
    }
    for (const auto& p : pong.pods) {
      if (p.uid == x.uid && p.waiting_for_certificate) {
        problems.push_back(absl::StrCat("pod ", x.uid, ": waiting for its certificate"));
      }
    }
  }
  for (const auto& identity : identities) {
    if (identity.empty()) continue;
    bool valid = false;
    for (const auto& c : certs) {
      if (c.identity == identity && (c.state == "valid" || c.state == "renewing") &&
          c.not_after_unix > now_unix) {
        valid = true;
      }
    }
    if (!valid) problems.push_back(absl::StrCat("no valid certificate for ", identity));
  }
  if (sent_version > 0 && acked_version < sent_version) {
    problems.push_back(absl::StrCat("configuration generation ", sent_version, " not applied"));
  }
  return problems;
}

}  // namespace ambit::node
