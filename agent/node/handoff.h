#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/common/unique_fd.h"

namespace ambit::node {

// The agent hand-off (ambitd --take-over): a new ambitd of an instance whose lock is held asks
// the running one, over <run dir>/agent-handoff.sock, to step aside; the running one stops
// enrolling and answering, closes its listeners and data-plane sessions (the data planes, pins
// and pods stay, as when an agent exits), answers with the instance lock's descriptor, and idles
// until SIGTERM. The new one then starts as a restarted agent does. Wire messages:
// proto/ambit/dataplane/v1/handoff.proto; they stop at this file's functions.

// <run dir>/agent-handoff.sock.
std::string HandOffSocketFor(const std::string& run_dir);

// This build, as a take-over names it in logs (agent/common/version.h).
std::string BuildVersion();

// What a new agent says about itself.
struct TakeOverRequest {
  int64_t pid = 0;
  std::string build;
  uint32_t bpf_abi = 0;
  std::string instance;
};

// The request this process sends (its PID, build, BPF ABI) for `instance`.
TakeOverRequest ThisAgent(const std::string& instance);

// Parses a packet from the hand-off socket as a request. InvalidArgument for bytes that are no
// request, an unknown hand-off version, or fields out of range: untrusted input, never a crash.
absl::StatusOr<TakeOverRequest> ParseTakeOverRequest(const std::string& bytes);

// The running agent's answer: stepped aside (the lock's descriptor attached when lock_fd >= 0),
// or refused with why. Sends one packet on `conn`.
absl::Status SendTakeOverAnswer(int conn, bool stepped_aside, const std::string& refused,
                                int lock_fd);

// What the new agent learns once the running one stepped aside.
struct SteppedAside {
  int64_t pid = 0;  // in the old agent's PID namespace
  std::string build;
  uint32_t bpf_abi = 0;
  UniqueFd lock;  // the instance lock's descriptor, when it came along
};

// The new agent's side: connects to `socket_path`, sends this agent's request and waits up to
// `timeout` for the answer. Unavailable when nothing serves the socket (no file, or a stale one
// nobody listens on: the agent that held the lock is gone or does not offer a hand-off);
// FailedPrecondition with the running agent's reason when it refused; DeadlineExceeded when it
// did not answer in time.
absl::StatusOr<SteppedAside> RequestTakeOver(const std::string& socket_path,
                                             const TakeOverRequest& request,
                                             absl::Duration timeout);

}  // namespace ambit::node
