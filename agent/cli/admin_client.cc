#include "agent/cli/admin_client.h"

#include <errno.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "agent/common/unique_fd.h"

namespace ambit::cli {
namespace {

// The first part of socket_path this process may not pass through (a directory without search
// permission, or the socket without write permission), for a message that says what to fix.
std::string DeniedPart(const std::string& socket_path) {
  for (size_t slash = socket_path.find('/', 1); slash != std::string::npos;
       slash = socket_path.find('/', slash + 1)) {
    std::string dir = socket_path.substr(0, slash);
    if (faccessat(AT_FDCWD, dir.c_str(), X_OK, AT_EACCESS) != 0 && errno == EACCES) {
      return absl::StrCat("directory ", dir);
    }
  }
  return absl::StrCat("socket ", socket_path);
}

// A plain connect() before gRPC: gRPC reports every failure, "permission denied" included, as
// "unavailable", which reads as "not running".
absl::Status ProbeSocket(const std::string& socket_path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof addr.sun_path) {
    return absl::InvalidArgumentError(absl::StrCat("'", socket_path,
                                                   "' cannot be a unix socket path (1 to ",
                                                   sizeof addr.sun_path - 1, " bytes)"));
  }
  memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return absl::ErrnoToStatus(errno, "socket(AF_UNIX)");
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) {
    return absl::OkStatus();
  }
  const int err = errno;
  switch (err) {
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(
          absl::StrCat("permission denied on ambitd's admin socket ", socket_path, " (",
                       DeniedPart(socket_path), " is not accessible to uid ", geteuid(),
                       "): the admin API is root-only; run ambitctl as root, e.g. with sudo"));
    case ENOENT:
    case ENOTDIR:
      return absl::UnavailableError(absl::StrCat(
          "ambitd is not running here (no admin socket at ", socket_path,
          "); start it, or pick the agent with --instance NAME or --admin-socket PATH"));
    case ECONNREFUSED:
      return absl::UnavailableError(absl::StrCat(
          "ambitd is not running here (", socket_path,
          " exists but nothing listens on it: a stopped agent left it behind); start ambitd, or "
          "pick the agent with --instance NAME or --admin-socket PATH"));
    default:
      return absl::ErrnoToStatus(err,
                                 absl::StrCat("connect to ambitd's admin socket ", socket_path));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ambit::admin::v1::Admin::Stub>> ConnectAdmin(
    const std::string& socket_path) {
  if (absl::Status probe = ProbeSocket(socket_path); !probe.ok()) return probe;
  // A node with tens of thousands of live connections answers `connections` with more than
  // gRPC's default 4 MiB.
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  auto channel =
      grpc::CreateCustomChannel("unix:" + socket_path, grpc::InsecureChannelCredentials(), args);
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
