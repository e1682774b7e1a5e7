#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "ambit/admin/v1/admin.grpc.pb.h"

namespace ambit::cli {

// A stub for ambitd's admin API on its unix socket. Connects once first, so that it fails with a
// message naming the socket and the cause rather than a bare gRPC error: Unavailable when no
// agent listens there (no socket, or a stale one), PermissionDenied when the socket or a
// directory above it is closed to this user.
absl::StatusOr<std::unique_ptr<ambit::admin::v1::Admin::Stub>> ConnectAdmin(
    const std::string& socket_path);

// Turns a failed call into a message an operator can act on.
absl::Status AdminCallError(const std::string& socket_path, const grpc::Status& status);

}  // namespace ambit::cli
