#include "agent/supervisor/heartbeat.h"

#include <map>

#include "absl/strings/str_cat.h"

namespace ambit::supervisor {

void HeartbeatMonitor::Reset(bool supported) {
  supported_ = supported;
  outstanding_.reset();
  waiting_since_ = absl::InfiniteFuture();
  // A late data plane that went away is reported as gone by the session itself; the next
  // session starts with nothing to recover from.
  reported_late_ = false;
  answered_after_late_ = false;
}

std::optional<uint64_t> HeartbeatMonitor::NextPing() {
  if (!supported_ || outstanding_.has_value()) return std::nullopt;
  outstanding_ = next_seq_++;
  waiting_since_ = clock_.Now();
  return outstanding_;
}

bool HeartbeatMonitor::OnPong(uint64_t seq) {
  if (!outstanding_.has_value() || *outstanding_ != seq) return false;
  const absl::Duration silence = clock_.Now() - waiting_since_;
  outstanding_.reset();
  waiting_since_ = absl::InfiniteFuture();
  if (reported_late_) {
    reported_late_ = false;
    answered_after_late_ = true;
    last_silence_ = silence;
  }
  return true;
}

bool HeartbeatMonitor::Late() const {
  return outstanding_.has_value() && clock_.Now() - waiting_since_ > deadline_;
}

HeartbeatMonitor::Change HeartbeatMonitor::TakeChange() {
  if (answered_after_late_) {
    answered_after_late_ = false;
    return Change::kAnsweredAgain;
  }
  if (!reported_late_ && Late()) {
    reported_late_ = true;
    return Change::kLate;
  }
  return Change::kNone;
}

std::vector<std::string> ListenerProblems(const std::vector<ExpectedListeners>& pods,
                                          const PongReport& pong) {
  std::map<std::string, const PodListenerReport*> reported;
  for (const auto& p : pong.pods) reported[p.uid] = &p;
  std::vector<std::string> problems;
  for (const auto& pod : pods) {
    if (pod.sent_at_seq > pong.seq) continue;  // the data plane had not seen it yet
    auto it = reported.find(pod.uid);
    if (it == reported.end()) {
      problems.push_back(
          absl::StrCat("pod ", pod.uid, ": the data plane does not hold its listeners"));
      continue;
    }
    const PodListenerReport& r = *it->second;
    if (r.listening < pod.listeners) {
      problems.push_back(absl::StrCat("pod ", pod.uid, ": only ", r.listening, " of its ",
                                      pod.listeners, " listeners are listening in the data plane"));
    } else if (!r.waiting_for_certificate && r.workers_accepting < pong.workers) {
      problems.push_back(absl::StrCat("pod ", pod.uid, ": only ", r.workers_accepting, " of ",
                                      pong.workers, " data-plane workers accept its connections"));
    }
  }
  return problems;
}

}  // namespace ambit::supervisor
