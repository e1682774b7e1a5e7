#pragma once

// The mesh model (model.h) on the agent/data-plane channel: the one mapping between it and
// ambit.dataplane.v1's Workload, Service and Snapshot messages. Both directions check what they
// map, and a value one side does not know is an error, never a default: an mTLS mode, protocol or
// policy action that is UNSPECIFIED or unknown, an address that does not parse, a workload
// without a SPIFFE identity, an enrolled workload without its PeerAuthentication, a
// RequestAuthentication the agent could not have loaded. The data plane refuses a snapshot with
// any such error (nack) and fails closed. Errors name the workload, service or policy and the
// field. Pure functions: thread-safe.

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/authz/ext_authz.h"
#include "agent/mesh/model.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::mesh {

absl::Status ToProto(const Workload& workload, ambit::dataplane::v1::Workload* out);
absl::StatusOr<Workload> FromProto(const ambit::dataplane::v1::Workload& in);

// An enrolled pod in add_pod (ambit.dataplane.v1.Pod), its own part: uid (the workload key),
// names, service account, identity and addresses; the netns cookie and descriptors are the
// caller's. The SPIFFE ID may be empty (a pod served without an identity); a non-empty one must
// parse, and so must every address. A mapped workload has enrolled_here set.
absl::Status PodToProto(const Workload& workload, ambit::dataplane::v1::Pod* out);
absl::StatusOr<Workload> PodFromProto(const ambit::dataplane::v1::Pod& in);

absl::Status ToProto(const Service& service, ambit::dataplane::v1::Service* out);
absl::StatusOr<Service> FromProto(const ambit::dataplane::v1::Service& in);

// A RequestAuthentication as the agent's config layer accepts it (agent/config/kube_yaml.cc),
// checked the same way in both directions: name and namespace, a selector or target references
// (istiod's targets: authn::TargetRefProblems), per JWT rule an issuer, not both jwks and
// jwks_uri, named headers, and a timeout longer than 0 and shorter than
// authn::kJwksFetchTimeoutLimit in whole nanoseconds (on the wire: set, not negative).
// Errors read "RequestAuthentication <namespace/name>: <field>: <what>".
absl::Status ToProto(const authn::RequestAuthentication& policy,
                     ambit::dataplane::v1::RequestAuthentication* out);
absl::StatusOr<authn::RequestAuthentication> FromProto(
    const ambit::dataplane::v1::RequestAuthentication& in);

// The most trustDomainAliases a snapshot carries (the agent's parser has the same bound): every
// policy principal is matched once per trust domain.
inline constexpr int kMaxTrustDomainAliases = 32;
// The most body bytes a provider may send with a check (includeRequestBodyInCheck
// maxRequestBytes). Envoy has no bound; the waypoint buffers that much per request while it
// waits for the authorizer, so the agent marks a provider asking for more unresolved.
inline constexpr uint32_t kMaxExtAuthzRequestBytes = 8u << 20;  // 8 MiB
// A provider's timeout is longer than 0 and shorter than this (Envoy's Duration limit for
// timers, as for JWT fetches).
inline constexpr absl::Duration kExtAuthzTimeoutLimit = absl::Seconds(int64_t{1} << 32);

// An ext_authz provider, checked the same way in both directions: a name, a known kind, a port,
// status_on_error in 100..599, exactly one of service_key and unresolved, the timeout (above),
// max_request_bytes at most kMaxExtAuthzRequestBytes, header names that are lower-case RFC 7230
// tokens and values without CR, LF or NUL, a path prefix without them. Whether service_key names
// a Service is the snapshot's check. Errors read "ext_authz provider <name>: <field>: <what>".
absl::Status CheckExtAuthzProvider(const authz::ExtAuthzProvider& provider);
absl::Status ToProto(const authz::ExtAuthzProvider& provider,
                     ambit::dataplane::v1::ExtAuthzProvider* out);
absl::StatusOr<authz::ExtAuthzProvider> FromProto(const ambit::dataplane::v1::ExtAuthzProvider& in);

// Each part as above; also: workload keys and addresses are unique across the snapshot (an
// address owned twice would make the expected identity ambiguous), every service endpoint
// names a workload of the snapshot, each RequestAuthentication is there once, and each ext_authz
// provider is there once by name, its service_key naming a Service of the snapshot.
absl::Status ToProto(const Snapshot& snapshot, ambit::dataplane::v1::Snapshot* out);
absl::StatusOr<Snapshot> FromProto(const ambit::dataplane::v1::Snapshot& in);

// The same mapping straight to and from the serialized Snapshot message that travels in the
// sealed file, one workload at a time through one reused message: neither side ever holds a
// whole Snapshot message next to the model. At 100 000 workloads that copy was as large as the
// model, and its small allocations, freed among the ones the model keeps, left holes the
// allocator could not give back. The bytes are an ordinary Snapshot message; DecodeSnapshot
// accepts what parsing it and FromProto accept (DataLoss when the bytes are no Snapshot).
absl::Status EncodeSnapshot(const Snapshot& snapshot, std::string* out);
absl::StatusOr<Snapshot> DecodeSnapshot(absl::string_view bytes);

// One control-channel packet: DataLoss if it is no Envelope, FailedPrecondition if it speaks
// another protocol version, worded as "<peer> speaks control protocol N, this <self> M; <advice>".
// Each side's decoder then checks which bodies it accepts from the other.
absl::StatusOr<ambit::dataplane::v1::Envelope> ParseEnvelope(absl::string_view bytes,
                                                             absl::string_view peer,
                                                             absl::string_view self,
                                                             absl::string_view advice);

}  // namespace ambit::mesh
