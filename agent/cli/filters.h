#pragma once

// The selection flags of ambitctl's list commands, spelled as kubectl and istioctl spell them:
// -n/--namespace NS (only that namespace), -A/--all-namespaces (every namespace: the default, as
// an agent serves a node, not a namespace; accepted so kubectl habits work), and --address IP (only
// rows with that address, in any spelling: 2001:2::7 matches 2001:0002::0007). Filtering happens
// in ambitctl on what the agent returned. Which agent is asked is --instance / --admin-socket:
// one agent per node (or per instance on a node), so selecting an agent is selecting a node.

#include <google/protobuf/repeated_field.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/cli/command.h"
#include "agent/common/ip_address.h"

namespace ambit::cli {

// -n/--namespace and -A/--all-namespaces.
std::vector<FlagSpec> NamespaceFlags();
// The two above and --address.
std::vector<FlagSpec> NamespaceAndAddressFlags();

class RowFilter {
 public:
  // InvalidArgument for -n with -A, an empty namespace or an --address that is no IP address.
  static absl::StatusOr<RowFilter> FromFlags(const Context& ctx);

  // True when no --namespace was given or `ns` is it.
  bool Namespace(absl::string_view ns) const;
  // For "namespace/name" keys (a pod, a connection's local pod).
  bool QualifiedName(absl::string_view ns_slash_name) const;
  // True when no --address was given or one of `addresses` (IPs, or ip:port / [ip]:port) is it.
  bool Address(const std::vector<std::string>& addresses) const;
  bool active() const { return ns_.has_value() || address_.has_value(); }
  // "in namespace x", "with address y": for "nothing matched" lines; "" when inactive.
  std::string Describe() const;

 private:
  std::optional<std::string> ns_;
  std::optional<IpAddress> address_;
};

// Keeps the items of a response the predicate accepts, in order.
template <typename T, typename Keep>
void KeepIf(google::protobuf::RepeatedPtrField<T>* items, Keep keep) {
  google::protobuf::RepeatedPtrField<T> kept;
  for (T& item : *items) {
    if (keep(item)) *kept.Add() = std::move(item);
  }
  items->Swap(&kept);
}

template <typename Container>
std::vector<std::string> StringList(const Container& items) {
  return std::vector<std::string>(items.begin(), items.end());
}

}  // namespace ambit::cli
