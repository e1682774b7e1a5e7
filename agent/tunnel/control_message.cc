#include "agent/tunnel/control_message.h"

#include "absl/strings/str_cat.h"

namespace ambit::tunnel {

namespace pb = ::ambit::dataplane::v1;

absl::StatusOr<pb::Envelope> DecodeAgentMessage(absl::string_view bytes, size_t fd_count) {
  pb::Envelope env;
  if (!env.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError("undecodable control message");
  }
  if (env.protocol_version() != pb::PROTOCOL_VERSION_CURRENT) {
    return absl::FailedPreconditionError(
        absl::StrCat("agent speaks control protocol ", env.protocol_version(), ", this data plane ",
                     static_cast<int>(pb::PROTOCOL_VERSION_CURRENT), "; upgrade one of them"));
  }
  switch (env.body_case()) {
    case pb::Envelope::kMaps:
      if (static_cast<size_t>(env.maps().fds_size()) != fd_count) {
        return absl::InvalidArgumentError(absl::StrCat("maps message lists ", env.maps().fds_size(),
                                                       " fds but carried ", fd_count));
      }
      return env;
    case pb::Envelope::kAddPod:
      if (static_cast<size_t>(env.add_pod().fds_size()) != fd_count) {
        return absl::InvalidArgumentError(absl::StrCat("add_pod ", env.add_pod().uid(), " lists ",
                                                       env.add_pod().fds_size(),
                                                       " fds but carried ", fd_count));
      }
      return env;
    case pb::Envelope::kRemovePod:
    case pb::Envelope::kSnapshot:
    case pb::Envelope::kCsrResponse:
    case pb::Envelope::kTrustBundle:
      if (fd_count != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("control message ", static_cast<int>(env.body_case()), " carried ",
                         fd_count, " fds; it takes none"));
      }
      return env;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected control message ", static_cast<int>(env.body_case())));
  }
}

}  // namespace ambit::tunnel
