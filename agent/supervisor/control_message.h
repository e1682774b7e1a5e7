#pragma once

// Decoding of the control packets the data plane sends ambitd, and the mapping of the pod records
// both ways: the only parsing of control-channel bytes on the agent's side, kept apart from
// DataPlane (dataplane.cc), which acts on what it returns, so the checks can be exercised on their
// own (tests/fuzz/control_agent). Pure; thread-safe.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/common/unique_fd.h"
#include "agent/supervisor/dataplane.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::supervisor {

// Parses one packet from the data plane that came with `fd_count` descriptors. Errors: DataLoss
// for bytes that are not an Envelope, FailedPrecondition for another protocol version,
// InvalidArgument for a body the data plane never sends or descriptors that do not match it.
absl::StatusOr<ambit::dataplane::v1::Envelope> DecodeDataPlaneMessage(absl::string_view bytes,
                                                                      size_t fd_count);

// Largest certificate report the agent reads from a certificate_report_ref's file.
inline constexpr uint64_t kMaxCertificateReportBytes = 64 << 20;

// The CertificateReport in a certificate_report_ref's sealed file (announced `size` bytes).
// FailedPrecondition for a file that is not a sealed memfd, InvalidArgument for another size,
// ResourceExhausted above kMaxCertificateReportBytes, DataLoss for bytes that do not parse.
absl::StatusOr<ambit::dataplane::v1::CertificateReport> ReadCertificateReportFile(int fd,
                                                                                  uint64_t size);

// Largest heartbeat answer the agent reads from a pong_ref's file.
inline constexpr uint64_t kMaxPongBytes = 16 << 20;

// The Pong in a pong_ref's sealed file (announced `size` bytes); errors as
// ReadCertificateReportFile's, ResourceExhausted above kMaxPongBytes.
absl::StatusOr<ambit::dataplane::v1::Pong> ReadPongFile(int fd, uint64_t size);

// add_pod for `pod`: its workload through mesh::PodToProto, the netns cookie, and the role of
// each descriptor it sends, appended to `fds` in the same order. InvalidArgument naming the
// workload and the field when the workload does not map; `out` and `fds` are then not to be sent.
absl::Status EncodeAddPod(const PodDescriptor& pod, ambit::dataplane::v1::Pod* out,
                          std::vector<int>* fds);

// A pod the data plane handed back (an add_pod it sent, as DecodeDataPlaneMessage accepted it)
// with the descriptors that came with it, in the order its roles list them. The workload through
// mesh::PodFromProto: InvalidArgument naming the pod and the field when it does not map, so the
// agent never adopts a pod it would describe differently than the data plane serves it. A
// descriptor of a role the agent does not know is closed.
absl::StatusOr<HandedBackPod> DecodeHandedBackPod(const ambit::dataplane::v1::Pod& in,
                                                  std::vector<UniqueFd> fds);

}  // namespace ambit::supervisor
