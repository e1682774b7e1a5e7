#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "agent/common/ip_address.h"
#include "agent/common/unique_fd.h"
#include "agent/tunnel/mesh_snapshot.h"
#include "agent/tunnel/pod_table.h"
#include "agent/tunnel/worker.h"

namespace ambit::tunnel {

// A socket opened from inside a pod's network namespace, connecting (non-blocking) to `dst`.
struct Upstream {
  UniqueFd fd;
  bool in_progress = false;
  std::optional<SocketAddress> delivery_source;  // listed in ambit_deliver until connected
};

// Where inbound traffic may be delivered inside `pod`: one of the pod's own addresses, on a port
// that is none of ambit's own listeners. OK, or FailedPrecondition with the reason. Anything else
// would come back into the data plane (a delivery to <pod ip>:15006 is accepted again, and again).
absl::Status CheckDeliveryTarget(const MeshSnapshot& snapshot, const Pod& pod,
                                 const SocketAddress& dst);

// Opens a non-blocking socket in the pod's netns, marked so the redirect programs skip it, and
// starts connecting to dst. With source set, binds to it transparently (inbound delivery with
// the client's own address) and lists the connection in ambit_deliver for the pod's sk_lookup;
// such a delivery is refused, before any socket exists, unless CheckDeliveryTarget allows it.
absl::StatusOr<Upstream> ConnectFromPod(const Worker& worker, const Pod& pod,
                                        const SocketAddress& dst, const SocketAddress* source);

// A local pod as one end of a flow.
FlowPeer PeerOf(const Pod& pod, const SocketAddress& address);
// A workload of the snapshot at `address`, with its identity.
FlowPeer PeerOf(const mesh::Workload& workload, const SocketAddress& address);
// The workload at `address` as the snapshot knows it (only the address when it is unknown).
FlowPeer PeerOf(const MeshSnapshot& snapshot, const SocketAddress& address, std::string principal);

// Handles a freshly accepted connection on one of a pod's listeners. Worker-thread only.
void HandleAccepted(Worker& worker, std::shared_ptr<const Pod> pod, ListenerKind kind,
                    UniqueFd client);

// A TCP byte relay between two sockets: full duplex, half-close forwarded as FIN, a reset on one
// side forwarded as a reset, bounded buffers (a full buffer stops reading: back-pressure).
// Lives on one worker; deleted through Worker::Retire.
class Connection final : public Flow {
 public:
  Connection(Worker& worker, std::string description, UniqueFd downstream);
  ~Connection() override;

  // Connects upstream (non-blocking, already issued) and relays once it completes.
  void StartRelay(UniqueFd upstream, bool connect_in_progress);
  // The delivery entry (bpf::AllowDelivery) to remove once the upstream connect completes.
  void SetDeliveryEntry(const SocketAddress& src, const SocketAddress& dst);
  void Reset(const std::string& reason) override { ResetBoth(reason); }
  void Bytes(uint64_t* from_client, uint64_t* to_client) const override {
    *from_client = bytes_[0];
    *to_client = bytes_[1];
  }
  // Closes the downstream with a reset and retires.
  void Abort(const std::string& reason);

 private:
  struct Side : EventHandler {
    Connection* conn;
    int index;
    void OnEvents(uint32_t events) override;
  };
  struct Direction {
    std::unique_ptr<char[]> buf;
    size_t head = 0, tail = 0;
    bool eof = false;   // source sent FIN
    bool shut = false;  // FIN forwarded to sink
  };

  void OnEvents(int side, uint32_t events);
  void ForgetDelivery();
  void Pump();
  // Moves bytes from fds_[from] to fds_[1 - from]; false on a fatal error.
  bool Flow(int from, bool* progressed);
  void ResetBoth(const std::string& reason);
  void Finish();

  Worker& worker_;
  UniqueFd fds_[2];  // 0: downstream (accepted), 1: upstream
  Side sides_[2];
  Direction dirs_[2];  // dirs_[i]: bytes read from fds_[i]
  bool connecting_ = false;
  bool done_ = false;
  uint64_t bytes_[2] = {0, 0};
  std::optional<std::pair<SocketAddress, SocketAddress>> delivery_;
};

}  // namespace ambit::tunnel
