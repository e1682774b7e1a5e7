#include "agent/supervisor/heartbeat.h"

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

}  // namespace ambit::supervisor
