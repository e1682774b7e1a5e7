#include "agent/supervisor/control_message.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/common/sealed_file.h"
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
    case pb::Envelope::kCertificateReportRef:
      AMBIT_RETURN_IF_ERROR(CheckSealedFileRef("certificate_report_ref", fd_count,
                                               env.certificate_report_ref().size(),
                                               kMaxCertificateReportBytes));
      return env;
    case pb::Envelope::kPongRef:
      AMBIT_RETURN_IF_ERROR(
          CheckSealedFileRef("pong_ref", fd_count, env.pong_ref().size(), kMaxPongBytes));
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

absl::StatusOr<pb::CertificateReport> ReadCertificateReportFile(int fd, uint64_t size) {
  return ReadSealedMessage<pb::CertificateReport>(fd, size, kMaxCertificateReportBytes,
                                                  "certificate_report_ref", "CertificateReport");
}

absl::StatusOr<pb::Pong> ReadPongFile(int fd, uint64_t size) {
  return ReadSealedMessage<pb::Pong>(fd, size, kMaxPongBytes, "pong_ref", "Pong");
}

absl::Status EncodeAddPod(const PodDescriptor& pod, pb::Pod* out, std::vector<int>* fds) {
  if (absl::Status s = mesh::PodToProto(pod.workload, out); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("add_pod: ", s.message()));
  }
  out->set_netns_cookie(pod.netns_cookie);
  auto add = [&](int fd, pb::FdRole role) {
    if (fd < 0) return;
    fds->push_back(fd);
    out->add_fds(role);
  };
  add(pod.netns, pb::FD_ROLE_NETNS);
  add(pod.outbound_v4, pb::FD_ROLE_OUTBOUND_V4);
  add(pod.outbound_v6, pb::FD_ROLE_OUTBOUND_V6);
  add(pod.plain_v4, pb::FD_ROLE_INBOUND_PLAIN_V4);
  add(pod.plain_v6, pb::FD_ROLE_INBOUND_PLAIN_V6);
  add(pod.hbone_v4, pb::FD_ROLE_HBONE_V4);
  add(pod.hbone_v6, pb::FD_ROLE_HBONE_V6);
  return absl::OkStatus();
}

absl::StatusOr<HandedBackPod> DecodeHandedBackPod(const pb::Pod& in, std::vector<UniqueFd> fds) {
  auto workload = mesh::PodFromProto(in);
  if (!workload.ok()) {
    return absl::Status(workload.status().code(),
                        absl::StrCat("handed-back pod: ", workload.status().message()));
  }
  HandedBackPod pod;
  pod.workload = *std::move(workload);
  pod.netns_cookie = in.netns_cookie();
  for (int j = 0; j < in.fds_size() && j < static_cast<int>(fds.size()); ++j) {
    UniqueFd& fd = fds[j];
    switch (in.fds(j)) {
      case pb::FD_ROLE_NETNS:
        pod.netns = std::move(fd);
        break;
      case pb::FD_ROLE_OUTBOUND_V4:
        pod.outbound_v4 = std::move(fd);
        break;
      case pb::FD_ROLE_OUTBOUND_V6:
        pod.outbound_v6 = std::move(fd);
        break;
      case pb::FD_ROLE_INBOUND_PLAIN_V4:
        pod.plain_v4 = std::move(fd);
        break;
      case pb::FD_ROLE_INBOUND_PLAIN_V6:
        pod.plain_v6 = std::move(fd);
        break;
      case pb::FD_ROLE_HBONE_V4:
        pod.hbone_v4 = std::move(fd);
        break;
      case pb::FD_ROLE_HBONE_V6:
        pod.hbone_v6 = std::move(fd);
        break;
      default:
        break;
    }
  }
  return pod;
}

}  // namespace ambit::supervisor
