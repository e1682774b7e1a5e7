#include "agent/node/dataplane_state.h"

#include <algorithm>

namespace ambit::node {

uint64_t GenerationTracker::Next(uint64_t acked, absl::Time now) {
  if (version_ == acked || pending_since_ == absl::InfiniteFuture()) pending_since_ = now;
  return ++version_;
}

absl::Duration RestartBackoff::OnExit(absl::Time now) {
  if (now - started_ > options_.healthy_run) next_ = options_.initial;
  ++restarts_;
  return Take();
}

absl::Duration RestartBackoff::Take() {
  const absl::Duration delay = next_;
  next_ = std::min(next_ * 2, options_.max);
  return delay;
}

absl::Status DecideCsr(const std::string& identity,
                       const std::set<std::string>& enrolled_identities) {
  if (enrolled_identities.contains(identity)) return absl::OkStatus();
  return absl::PermissionDeniedError("no enrolled pod on this node has identity " + identity);
}

std::vector<supervisor::CertificateState> ChangedCertificates(
    const std::vector<supervisor::CertificateState>& before,
    const std::vector<supervisor::CertificateState>& now) {
  std::vector<supervisor::CertificateState> out;
  for (const auto& c : now) {
    const bool same = std::any_of(before.begin(), before.end(), [&c](const auto& old) {
      return old.identity == c.identity && old.state == c.state && old.serial_hex == c.serial_hex;
    });
    if (!same) out.push_back(c);
  }
  return out;
}

}  // namespace ambit::node
