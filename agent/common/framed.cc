#include "agent/common/framed.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace ambit {
namespace {

void SetTimeout(int fd, int option, absl::Duration timeout) {
  timeval tv = absl::ToTimeval(timeout);
  setsockopt(fd, SOL_SOCKET, option, &tv, sizeof tv);
}

absl::Status WriteAll(int fd, const char* data, size_t len) {
  while (len > 0) {
    ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "stats socket write");
    }
    data += n;
    len -= n;
  }
  return absl::OkStatus();
}

absl::Status ReadAll(int fd, char* data, size_t len) {
  while (len > 0) {
    ssize_t n = recv(fd, data, len, 0);
    if (n == 0) return absl::UnavailableError("stats socket closed by the peer");
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return absl::DeadlineExceededError("stats socket read timed out");
      return absl::ErrnoToStatus(errno, "stats socket read");
    }
    data += n;
    len -= n;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteFramed(int fd, const std::string& message, absl::Duration timeout) {
  SetTimeout(fd, SO_SNDTIMEO, timeout);
  uint32_t len = static_cast<uint32_t>(message.size());
  unsigned char header[4] = {static_cast<unsigned char>(len), static_cast<unsigned char>(len >> 8),
                             static_cast<unsigned char>(len >> 16),
                             static_cast<unsigned char>(len >> 24)};
  auto status = WriteAll(fd, reinterpret_cast<const char*>(header), sizeof header);
  if (!status.ok()) return status;
  return WriteAll(fd, message.data(), message.size());
}

absl::StatusOr<std::string> ReadFramed(int fd, size_t max_bytes, absl::Duration timeout) {
  SetTimeout(fd, SO_RCVTIMEO, timeout);
  unsigned char header[4];
  auto status = ReadAll(fd, reinterpret_cast<char*>(header), sizeof header);
  if (!status.ok()) return status;
  size_t len = header[0] | (header[1] << 8) | (header[2] << 16) | (size_t{header[3]} << 24);
  if (len > max_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("stats message of ", len, " bytes exceeds the limit of ", max_bytes));
  }
  std::string out(len, '\0');
  status = ReadAll(fd, out.data(), len);
  if (!status.ok()) return status;
  return out;
}

std::string StatsSocketFor(const std::string& control_socket) {
  auto slash = control_socket.rfind('/');
  std::string dir = slash == std::string::npos ? "." : control_socket.substr(0, slash);
  return dir + "/dataplane-stats.sock";
}

}  // namespace ambit
