#pragma once

#include <cstdint>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "agent/common/unique_fd.h"

namespace ambit {

// Opens a network namespace by path (/var/run/netns/NAME, /proc/PID/ns/net).
absl::StatusOr<UniqueFd> OpenNetns(const std::string& path);

// Runs fn on a short-lived thread that has joined the network namespace netns_fd; sockets fn
// creates belong to that namespace. The caller's own thread never changes namespace.
absl::Status RunInNetns(int netns_fd, absl::FunctionRef<absl::Status()> fn);

// The kernel's cookie for a network namespace: the key the BPF programs use for a pod.
absl::StatusOr<uint64_t> NetnsCookie(int netns_fd);

// The cookie of the namespace a socket belongs to.
absl::StatusOr<uint64_t> SocketNetnsCookie(int sock);

// Creates a socket inside netns_fd from the calling thread, which switches namespace and back
// (host_netns_fd is the namespace to return to). For data-plane threads, where a thread
// hand-off per connection would cost more than two setns calls.
absl::StatusOr<UniqueFd> SocketInNetns(int netns_fd, int host_netns_fd, int domain, int type);

}  // namespace ambit
