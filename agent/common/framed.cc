#include "agent/common/framed.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace ambit {
namespace {

// Waits until fd is ready for `events` or the deadline passes: the whole exchange is bounded,
// not each call (a peer trickling one byte at a time cannot hold the caller).
absl::Status WaitReady(int fd, short events, absl::Time deadline, const char* what) {
  while (true) {
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat("stats socket ", what, " timed out"));
    }
    pollfd p{fd, events, 0};
    int n =
        poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left + absl::Microseconds(999))));
    if (n > 0) return absl::OkStatus();
    if (n < 0 && errno != EINTR) return absl::ErrnoToStatus(errno, "stats socket poll");
  }
}

absl::Status WriteAll(int fd, const char* data, size_t len, absl::Time deadline) {
  while (len > 0) {
    if (auto s = WaitReady(fd, POLLOUT, deadline, "write"); !s.ok()) return s;
    ssize_t n = send(fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return absl::ErrnoToStatus(errno, "stats socket write");
    }
    data += n;
    len -= n;
  }
  return absl::OkStatus();
}

absl::Status ReadAll(int fd, char* data, size_t len, absl::Time deadline) {
  while (len > 0) {
    if (auto s = WaitReady(fd, POLLIN, deadline, "read"); !s.ok()) return s;
    ssize_t n = recv(fd, data, len, MSG_DONTWAIT);
    if (n == 0) return absl::UnavailableError("stats socket closed by the peer");
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return absl::ErrnoToStatus(errno, "stats socket read");
    }
    data += n;
    len -= n;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteFramed(int fd, const std::string& message, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  uint32_t len = static_cast<uint32_t>(message.size());
  unsigned char header[4] = {static_cast<unsigned char>(len), static_cast<unsigned char>(len >> 8),
                             static_cast<unsigned char>(len >> 16),
                             static_cast<unsigned char>(len >> 24)};
  auto status = WriteAll(fd, reinterpret_cast<const char*>(header), sizeof header, deadline);
  if (!status.ok()) return status;
  return WriteAll(fd, message.data(), message.size(), deadline);
}

absl::StatusOr<std::string> ReadFramed(int fd, size_t max_bytes, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  unsigned char header[4];
  auto status = ReadAll(fd, reinterpret_cast<char*>(header), sizeof header, deadline);
  if (!status.ok()) return status;
  size_t len = header[0] | (header[1] << 8) | (header[2] << 16) | (size_t{header[3]} << 24);
  if (len > max_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("stats message of ", len, " bytes exceeds the limit of ", max_bytes));
  }
  std::string out(len, '\0');
  status = ReadAll(fd, out.data(), len, deadline);
  if (!status.ok()) return status;
  return out;
}

std::string StatsSocketFor(const std::string& control_socket) {
  constexpr absl::string_view kNext = ".next";
  if (absl::EndsWith(control_socket, kNext)) {
    return StatsSocketFor(control_socket.substr(0, control_socket.size() - kNext.size())) +
           std::string(kNext);
  }
  auto slash = control_socket.rfind('/');
  std::string dir = slash == std::string::npos ? "." : control_socket.substr(0, slash);
  return dir + "/dataplane-stats.sock";
}

}  // namespace ambit
