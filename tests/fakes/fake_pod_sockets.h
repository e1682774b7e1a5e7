#pragma once

// A PodSockets without a kernel: listeners are listening until StopListening or SetListening
// says otherwise, and sockets "in a pod's netns" are plain sockets of the test's own namespace
// (or a configured error). Thread-safe, like the interface.

#include <sys/socket.h>

#include <set>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "agent/tunnel/pod_sockets.h"

namespace ambit::tunnel::testing {

class FakePodSockets final : public PodSockets {
 public:
  absl::StatusOr<UniqueFd> SocketInNetns(int netns_fd, int host_netns_fd, int domain,
                                         int type) const override {
    absl::MutexLock lock(&mu_);
    created_in_.push_back(netns_fd);
    (void)host_netns_fd;
    if (!socket_error_.ok()) return socket_error_;
    UniqueFd fd(socket(domain, type | SOCK_CLOEXEC, 0));
    if (!fd) return absl::ErrnoToStatus(errno, "socket");
    return fd;
  }
  bool Listening(int fd) const override {
    absl::MutexLock lock(&mu_);
    return not_listening_.count(fd) == 0;
  }
  void StopListening(int fd) const override {
    absl::MutexLock lock(&mu_);
    stopped_.push_back(fd);
    not_listening_.insert(fd);
  }

  // A listener that failed on its own (not through StopListening).
  void SetListening(int fd, bool listening) {
    absl::MutexLock lock(&mu_);
    if (listening) {
      not_listening_.erase(fd);
    } else {
      not_listening_.insert(fd);
    }
  }
  void set_socket_error(absl::Status status) {
    absl::MutexLock lock(&mu_);
    socket_error_ = std::move(status);
  }
  // Every fd StopListening was called with, in order.
  std::vector<int> stopped() const {
    absl::MutexLock lock(&mu_);
    return stopped_;
  }
  // The netns of every SocketInNetns call, in order.
  std::vector<int> created_in() const {
    absl::MutexLock lock(&mu_);
    return created_in_;
  }

 private:
  mutable absl::Mutex mu_;
  mutable std::set<int> not_listening_ ABSL_GUARDED_BY(mu_);
  mutable std::vector<int> stopped_ ABSL_GUARDED_BY(mu_);
  mutable std::vector<int> created_in_ ABSL_GUARDED_BY(mu_);
  absl::Status socket_error_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ambit::tunnel::testing
