#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "ambit/admin/v1/admin.grpc.pb.h"

namespace ambit::cli {

// A stub for ambitd's admin API on its unix socket. Fails with a message that says the agent is
// not running (or the socket is not readable) rather than a bare gRPC error.
absl::StatusOr<std::unique_ptr<ambit::admin::v1::Admin::Stub>> ConnectAdmin(
    const std::string& socket_path);

// Turns a failed call into a message an operator can act on.
absl::Status AdminCallError(const std::string& socket_path, const grpc::Status& status);

}  // namespace ambit::cli
