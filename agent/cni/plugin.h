#pragma once

// ambit-cni's commands (ADD, DEL, CHECK, VERSION) over two small seams: the pod's network
// namespace and the ZDS socket of ambitd. RunCommand is the whole plug-in but for reading the
// process's environment and stdin. Thread-compatible.

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/cni/cni.h"
#include "agent/common/unique_fd.h"

namespace ambit::cni {

// What ambit-cni asks of ambitd, one ZDS session per call (agent/cni/zds_client.h is the real
// one). Each call completes or fails by deadline; errors carry their CNI code (CniStatus).
class PodHandOff {
 public:
  virtual ~PodHandOff() = default;
  // Opens CNI_NETNS and checks it is a network namespace.
  virtual absl::StatusOr<UniqueFd> OpenNetns(const std::string& path) = 0;
  // AddWorkload with the namespace in SCM_RIGHTS; OK once ambitd acked without error.
  virtual absl::Status Add(const std::string& socket, const PodRef& pod, int netns_fd,
                           absl::Time deadline) = 0;
  virtual absl::Status Del(const std::string& socket, const std::string& uid,
                           absl::Time deadline) = 0;
  // Connects and reads ambitd's hello, sends nothing.
  virtual absl::Status Probe(const std::string& socket, absl::Time deadline) = 0;
};

struct Outcome {
  std::string stdout_text;  // the result or error object; empty for a DEL or CHECK that passed
  std::string log;          // one line for stderr (what was done), may be empty
  int exit_code = 0;
};

// Runs one invocation. `now` starts the configuration's timeout.
Outcome RunCommand(const std::function<const char*(const char*)>& getenv,
                   absl::string_view stdin_text, PodHandOff& handoff, absl::Time now);

}  // namespace ambit::cni
