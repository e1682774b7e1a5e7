#include "agent/tunnel/control_message.h"

#include "absl/strings/str_cat.h"
#include "agent/common/log.h"
#include "agent/common/sealed_file.h"
#include "agent/common/status.h"
#include "agent/mesh/wire.h"

namespace ambit::tunnel {

namespace pb = ::ambit::dataplane::v1;

absl::StatusOr<pb::Envelope> DecodeAgentMessage(absl::string_view bytes, size_t fd_count) {
  AMBIT_ASSIGN_OR_RETURN(pb::Envelope env,
                         mesh::ParseEnvelope(bytes, "agent", "data plane", "upgrade one of them"));
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
    case pb::Envelope::kSnapshotRef:
      // Its one sealed file is checked where the snapshot is applied: a wrong count there is
      // refused (nacked) and fails closed instead of ending the control session.
      return env;
    case pb::Envelope::kRemovePod:
    case pb::Envelope::kSnapshot:
    case pb::Envelope::kSnapshotFailed:
    case pb::Envelope::kCsrResponse:
    case pb::Envelope::kTrustBundle:
    case pb::Envelope::kPing:
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

absl::StatusOr<pb::StatsSocketRequest> DecodeStatsSocketRequest(absl::string_view bytes) {
  pb::StatsSocketRequest request;
  if (!request.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError("stats socket: not a StatsSocketRequest");
  }
  switch (request.request_case()) {
    case pb::StatsSocketRequest::kStats:
      return request;
    case pb::StatsSocketRequest::kLogLevel: {
      log::Level level;
      if (!log::ParseLevel(request.log_level().level(), &level)) {
        return absl::InvalidArgumentError(absl::StrCat("unknown log level \"",
                                                       request.log_level().level(),
                                                       "\"; use debug, info, warn or error"));
      }
      return request;
    }
    case pb::StatsSocketRequest::REQUEST_NOT_SET:
      break;
  }
  return absl::UnimplementedError("stats socket: the request asks for nothing this build knows");
}

absl::StatusOr<mesh::Snapshot> ReadSnapshotFile(const pb::SnapshotRef& ref,
                                                const std::vector<UniqueFd>& fds,
                                                uint64_t max_bytes) {
  if (fds.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("the snapshot message carried ", fds.size(),
                                                   " descriptors instead of one sealed file"));
  }
  auto mapping = SealedMapping::Map(fds[0].get(), ref.size(), max_bytes);
  if (!mapping.ok()) return mapping.status();
  auto snapshot = mesh::DecodeSnapshot(mapping->bytes());
  if (!snapshot.ok()) {
    if (snapshot.status().code() == absl::StatusCode::kDataLoss) {
      return absl::DataLossError(absl::StrCat("the sealed file does not hold a Snapshot message (",
                                              snapshot.status().message(), ")"));
    }
    return snapshot.status();
  }
  if (snapshot->version != ref.version()) {
    return absl::InvalidArgumentError(absl::StrCat("the sealed file holds generation ",
                                                   snapshot->version, ", not ", ref.version()));
  }
  return snapshot;
}

namespace {

// Each listener role and where a Pod keeps it; the netns is handled apart.
struct FdSlot {
  pb::FdRole role;
  UniqueFd Pod::*field;
};
constexpr FdSlot kPodFds[] = {
    {pb::FD_ROLE_OUTBOUND_V4, &Pod::outbound_v4},   {pb::FD_ROLE_OUTBOUND_V6, &Pod::outbound_v6},
    {pb::FD_ROLE_INBOUND_PLAIN_V4, &Pod::plain_v4}, {pb::FD_ROLE_INBOUND_PLAIN_V6, &Pod::plain_v6},
    {pb::FD_ROLE_HBONE_V4, &Pod::hbone_v4},         {pb::FD_ROLE_HBONE_V6, &Pod::hbone_v6},
};

}  // namespace

absl::StatusOr<std::shared_ptr<Pod>> DecodePod(const pb::Pod& p, std::vector<UniqueFd> fds) {
  if (p.fds_size() != static_cast<int>(fds.size())) {
    return absl::InvalidArgumentError(absl::StrCat("add_pod ", p.uid(), " lists ", p.fds_size(),
                                                   " fds but carried ", fds.size()));
  }
  AMBIT_ASSIGN_OR_RETURN(mesh::Workload workload, mesh::PodFromProto(p));
  auto pod = std::make_shared<Pod>();
  pod->uid = workload.Key();
  if (!workload.identity.trust_domain.empty()) pod->spiffe_id = workload.identity.ToString();
  pod->workload = std::move(workload);
  pod->netns_cookie = p.netns_cookie();
  for (int i = 0; i < p.fds_size(); ++i) {
    if (p.fds(i) == pb::FD_ROLE_NETNS) {
      pod->netns = std::move(fds[i]);
      continue;
    }
    for (const FdSlot& slot : kPodFds) {
      if (slot.role == p.fds(i)) (*pod).*slot.field = std::move(fds[i]);
    }
  }
  if (!pod->netns || !pod->outbound_v4) {
    return absl::InvalidArgumentError(
        absl::StrCat("add_pod ", p.uid(), " lacks its netns or outbound listener"));
  }
  return pod;
}

absl::Status EncodePod(const Pod& pod, pb::Pod* out, std::vector<int>* fds) {
  AMBIT_RETURN_IF_ERROR(mesh::PodToProto(pod.workload, out));
  out->set_netns_cookie(pod.netns_cookie);
  auto add = [&](const UniqueFd& fd, pb::FdRole role) {
    if (!fd) return;
    fds->push_back(fd.get());
    out->add_fds(role);
  };
  add(pod.netns, pb::FD_ROLE_NETNS);
  for (const FdSlot& slot : kPodFds) add(pod.*slot.field, slot.role);
  return absl::OkStatus();
}

}  // namespace ambit::tunnel
