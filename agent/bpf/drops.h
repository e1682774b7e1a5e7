#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ambit::bpf {

// One slot of ambit_drops (enum ambit_drop_reason in bpf/abi/redirect.h): a path on which a BPF
// program fails closed.
struct DropReason {
  const char* name;     // the `reason` label of ambit_bpf_drops_total; stable
  const char* program;  // which program counts it
  const char* meaning;  // one line for an operator
};

// Every reason, indexed by enum ambit_drop_reason.
const std::vector<DropReason>& DropReasons();

// Sums the per-CPU counters of an ambit_drops map; one total per reason, in enum order. A map
// with fewer slots (an older ABI's) gives zeros for the reasons it lacks.
absl::StatusOr<std::vector<uint64_t>> ReadDropCounters(int map_fd);

}  // namespace ambit::bpf
