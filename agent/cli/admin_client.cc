#include "agent/cli/admin_client.h"

#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"

namespace ambit::cli {

absl::StatusOr<std::unique_ptr<ambit::admin::v1::Admin::Stub>> ConnectAdmin(
    const std::string& socket_path) {
  struct stat st;
  if (stat(socket_path.c_str(), &st) != 0) {
    return absl::UnavailableError(absl::StrCat(
        "ambitd is not running here (no admin socket at ", socket_path,
        "); start it, or point --admin-socket at the socket of the instance you want"));
  }
  if (access(socket_path.c_str(), R_OK | W_OK) != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot open ", socket_path, ": the admin API is root-only"));
  }
  // A node with tens of thousands of live connections answers `connections` with more than
  // gRPC's default 4 MiB.
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  auto channel = grpc::CreateCustomChannel("unix:" + socket_path,
                                           grpc::InsecureChannelCredentials(), args);
  return ambit::admin::v1::Admin::NewStub(channel);
}

absl::Status AdminCallError(const std::string& socket_path, const grpc::Status& status) {
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
      status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return absl::UnavailableError(absl::StrCat("ambitd is not answering on ", socket_path,
                                               " (is it running?): ", status.error_message()));
  }
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat("ambitd: ", status.error_message()));
}

}  // namespace ambit::cli
