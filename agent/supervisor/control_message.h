#pragma once

// Decoding of the control packets the data plane sends ambitd: the only parsing of control-channel
// bytes on the agent's side, kept apart from DataPlane (dataplane.cc), which acts on what it
// returns, so the checks can be exercised on their own (tests/fuzz/control_agent). Pure;
// thread-safe.

#include <cstddef>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::supervisor {

// Parses one packet from the data plane that came with `fd_count` descriptors. Errors: DataLoss
// for bytes that are not an Envelope, FailedPrecondition for another protocol version,
// InvalidArgument for a body the data plane never sends or descriptors that do not match it.
absl::StatusOr<ambit::dataplane::v1::Envelope> DecodeDataPlaneMessage(absl::string_view bytes,
                                                                      size_t fd_count);

}  // namespace ambit::supervisor
