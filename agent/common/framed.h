#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ambit {

// Length-prefixed messages on a blocking stream socket: a 4-byte little-endian length, then the
// bytes. Used where one message can outgrow a SOCK_SEQPACKET datagram (the data plane's stats
// answer lists every live connection). Each call gives up once `timeout` has passed in all
// (not per read or write), and ReadFramed refuses messages above `max_bytes`.
absl::Status WriteFramed(int fd, const std::string& message, absl::Duration timeout);
absl::StatusOr<std::string> ReadFramed(int fd, size_t max_bytes, absl::Duration timeout);

// The data plane's stats socket, beside its control socket; a roll's standby (control socket
// <path>.next) has <stats socket>.next.
std::string StatsSocketFor(const std::string& control_socket);

}  // namespace ambit
