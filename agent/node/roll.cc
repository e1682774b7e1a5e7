// Rolling a data-plane process without dropping or refusing a connection
// (docs/ARCHITECTURE.md#restarts): a successor stands by on <control socket>.next, gets what the
// primary has, and once it serves every pod the primary is told to drain and the successor is
// promoted. The primary keeps serving until then: a successor that never serves is abandoned,
// never the other way round.
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "agent/common/formats.h"
#include "agent/common/log.h"
#include "agent/node/agent.h"
#include "agent/node/dataplane_state.h"

namespace ambit::node {
namespace {

constexpr const char* kComponent = "agent";
// How long `ambitctl dataplane roll` waits for the roll to end, on top of the standby timeout.
constexpr absl::Duration kRollAnswerMargin = absl::Seconds(10);

// Whether a standby serves <control socket>.next: the socket file exists and its lock
// (<control socket>.next.lock) is held. A socket file alone may be a killed standby's. The lock
// is read from /proc/locks, never tried: taking it even briefly could turn a standby that is
// starting at that moment into a third data plane that waits.
bool StandbyListening(const std::string& next_path) {
  struct stat st;
  if (stat(next_path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) return false;
  if (stat((next_path + ".lock").c_str(), &st) != 0) return false;
  std::ifstream locks("/proc/locks");
  const std::string id = absl::StrFormat("%02x:%02x:%u", major(st.st_dev), minor(st.st_dev),
                                         static_cast<uint64_t>(st.st_ino));
  std::string line;
  while (std::getline(locks, line)) {
    // "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF"
    std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.size() >= 6 && f[1] == "FLOCK" && f[5] == id) return true;
  }
  return false;
}

}  // namespace

absl::Status Agent::StartRoll(Process& process, bool spawn) {
  if (process.standby != nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("a roll of the ", process.name(), " is under way (standby pid ",
                     process.standby->dp->pid(), "); wait for it to end"));
  }
  if (!process.connected()) {
    return absl::UnavailableError(
        absl::StrCat("the ", process.name(), " is not connected: nothing to roll"));
  }
  const std::string socket = ControlSocketOf(process);
  auto standby = std::make_unique<Process::Standby>();
  standby->since = clock_->Now();
  standby->spawned = spawn;
  standby->heartbeat =
      std::make_unique<supervisor::HeartbeatMonitor>(RealClock::Get(), options_.heartbeat_deadline);
  // The same binary path, arguments and --control-socket as the primary: the new process finds
  // the socket's lock held and stands by on <socket>.next, where this session connects.
  standby->dp = NewDataPlane(process, /*standby=*/true);
  Process* p = &process;
  supervisor::DataPlane* raw = standby->dp.get();
  raw->on_csr_request = [this, p, raw](supervisor::CsrRequest r) {
    OnCsrRequest(*p, *raw, std::move(r));
  };
  raw->on_certificate_report = [this, p](std::vector<supervisor::CertificateState> c) {
    if (p->standby == nullptr) return;
    p->standby->certs = std::move(c);
    CheckStandby(*p);
  };
  raw->on_pong = [this, p](supervisor::PongReport r) {
    if (p->standby == nullptr || !p->standby->heartbeat->OnPong(r.seq)) return;
    p->standby->last_pong = std::move(r);
    CheckStandby(*p);
  };
  // A pod removed during the roll is answered by the primary; the standby's answer adds nothing.
  raw->on_pod_removed = [](const std::string&) {};
  process.standby = std::move(standby);
  Process::Standby& s = *process.standby;
  auto fail = [&](const absl::Status& status) {
    AbandonStandby(process, std::string(status.message()));
    return status;
  };
  auto handed_back = s.dp->Connect(spawn);
  if (!handed_back.ok()) return fail(handed_back.status());
  if (!handed_back->empty()) {
    // Only a fresh process can stand by: pods it already holds are a primary's, which this is
    // not (its lock says so).
    return fail(absl::FailedPreconditionError(
        absl::StrCat("the standby on ", socket, ".next handed back ", handed_back->size(),
                     " pod(s); a standby must be a fresh process")));
  }
  s.heartbeat->Reset(s.dp->heartbeat_supported());
  if (!s.dp->heartbeat_supported()) {
    // Without pongs there is no telling when it serves.
    return fail(absl::FailedPreconditionError("the standby does not answer heartbeats"));
  }
  if (s.dp->pidfd() >= 0) {
    if (absl::Status w =
            Watch(s.dp->pidfd(), [this, p] { AbandonStandby(*p, "it exited before it served"); });
        !w.ok()) {
      return fail(w);
    }
  }
  if (absl::Status w = WatchControl(*s.dp, [this, p] { OnStandbyReadable(*p); }); !w.ok()) {
    return fail(w);
  }
  absl::Status sent = s.dp->SendMaps(redirector_->orig_dst_map_fd(), redirector_->deliver_map_fd(),
                                     redirector_->probes_map_fd());
  if (sent.ok()) sent = s.dp->SendTrustBundle(trust_bundle_, Crls());
  // Every pod the primary serves, with the same listener descriptors: both processes accept on
  // the same sockets until the primary drains.
  for (const auto& [uid, e] : enrolled_) {
    if (!sent.ok()) break;
    if (e.served_by != process.kind) continue;
    s.sent_at_seq[uid] = s.heartbeat->next_seq();
    sent = SendPodTo(*s.dp, e).status();
  }
  if (sent.ok() && config_applied_ && last_version_ > 0) {
    // The generation in force, under its own version (a new one would change nothing).
    auto snapshot = BuildSnapshot(last_version_);
    sent = snapshot.ok() ? s.dp->SendSnapshot(*snapshot) : snapshot.status();
    s.sent_version = last_version_;
  }
  if (!sent.ok()) return fail(sent);
  if (reapply_log_levels_) reapply_log_levels_(socket + ".next");
  process.roll = absl::StrCat("standby pid ", s.dp->pid(), " ",
                              spawn ? "started by ambitd" : "appeared on " + socket + ".next",
                              " at ", FormatTimestamp(clock_->Now()), ": waiting for it to serve ",
                              s.sent_at_seq.size(), " pod(s)");
  AMBIT_LOG(kComponent, Info) << process.name() << " roll: " << process.roll << " (primary pid "
                              << process.dp->pid() << " serves meanwhile)";
  PublishHealth();
  return absl::OkStatus();
}

