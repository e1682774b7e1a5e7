#pragma once

// ZDS (istio.workload.zds, proto/istio/zds/zds.proto) as ambitd reads and writes it in
// ztunnel's role: one received packet (bytes, the descriptors that rode with it, recvmsg's flags)
// into a typed request, and the two messages ambitd sends (ZdsHello, WorkloadResponse). The
// decoder reads no socket and keeps no state; its one kernel look-up, whether a descriptor is a
// network namespace, is injected.
//
// Thread-safety: pure functions.

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/common/unique_fd.h"

namespace ambit::zds {

// The largest request ambitd reads. ztunnel reads 1024 bytes and istio-cni reads its answers
// into 1024, so both sides of the protocol already live within it; the largest valid add (a
// 128-byte uid, a 253-byte name and service account, a 63-byte namespace and the framing) is
// about 720 bytes. A longer packet arrives truncated (MSG_TRUNC) and is refused.
inline constexpr size_t kMaxRequestBytes = 1024;
// Descriptors one recvmsg makes room for: one is valid, two or three are named as too many, more
// are truncated by the kernel (MSG_CTRUNC, which closes those it could not place).
inline constexpr size_t kMaxRequestFds = 3;
// Limits of the strings of a request (Kubernetes': a uid is 36 characters, a name and a service
// account are DNS subdomains of at most 253, a namespace a DNS label of at most 63).
inline constexpr size_t kMaxUidBytes = 128;
inline constexpr size_t kMaxNameBytes = 253;
inline constexpr size_t kMaxNamespaceBytes = 63;
inline constexpr size_t kMaxServiceAccountBytes = 253;
// An ack's error text is cut to this, so a WorkloadResponse fits the 1024 bytes istio-cni reads.
inline constexpr size_t kMaxAckErrorBytes = 900;

struct WorkloadInfo {
  std::string name;
  std::string namespace_name;
  std::string service_account;  // may be empty (ambit-cni sends none)
};

struct Request {
  enum class Type { kAdd, kKeep, kDel, kSnapshotSent };
  Type type = Type::kSnapshotSent;
  std::string uid;    // kAdd, kKeep, kDel
  WorkloadInfo info;  // kAdd
  UniqueFd netns;     // kAdd: the pod's network namespace
};

// "add", "keep", "del", "snapshot_sent": the `type` label of ambit_zds_requests_total.
const char* TypeName(Request::Type type);

// Whether a descriptor is a network namespace (nsfs, CLONE_NEWNET). OK or the reason it is not.
using NetnsCheck = std::function<absl::Status(int fd)>;
// ioctl(NS_GET_NSTYPE) on the descriptor.
absl::Status KernelNetnsCheck(int fd);

// One received packet. Every error names what was wrong; the descriptors are closed on any error
// (they are owned by the call). `msg_flags` is recvmsg's msg_flags (MSG_TRUNC, MSG_CTRUNC).
absl::StatusOr<Request> DecodeRequest(std::string_view bytes, std::vector<UniqueFd> fds,
                                      int msg_flags, const NetnsCheck& is_netns);

// ZdsHello{version: V1}: the first packet ambitd sends on every session.
std::string EncodeHello();
// WorkloadResponse{ack{error}}; an empty error means done. Errors are cut to kMaxAckErrorBytes.
std::string EncodeAck(std::string_view error);

}  // namespace ambit::zds
