#pragma once

// A PodHost without a kernel: network namespaces are paths with made-up cookies, set-up and the
// data plane succeed unless a test says otherwise, and every effect is recorded.

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "agent/node/enrollment_pass.h"

namespace ambit::node {

class FakePodHost final : public PodHost {
 public:
  struct SetUpCall {
    std::string uid;
    EnrollmentReconciler::Decision::Kind kind;
    uint32_t slot;
    bool send;
  };

  // Knobs.
  bool connected = true;
  std::map<std::string, uint64_t> cookies;            // netns path -> cookie; else made up
  std::map<std::string, absl::Status> open_errors;    // netns path -> error, until erased
  std::map<std::string, absl::Status> set_up_errors;  // uid -> error, until erased
  std::map<std::string, absl::Status> resend_errors;  // uid -> error, until erased

  // Record.
  std::vector<std::string> opened;
  std::vector<SetUpCall> set_up;
  std::vector<std::string> resent, removed, released;
  std::vector<std::pair<uint64_t, uint32_t>> stale;
  std::set<std::string> serving;  // uids the fake data plane was told about and not told to drop
  int dropped_handed_back = 0;

  absl::StatusOr<uint64_t> OpenNetns(const state::Pod& pod) override;
  absl::StatusOr<std::string> SetUp(const state::Pod& pod,
                                    const EnrollmentReconciler::Decision& decision,
                                    bool send) override;
  absl::StatusOr<std::string> Resend(const std::string& uid) override;
  bool Remove(const std::string& uid) override;
  void RemoveStale(uint64_t netns_cookie, uint32_t slot) override;
  void ReleaseHandedBack(const std::string& uid) override;
  void DropHandedBack() override { ++dropped_handed_back; }
  bool DataPlaneConnected() const override { return connected; }

  // The identity SetUp and Resend report as sent.
  std::string identity = "spiffe://cluster.local/ns/default/sa/default";

 private:
  uint64_t next_cookie_ = 1000;
};

}  // namespace ambit::node