void Agent::OnStandbyReadable(Process& process) {
  if (process.standby == nullptr) return;
  if (absl::Status s = process.standby->dp->OnControlReadable(); !s.ok()) {
    AbandonStandby(process, absl::StrCat("its control session ended (", s.message(), ")"));
    return;
  }
  if (const uint64_t refused = process.standby->dp->nacked_version(); refused != 0) {
    // Failing closed, it would refuse every connection it accepts on the listeners it shares
    // with the primary: it goes at once.
    AbandonStandby(process, absl::StrCat("refused configuration generation ", refused, " (",
                                         process.standby->dp->nack_error(), ")"));
    return;
  }
  CheckStandby(process);
}

void Agent::CheckStandby(Process& process) {
  if (process.standby == nullptr || !process.connected()) return;
  Process::Standby& s = *process.standby;
  if (!s.last_pong.has_value()) return;
  std::vector<supervisor::ExpectedListeners> expected;
  std::vector<std::string> identities;
  for (const auto& [uid, seq] : s.sent_at_seq) {
    auto it = enrolled_.find(uid);
    if (it == enrolled_.end()) continue;  // removed meanwhile
    supervisor::ExpectedListeners x{uid, 0, seq};
    for (const UniqueFd* fd : {&it->second.listeners.outbound_v4, &it->second.listeners.outbound_v6,
                               &it->second.listeners.plain_v4, &it->second.listeners.plain_v6,
                               &it->second.listeners.hbone_v4, &it->second.listeners.hbone_v6}) {
      if (*fd) ++x.listeners;
    }
    expected.push_back(x);
    identities.push_back(state::SpiffeId(state_->mesh, it->second.pod));
  }
  const std::vector<std::string> problems =
      StandbyProblems(expected, identities, *s.last_pong, s.certs, s.sent_version,
                      s.dp->acked_version(), absl::ToUnixSeconds(clock_->Now()));
  if (!problems.empty()) {
    AMBIT_LOG(kComponent, Debug) << process.name() << " standby not serving yet: " << problems[0];
    return;
  }
  // Not from here: this runs inside the standby's own callback (its pong or certificate
  // report), which the promotion replaces. After this batch of events, if still standing by.
  if (s.promoting) return;
  s.promoting = true;
  Process* p = &process;
  loop_->Defer([this, p] {
    if (p->standby != nullptr && p->standby->promoting && p->connected()) PromoteStandby(*p);
  });
}

