#include "agent/bpf/drops.h"

#include <errno.h>

#include <iterator>

#include "abi/redirect.h"
#include "absl/strings/str_cat.h"
#include "bpf/bpf.h"
#include "bpf/libbpf.h"

namespace ambit::bpf {

namespace {

// In the order of enum ambit_drop_reason.
constexpr DropReason kReasons[] = {
    {"connect_no_storage", "connect4/6",
     "connect() from an enrolled pod refused: no socket storage for its original destination"},
    {"orig_dst_update_failed", "sockops",
     "original destination not published in ambit_orig_dst; the tunnel resets the connection"},
    {"no_listener", "sk_lookup",
     "inbound SYN dropped: the pod has no ambit listener of its family and kind"},
    {"sk_assign_failed", "sk_lookup",
     "inbound SYN dropped: the kernel refused to hand it to the pod's ambit listener"},
    {"probe_update_failed", "sockops",
     "node connection to a pod not recorded in ambit_probes; the tunnel treats it as any "
     "plaintext"},
};
static_assert(std::size(kReasons) == AMBIT_DROP_REASONS,
              "one entry per enum ambit_drop_reason in bpf/abi/redirect.h");
static_assert(AMBIT_DROP_CONNECT_NO_STORAGE == 0 && AMBIT_DROP_ORIG_DST_UPDATE == 1 &&
                  AMBIT_DROP_NO_LISTENER == 2 && AMBIT_DROP_SK_ASSIGN == 3 &&
                  AMBIT_DROP_PROBE_UPDATE == 4,
              "kReasons follows the enum's order");

}  // namespace

const std::vector<DropReason>& DropReasons() {
  static const auto* kTable = new std::vector<DropReason>(std::begin(kReasons), std::end(kReasons));
  return *kTable;
}

absl::StatusOr<std::vector<uint64_t>> ReadDropCounters(int map_fd) {
  int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return absl::ErrnoToStatus(-cpus, "count possible CPUs");
  std::vector<uint64_t> totals(AMBIT_DROP_REASONS, 0);
  std::vector<uint64_t> per_cpu(static_cast<size_t>(cpus));
  for (uint32_t reason = 0; reason < AMBIT_DROP_REASONS; ++reason) {
    if (bpf_map_lookup_elem(map_fd, &reason, per_cpu.data()) != 0) {
      if (errno == ENOENT) continue;  // a map with fewer slots
      return absl::ErrnoToStatus(errno, absl::StrCat("read ambit_drops[", reason, "]"));
    }
    for (uint64_t n : per_cpu) totals[reason] += n;
  }
  return totals;
}

}  // namespace ambit::bpf
