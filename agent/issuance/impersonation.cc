#include "agent/issuance/impersonation.h"

#include <google/protobuf/struct.pb.h>

#include "absl/strings/str_cat.h"
#include "agent/identity/spiffe_id.h"

namespace ambit::issuance {

absl::StatusOr<std::optional<std::string>> ImpersonatedIdentity(
    const google::protobuf::Struct& metadata) {
  auto it = metadata.fields().find(std::string(kImpersonatedIdentityKey));
  if (it == metadata.fields().end()) return std::nullopt;
  if (it->second.kind_case() != google::protobuf::Value::kStringValue) {
    return absl::InvalidArgumentError(
        absl::StrCat("request metadata ", kImpersonatedIdentityKey,
                     " must be a string (a SPIFFE ID); it is of another kind"));
  }
  if (it->second.string_value().empty()) return std::nullopt;
  return it->second.string_value();
}

absl::StatusOr<std::string> RequestedIdentity(const std::optional<std::string>& impersonated,
                                              const std::vector<std::string>& csr_uris) {
  if (csr_uris.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "csr must ask for exactly one URI (a SPIFFE ID); it asks for ", csr_uris.size()));
  }
  if (!impersonated.has_value()) return csr_uris[0];
  auto id = identity::ParseSpiffeId(*impersonated);
  if (!id.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kImpersonatedIdentityKey, " '", *impersonated,
                     "' is not a SPIFFE ID: ", id.status().message()));
  }
  if (!identity::AsIstioIdentity(*id).has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        kImpersonatedIdentityKey, " '", *impersonated,
        "' is not an Istio workload identity (spiffe://<trust domain>/ns/<namespace>/sa/<service "
        "account>)"));
  }
  if (csr_uris[0] != *impersonated) {
    return absl::InvalidArgumentError(absl::StrCat("csr asks for ", csr_uris[0], " but ",
                                                   kImpersonatedIdentityKey, " is ", *impersonated,
                                                   "; they must be the same"));
  }
  return *impersonated;
}

absl::Status CheckClusterId(const std::string& claimed, const std::string& served) {
  if (claimed.empty() || claimed == served) return absl::OkStatus();
  return absl::UnauthenticatedError(absl::StrCat("client claims to be in cluster '", claimed,
                                                 "', but this CA serves cluster '", served, "'"));
}

}  // namespace ambit::issuance