void Agent::PromoteStandby(Process& process) {
  std::unique_ptr<Process::Standby> s = std::move(process.standby);
  std::unique_ptr<supervisor::DataPlane> old = std::move(process.dp);
  const pid_t old_pid = old->pid();
  const bool drains = old->drain_supported();
  // The old session ends here: nothing it does from now on is the agent's concern, and its exit
  // is no crash (no restart, no back-off, no readiness failure).
  Unwatch(old->control_fd());
  Unwatch(old->pidfd());
  if (drains) {
    if (absl::Status d = old->SendDrain(options_.drain_grace); !d.ok()) {
      AMBIT_LOG(kComponent, Warning)
          << process.name() << " pid=" << old_pid << ": drain not delivered: " << d.message();
    }
    old->CloseSession();
  }
  // The successor takes the primary's place; its callbacks already find their asker by tag.
  process.dp = std::move(s->dp);
  process.dp->BecomePrimary(process.name());
  Process* p = &process;
  process.dp->on_certificate_report = [this, p](std::vector<supervisor::CertificateState> c) {
    OnCertificateReport(*p, std::move(c));
  };
  process.dp->on_pod_removed = [this](const std::string& uid) { OnPodRemoved(uid); };
  process.dp->on_pong = [this, p](supervisor::PongReport r) { OnPong(*p, std::move(r)); };
  process.heartbeat = std::move(s->heartbeat);
  process.last_pong = std::move(s->last_pong);
  process.certs = std::move(s->certs);
  for (auto& [uid, e] : enrolled_) {
    if (auto it = s->sent_at_seq.find(uid); it != s->sent_at_seq.end()) e.sent_at_seq = it->second;
  }
  if (process.dp->pidfd() >= 0) {
    (void)Watch(process.dp->pidfd(), [this, p] { OnDataPlaneExit(*p); });
  }
  (void)WatchControl(*process.dp, [this, p] { OnControlReadable(*p); });
  process.generation.OnAcked(process.dp->acked_version());
  const absl::Time now = clock_->Now();
  // Its run starts now: a promoted process that keeps dying backs off like any other primary,
  // not on the strength of its predecessor's long run.
  process.restart.OnStarted(now);
  process.connect_error.clear();
  if (!drains) {
    // An earlier build that cannot drain is replaced as on a restart: its connections end.
    AMBIT_LOG(kComponent, Warning) << process.name() << " pid=" << old_pid
                                   << " does not drain (an earlier build): stopping it; its "
                                      "connections end with it";
    if (old->pidfd() >= 0) {
      old->Stop();
    } else {
      old->Disconnect();
    }
  } else {
    Process::Draining d{std::move(old), old_pid, now + options_.drain_grace + absl::Seconds(5)};
    if (d.dp->pidfd() >= 0) {
      const int pidfd = d.dp->pidfd();
      (void)Watch(pidfd, [this, p, pidfd] { OnDrainedExit(*p, pidfd); });
    }
    process.draining.push_back(std::move(d));
  }
  process.roll = absl::StrCat(
      "rolled at ", FormatTimestamp(now), ": pid ", process.dp->pid(), " serves; pid ", old_pid,
      drains ? absl::StrCat(" drains for up to ", absl::FormatDuration(options_.drain_grace))
             : " was stopped");
  AMBIT_LOG(kComponent, Info) << process.name() << " " << process.roll;
  admin::v1::RollDataPlaneResponse answer;
  answer.set_mode(options_.external_dataplane ? "external" : "spawn");
  answer.set_old_pid(old_pid);
  answer.set_new_pid(process.dp->pid());
  answer.set_message(process.roll);
  FinishRoll(process, std::move(answer));
  PublishCertificates();
  PublishHealth();
}

void Agent::AbandonStandby(Process& process, const std::string& why) {
  if (process.standby == nullptr) return;
  std::unique_ptr<Process::Standby> s = std::move(process.standby);
  const pid_t pid = s->dp->pid();
  Unwatch(s->dp->control_fd());
  Unwatch(s->dp->pidfd());
  if (s->dp->pidfd() >= 0) {
    s->dp->Stop();  // ours: it goes (it never served, so nothing is dropped)
  } else {
    s->dp->Disconnect();
    // Started apart: not ours to stop. Connected to again only after a while, so a standby that
    // cannot serve is not re-sent everything every second.
    process.standby_retry_after = clock_->Now() + options_.standby_timeout;
  }
  process.roll =
      absl::StrCat("roll abandoned at ", FormatTimestamp(clock_->Now()), ": standby pid ", pid, " ",
                   why, "; pid ", process.connected() ? process.dp->pid() : 0, " keeps serving");
  AMBIT_LOG(kComponent, Error) << process.name() << " " << process.roll;
  FinishRoll(process, absl::UnavailableError(process.roll));
  PublishHealth();
}

