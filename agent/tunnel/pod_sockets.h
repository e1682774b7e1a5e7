#pragma once

// The kernel side of a pod's sockets, behind one small interface so that the control logic above
// it (reconciler.h) and the connection code can be tested without root or network namespaces:
// creating a socket inside a pod's network namespace, asking whether a listener still accepts,
// and taking a listener out of the listening state.
//
// Thread-safety: implementations are thread-safe (workers create sockets, the control thread
// probes and shuts listeners down).

#include "absl/status/statusor.h"
#include "agent/common/unique_fd.h"

namespace ambit::tunnel {

class PodSockets {
 public:
  virtual ~PodSockets() = default;
  // A socket of `domain` and `type` created inside the network namespace `netns_fd`; the calling
  // thread returns to `host_netns_fd` before this returns.
  virtual absl::StatusOr<UniqueFd> SocketInNetns(int netns_fd, int host_netns_fd, int domain,
                                                 int type) const = 0;
  // Whether the listener `fd` is still in the listening state (one shut down, or that failed,
  // holds a descriptor but takes no connections).
  virtual bool Listening(int fd) const = 0;
  // Takes the listener out of the listening hash at once, whoever else holds a descriptor of it,
  // so the agent can bind the same port again; connections queued in its backlog are reset.
  virtual void StopListening(int fd) const = 0;
};

// The real thing: setns(2), getsockopt(SO_ACCEPTCONN), shutdown(2).
class KernelPodSockets final : public PodSockets {
 public:
  static const KernelPodSockets& Get();
  absl::StatusOr<UniqueFd> SocketInNetns(int netns_fd, int host_netns_fd, int domain,
                                         int type) const override;
  bool Listening(int fd) const override;
  void StopListening(int fd) const override;
};

}  // namespace ambit::tunnel
