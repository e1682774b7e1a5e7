#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/common/clock.h"

namespace ambit::supervisor {

// What the data plane holds for one pod, as its answer to a heartbeat says.
struct PodListenerReport {
  std::string uid;
  uint32_t listening = 0;          // listener sockets still listening
  uint32_t workers_accepting = 0;  // workers that watch all of them
  bool waiting_for_certificate = false;
};

// The data plane's answer to ping `seq`, sent once every worker thread had run a task.
struct PongReport {
  uint64_t seq = 0;
  uint32_t workers = 0;
  std::vector<PodListenerReport> pods;
};

// An enrolled pod as the agent knows it: how many listeners it handed the data plane, and the
// heartbeat sequence number current when it did.
struct ExpectedListeners {
  std::string uid;
  uint32_t listeners = 0;
  uint64_t sent_at_seq = 0;
};

// The enrolled pods whose listeners `pong` shows missing, no longer listening, or not watched by
// every worker (a pod still waiting for its first certificate is not served yet, rightly). A pod
// sent after the ping that `pong` answers is not judged by it. One line per pod, naming it.
std::vector<std::string> ListenerProblems(const std::vector<ExpectedListeners>& pods,
                                          const PongReport& pong);

// The agent's view of the heartbeat on the control channel: one ping outstanding at a time, and
// whether its answer is past the deadline. A data plane that is late is reported, never
// restarted: a long pause (a stopped process, a swapped-out heap) ends by itself, and a restart
// would reset every live connection. Pure; not thread-safe (the agent's control thread).
class HeartbeatMonitor {
 public:
  HeartbeatMonitor(const Clock& clock, absl::Duration deadline)
      : clock_(clock), deadline_(deadline) {}

  // A new control session; `supported`: the data plane announced that it answers pings. What
  // was outstanding belonged to the previous session and is forgotten.
  void Reset(bool supported);
  bool supported() const { return supported_; }

  // The sequence number of the ping to send now, or nothing while one is still unanswered (a
  // hung data plane does not get a queue of pings) or the data plane does not answer pings.
  std::optional<uint64_t> NextPing();
  // The number the next ping will carry. Whatever the agent sent before that ping, the data
  // plane has processed by the time it answers it (one ordered channel).
  uint64_t next_seq() const { return next_seq_; }

  // An answer arrived. True when it answers the outstanding ping; any other (a previous
  // session's, a duplicate) is ignored.
  bool OnPong(uint64_t seq);

  // When the unanswered ping was sent; InfiniteFuture when none is outstanding.
  absl::Time waiting_since() const { return waiting_since_; }
  absl::Duration deadline() const { return deadline_; }
  // True while the outstanding ping is older than the deadline.
  bool Late() const;

  // What changed since the previous call, for one log line per change.
  enum class Change { kNone, kLate, kAnsweredAgain };
  Change TakeChange();
  // How long the data plane went without answering, as of the last kAnsweredAgain.
  absl::Duration last_silence() const { return last_silence_; }

 private:
  const Clock& clock_;
  const absl::Duration deadline_;
  bool supported_ = false;
  uint64_t next_seq_ = 1;
  std::optional<uint64_t> outstanding_;
  absl::Time waiting_since_ = absl::InfiniteFuture();
  bool reported_late_ = false;
  bool answered_after_late_ = false;
  absl::Duration last_silence_;
};

}  // namespace ambit::supervisor