void Agent::OnDrainedExit(Process& process, int pidfd) {
  Unwatch(pidfd);
  for (auto it = process.draining.begin(); it != process.draining.end(); ++it) {
    if (it->dp->pidfd() != pidfd) continue;
    const std::string how = it->dp->Reap();
    AMBIT_LOG(kComponent, Info) << "drained " << process.name() << " pid=" << it->pid << " " << how;
    process.draining.erase(it);
    break;
  }
  PublishHealth();
}

void Agent::RollTick(Process& process) {
  const absl::Time now = clock_->Now();
  // Started apart, a drained predecessor is not watched by PID: listed for its grace only.
  for (auto it = process.draining.begin(); it != process.draining.end();) {
    if (it->dp->pidfd() < 0 && now >= it->until) {
      it = process.draining.erase(it);
    } else {
      ++it;
    }
  }
  if (process.standby != nullptr) {
    Process::Standby& s = *process.standby;
    if (now - s.since > options_.standby_timeout) {
      AbandonStandby(process, absl::StrCat("did not serve every pod within ",
                                           absl::FormatDuration(options_.standby_timeout)));
      return;
    }
    if (auto seq = s.heartbeat->NextPing()) {
      if (absl::Status ping = s.dp->SendPing(*seq); !ping.ok()) {
        AbandonStandby(process, absl::StrCat("heartbeat not sent: ", ping.message()));
      }
    }
    return;
  }
  // A standby that appeared by itself (--dataplane=external: the new pod's container) starts a
  // roll; in spawn mode a second process started by hand on the socket is treated the same.
  if (!process.connected() || !process.dp->drain_supported() || now < process.standby_retry_after) {
    return;
  }
  if (!StandbyListening(ControlSocketOf(process) + ".next")) return;
  AMBIT_LOG(kComponent, Info) << "a standby " << process.name() << " listens on "
                              << ControlSocketOf(process) << ".next: rolling to it";
  (void)StartRoll(process, /*spawn=*/false);
}

void Agent::FinishRoll(Process& process, absl::StatusOr<admin::v1::RollDataPlaneResponse> result) {
  auto waiters = std::move(process.roll_waiters);
  process.roll_waiters.clear();
  for (auto& w : waiters) w(result);
}

void Agent::InitRollHandler() {
  // The gRPC thread waits on `done`; the control thread fills it. Shared, so whichever side
  // goes first leaves the other a valid object.
  struct Pending {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    absl::StatusOr<admin::v1::RollDataPlaneResponse> result ABSL_GUARDED_BY(mu) =
        absl::UnavailableError("the agent stopped before the roll ended");
  };
  const absl::Duration wait = options_.standby_timeout + kRollAnswerMargin;
  admin_state_->SetRollHandler([this, wait](const admin::v1::RollDataPlaneRequest& request)
                                   -> absl::StatusOr<admin::v1::RollDataPlaneResponse> {
    auto pending = std::make_shared<Pending>();
    auto answer = [pending](absl::StatusOr<admin::v1::RollDataPlaneResponse> r) {
      absl::MutexLock lock(&pending->mu);
      pending->result = std::move(r);
      pending->done = true;
    };
    const bool waypoint = request.process() == "waypoint";
    completions_.Post([this, waypoint, answer] {
      Process& process = waypoint ? waypoint_ : tunnel_;
      const std::string socket = ControlSocketOf(process);
      if (options_.external_dataplane) {
        admin::v1::RollDataPlaneResponse r;
        r.set_mode("external");
        r.set_old_pid(process.connected() ? process.dp->pid() : 0);
        r.set_message(absl::StrCat(
            "the data planes are started apart from ambitd (--dataplane=external): a roll is a "
            "new container of ",
            process.name(), " on ", socket, ", which stands by on ", socket,
            ".next; ambitd then drains pid ", r.old_pid(),
            " once the new one serves. Running: pid ", r.old_pid(),
            process.roll.empty() ? "" : "; " + process.roll));
        answer(std::move(r));
        return;
      }
      if (absl::Status s = StartRoll(process, /*spawn=*/true); !s.ok()) {
        answer(s);
        return;
      }
      if (process.standby != nullptr) process.roll_waiters.push_back(answer);
    });
    // Bounded: the roll itself is bounded by the standby timeout.
    absl::MutexLock lock(&pending->mu);
    if (!pending->mu.AwaitWithTimeout(absl::Condition(&pending->done), wait)) {
      return absl::DeadlineExceededError(absl::StrCat(
          "the roll did not end within ", absl::FormatDuration(wait), "; see ambitctl status"));
    }
    return pending->result;
  });
}

}  // namespace ambit::node
