#pragma once

// Validation and preparation of one AuthorizationPolicy, the way istiod validates it: CIDRs,
// ports, path templates, condition keys and values, empty fields and values, CUSTOM providers,
// selector/targetRefs exclusivity. A rejected policy yields InvalidArgument with a message that
// starts with the field path, e.g.
//   rules[0].from[1].source.ipBlocks[2]: '1.2.3.4/33' is not a valid CIDR
// The config layer prefixes file and resource. Thread-compatible; a CompiledPolicy is immutable and
// cheap to copy (shared).

#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "agent/authz/model.h"

namespace ambit::authz {

namespace internal {
struct CompiledPolicyData;
}  // namespace internal

class CompiledPolicy {
 public:
  const Policy& policy() const;
  // "namespace/name".
  std::string Key() const { return policy().Key(); }

  // For the engine: the parsed rules.
  const internal::CompiledPolicyData& data() const { return *data_; }

 private:
  friend absl::StatusOr<CompiledPolicy> Compile(const Policy& policy);
  explicit CompiledPolicy(std::shared_ptr<const internal::CompiledPolicyData> data)
      : data_(std::move(data)) {}

  std::shared_ptr<const internal::CompiledPolicyData> data_;
};

absl::StatusOr<CompiledPolicy> Compile(const Policy& policy);

}  // namespace ambit::authz
