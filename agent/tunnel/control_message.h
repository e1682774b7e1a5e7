#pragma once

// Decoding of the control packets ambitd sends the data plane: the only parsing of control-channel
// bytes on this side, kept apart from Tunnel (control.cc), which acts on what it returns, so the
// checks can be exercised on their own (tests/fuzz/control_tunnel). Pure; thread-safe.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/common/unique_fd.h"
#include "agent/mesh/model.h"
#include "agent/tunnel/l7_hook.h"
#include "agent/tunnel/pod_table.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::tunnel {

// The longest drain a data plane accepts: a day. Longer is a mistake (the process would outlive
// its certificates' renewal); the pod's terminationGracePeriodSeconds bounds it anyway.
inline constexpr uint32_t kMaxDrainGraceSeconds = 86400;

// Parses one packet from the agent that came with `fd_count` descriptors (SCM_RIGHTS). Errors:
// DataLoss for bytes that are not an Envelope, FailedPrecondition for another protocol version,
// InvalidArgument for a body the agent never sends or descriptors that do not match the body.
absl::StatusOr<ambit::dataplane::v1::Envelope> DecodeAgentMessage(absl::string_view bytes,
                                                                  size_t fd_count);

// Parses one request read from the stats socket. Errors: DataLoss for bytes that are not a
// StatsSocketRequest, Unimplemented for one that asks nothing (a request of a kind this build
// does not know reads so), InvalidArgument for a log-level change to an unknown level or an
// ext_authz probe ExtAuthzProbeFromProto refuses (the only errors the asker is answered, with a
// SetLogLevelResponse or an ExtAuthzProbeResponse).
absl::StatusOr<ambit::dataplane::v1::StatsSocketRequest> DecodeStatsSocketRequest(
    absl::string_view bytes);

// The most body bytes a probe may carry, and the most of a deny body its answer carries.
inline constexpr size_t kMaxProbeBody = 16 * 1024;
inline constexpr size_t kMaxProbeAnswerBody = 4 * 1024;

// The probe an ext_authz_probe asks for. InvalidArgument, naming the field, for: not exactly one of
// waypoint_pod and waypoint, a name that is not namespace/name, no provider, a method that is no
// HTTP token, a path not starting with '/', a header name that is not a lower-case token, CR, LF or
// NUL in any value, an address that does not parse, a body over kMaxProbeBody or without has_body.
absl::StatusOr<ExtAuthzProbe> ExtAuthzProbeFromProto(
    const ambit::dataplane::v1::ExtAuthzProbeRequest& request);
// The answer; a deny body beyond kMaxProbeAnswerBody is cut (deny_body_truncated).
ambit::dataplane::v1::ExtAuthzProbeResponse ExtAuthzProbeResultToProto(
    const ExtAuthzProbeResult& result);

// Largest trust bundle the data plane reads from a trust_bundle_ref's file.
inline constexpr uint64_t kMaxTrustBundleBytes = 64 << 20;

// The TrustBundle in a trust_bundle_ref's sealed file (announced `size` bytes): FailedPrecondition
// for a file that is not a sealed memfd, InvalidArgument for another size, ResourceExhausted above
// kMaxTrustBundleBytes, DataLoss for bytes that do not parse.
absl::StatusOr<ambit::dataplane::v1::TrustBundle> ReadTrustBundleFile(int fd, uint64_t size);

// The configuration a snapshot_ref names: its descriptors must be exactly one memfd sealed against
// writing and resizing, of the announced size and at most max_bytes, holding a Snapshot of the
// announced version, mapped to the mesh model (mesh::DecodeSnapshot, its checks included). Any
// error says what was wrong, for the nack.
absl::StatusOr<mesh::Snapshot> ReadSnapshotFile(const ambit::dataplane::v1::SnapshotRef& ref,
                                                const std::vector<UniqueFd>& fds,
                                                uint64_t max_bytes);

// The pod an add_pod names, holding the descriptors it carried (`fds`, in the order of
// `pod.fds`). Errors: InvalidArgument for a pod whose names, identity or addresses do not map
// (mesh::PodFromProto), for a descriptor count that does not match, and for a pod without its
// netns or its IPv4 outbound listener. Descriptors of roles this build does not know are closed.
absl::StatusOr<std::shared_ptr<Pod>> DecodePod(const ambit::dataplane::v1::Pod& pod,
                                               std::vector<UniqueFd> fds);

// The inverse, for handing a pod back to a new agent: fills `out` and appends the descriptors
// (borrowed from `pod`) in the order `out->fds` lists them.
absl::Status EncodePod(const Pod& pod, ambit::dataplane::v1::Pod* out, std::vector<int>* fds);

}  // namespace ambit::tunnel
