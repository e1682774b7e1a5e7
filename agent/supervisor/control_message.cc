#include "agent/supervisor/control_message.h"

#include "absl/strings/str_cat.h"
#include "agent/common/status.h"
#include "agent/mesh/wire.h"

namespace ambit::supervisor {

namespace pb = ::ambit::dataplane::v1;

absl::StatusOr<pb::Envelope> DecodeDataPlaneMessage(absl::string_view bytes, size_t fd_count) {
  AMBIT_ASSIGN_OR_RETURN(pb::Envelope env, mesh::ParseEnvelope(bytes, "data plane", "agent",
                                                               "restart the data plane"));
  switch (env.body_case()) {
    case pb::Envelope::kAddPod:  // a pod handed back after a restart, with its listeners
      if (static_cast<size_t>(env.add_pod().fds_size()) != fd_count) {
        return absl::InvalidArgumentError(absl::StrCat("handed-back pod ", env.add_pod().uid(),
                                                       " lists ", env.add_pod().fds_size(),
                                                       " fds but carried ", fd_count));
      }
      return env;
    case pb::Envelope::kHello:
    case pb::Envelope::kAck:
    case pb::Envelope::kNack:
    case pb::Envelope::kCsrRequest:
    case pb::Envelope::kCertificateReport:
    case pb::Envelope::kPodRemoved:
    case pb::Envelope::kPong:
      if (fd_count != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("control message ", static_cast<int>(env.body_case()), " carried ",
                         fd_count, " fds; it takes none"));
      }
      return env;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unexpected control message ",
                                                     static_cast<int>(env.body_case()),
                                                     " from the data plane"));
  }
}

}  // namespace ambit::supervisor
