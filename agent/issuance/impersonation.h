#pragma once

// A node agent asking the CA for a pod's certificate on the pod's behalf, as ztunnel asks istiod
// (docs/ARCHITECTURE.md#ca-api): the request's metadata names the pod's identity
// (ImpersonatedIdentity), the caller's own token says which node it speaks for, and the CA
// signs only identities of pods scheduled on that node. Pure functions: thread-safe.

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace google::protobuf {
class Struct;
}

namespace ambit::issuance {

// The key in IstioCertificateRequest.metadata (a google.protobuf.Struct) whose string value is
// the identity asked for (istio pkg/security ImpersonatedIdentity; ztunnel sends it always).
inline constexpr char kImpersonatedIdentityKey[] = "ImpersonatedIdentity";
// The gRPC metadata key naming the caller's cluster (istiod's kubeauth "clusterid"; ztunnel sends
// its CLUSTER_ID with every call). gRPC keys are lower case on the wire.
inline constexpr char kClusterIdHeader[] = "clusterid";
// Istio's cluster name when none is configured (CLUSTER_ID).
inline constexpr char kDefaultClusterId[] = "Kubernetes";

// The identity a request's metadata impersonates: nullopt when the key is absent or its value is
// the empty string (istiod reads both as "no impersonation"), INVALID_ARGUMENT when the value is
// not a string.
absl::StatusOr<std::optional<std::string>> ImpersonatedIdentity(
    const google::protobuf::Struct& metadata);

// The identity a CreateCertificate asks for, before entitlements are checked: the CSR's one URI
// SAN (INVALID_ARGUMENT when it has none or several). With an impersonated identity, that
// identity must be an Istio workload identity, spiffe://<trust domain>/ns/<namespace>/sa/<service
// account>, as istiod requires (INVALID_ARGUMENT naming it and the problem), and the CSR must ask
// for exactly it (INVALID_ARGUMENT naming both): istiod would certify the impersonated identity
// whatever the CSR says, ambit's CA signs what the CSR asks for, so the two must agree.
absl::StatusOr<std::string> RequestedIdentity(const std::optional<std::string>& impersonated,
                                              const std::vector<std::string>& csr_uris);

// The caller's cluster as its "clusterid" metadata names it (empty: not sent, or sent more than
// once, as istiod reads it) checked against the cluster this CA serves: OK when they match or none
// was sent; UNAUTHENTICATED naming both otherwise (istiod: "client claims to be in cluster ...").
absl::Status CheckClusterId(const std::string& claimed, const std::string& served);

}  // namespace ambit::issuance
