#pragma once

// --kubelet-probe-source, shared by ambitd (which checks it and passes it on) and the data plane
// (which uses it): the addresses istio-cni's host rules SNAT kubelet probes to.

#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "agent/common/ip_address.h"

namespace ambit {

// "169.254.7.127", "169.254.7.127,fd16:9254:7127:1337:ffff:ffff:ffff:ffff" or "" (none). At most
// one address per family; never loopback or unspecified (an address every pod holds, or none).
inline absl::StatusOr<std::vector<IpAddress>> ParseKubeletProbeSources(absl::string_view text) {
  std::vector<IpAddress> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    auto ip = IpAddress::Parse(part);
    if (!ip.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("'", part, "' is not an IP address"));
    }
    if (ip->is_loopback() || *ip == IpAddress() || (ip->is_v4() && ip->v4().s_addr == 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat(part, " cannot be a probe source (loopback or unspecified)"));
    }
    for (const IpAddress& seen : out) {
      if (seen.is_v4() == ip->is_v4()) {
        return absl::InvalidArgumentError(
            absl::StrCat("more than one ", ip->is_v4() ? "IPv4" : "IPv6", " address"));
      }
    }
    out.push_back(*ip);
  }
  return out;
}

}  // namespace ambit
