#pragma once

// The real PodHandOff: CNI_NETNS through open(2) and NS_GET_NSTYPE, ambitd through its ZDS
// socket (SOCK_SEQPACKET, Istio's istio.workload.zds messages, one per packet; ambitd speaks
// first with ZdsHello{V1}, then answers each WorkloadRequest with one WorkloadResponse{ack}).
// Every wait is bounded by the call's deadline. Thread-compatible.

#include "agent/cni/plugin.h"

namespace ambit::cni {

class ZdsHandOff : public PodHandOff {
 public:
  absl::StatusOr<UniqueFd> OpenNetns(const std::string& path) override;
  absl::Status Add(const std::string& socket, const PodRef& pod, int netns_fd,
                   absl::Time deadline) override;
  absl::Status Del(const std::string& socket, const std::string& uid, absl::Time deadline) override;
  absl::Status Probe(const std::string& socket, absl::Time deadline) override;
};

}  // namespace ambit::cni
