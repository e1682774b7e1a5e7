#include "agent/tunnel/control_message.h"

#include <algorithm>
#include <optional>

#include "absl/strings/ascii.h"
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
    case pb::Envelope::kTrustBundleRef:
      AMBIT_RETURN_IF_ERROR(CheckSealedFileRef(
          "trust_bundle_ref", fd_count, env.trust_bundle_ref().size(), kMaxTrustBundleBytes));
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
    case pb::Envelope::kDrain:
      if (env.drain().grace_seconds() > kMaxDrainGraceSeconds) {
        return absl::InvalidArgumentError(
            absl::StrCat("drain grace of ", env.drain().grace_seconds(),
                         " s is above the limit of ", kMaxDrainGraceSeconds, " s"));
      }
      [[fallthrough]];
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
    case pb::StatsSocketRequest::kExtAuthzProbe: {
      auto probe = ExtAuthzProbeFromProto(request.ext_authz_probe());
      if (!probe.ok()) return probe.status();
      return request;
    }
    case pb::StatsSocketRequest::REQUEST_NOT_SET:
      break;
  }
  return absl::UnimplementedError("stats socket: the request asks for nothing this build knows");
}

namespace {

bool IsTokenChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
         absl::string_view("!#$%&'*+-.^_`|~").find(c) != absl::string_view::npos;
}

bool IsToken(absl::string_view s, bool lower) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!IsTokenChar(c) || (lower && absl::ascii_isupper(static_cast<unsigned char>(c)))) {
      return false;
    }
  }
  return true;
}

bool HasControl(absl::string_view s) {
  return s.find_first_of(absl::string_view("\r\n\0", 3)) != absl::string_view::npos;
}

bool IsObjectKey(absl::string_view s) {
  const size_t slash = s.find('/');
  return slash != absl::string_view::npos && slash > 0 && slash + 1 < s.size() &&
         s.find('/', slash + 1) == absl::string_view::npos && !HasControl(s) && s.size() <= 253;
}

absl::Status ProbeError(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("ext_authz probe: ", field, " ", why));
}

// "ip" or "ip:port" ("[v6]:port"); "" is unknown.
absl::StatusOr<std::optional<SocketAddress>> ProbeAddress(absl::string_view field,
                                                          const std::string& text) {
  if (text.empty()) return std::optional<SocketAddress>();
  if (auto ip = IpAddress::Parse(text); ip.ok()) return std::optional<SocketAddress>({*ip, 0});
  auto addr = SocketAddress::Parse(text);
  if (!addr.ok()) return ProbeError(field, absl::StrCat("'", text, "' is not ip or ip:port"));
  return std::optional<SocketAddress>(*addr);
}

void HeadersToProto(const std::vector<std::pair<std::string, std::string>>& headers,
                    google::protobuf::RepeatedPtrField<pb::ProbeHeader>* out) {
  for (const auto& [name, value] : headers) {
    auto* h = out->Add();
    h->set_name(name);
    h->set_value(value);
  }
}

void EditsToProto(const std::vector<ExtAuthzProbeResult::HeaderEdit>& edits,
                  google::protobuf::RepeatedPtrField<pb::ProbeHeaderEdit>* out) {
  using Op = ExtAuthzProbeResult::HeaderEdit::Op;
  for (const auto& e : edits) {
    auto* p = out->Add();
    p->set_op(e.op == Op::kSet      ? pb::PROBE_HEADER_EDIT_OP_SET
              : e.op == Op::kAppend ? pb::PROBE_HEADER_EDIT_OP_APPEND
                                    : pb::PROBE_HEADER_EDIT_OP_REMOVE);
    p->set_name(e.name);
    p->set_value(e.value);
  }
}

}  // namespace

absl::StatusOr<ExtAuthzProbe> ExtAuthzProbeFromProto(const pb::ExtAuthzProbeRequest& request) {
  ExtAuthzProbe probe;
  if (request.waypoint_pod().empty() == request.waypoint().empty()) {
    return ProbeError("waypoint_pod/waypoint", "name exactly one of them");
  }
  if (!request.waypoint_pod().empty() && !IsObjectKey(request.waypoint_pod())) {
    return ProbeError("waypoint_pod", "is not namespace/name");
  }
  if (!request.waypoint().empty() && !IsObjectKey(request.waypoint())) {
    return ProbeError("waypoint", "is not namespace/name");
  }
  if (request.provider().empty() || request.provider().size() > 253 ||
      HasControl(request.provider())) {
    return ProbeError("provider", "must be a provider name");
  }
  if (!IsToken(request.method(), /*lower=*/false) || request.method().size() > 32) {
    return ProbeError("method", absl::StrCat("'", request.method(), "' is not an HTTP method"));
  }
  if (request.path().empty() || request.path()[0] != '/' || HasControl(request.path()) ||
      request.path().find(' ') != std::string::npos || request.path().size() > 8192) {
    return ProbeError("path", "must start with '/' and hold no space, CR, LF or NUL");
  }
  if (HasControl(request.host()) || request.host().size() > 1024) {
    return ProbeError("host", "holds CR, LF or NUL, or is too long");
  }
  if (request.headers_size() > 100) return ProbeError("headers", "more than 100");
  for (const auto& h : request.headers()) {
    if (!IsToken(h.name(), /*lower=*/true)) {
      return ProbeError("headers", absl::StrCat("name '", h.name(), "' is not a lower-case token"));
    }
    if (HasControl(h.value())) {
      return ProbeError("headers", absl::StrCat("value of ", h.name(), " holds CR, LF or NUL"));
    }
    probe.headers.emplace_back(h.name(), h.value());
  }
  if (HasControl(request.source_principal())) {
    return ProbeError("source_principal", "holds CR, LF or NUL");
  }
  AMBIT_ASSIGN_OR_RETURN(probe.source, ProbeAddress("source_address", request.source_address()));
  AMBIT_ASSIGN_OR_RETURN(probe.destination,
                         ProbeAddress("destination_address", request.destination_address()));
  if (!request.has_body() && !request.body().empty()) {
    return ProbeError("body", "is set without has_body");
  }
  if (request.body().size() > kMaxProbeBody) {
    return ProbeError("body", absl::StrCat("is over ", kMaxProbeBody, " bytes"));
  }
  probe.waypoint_pod = request.waypoint_pod();
  probe.waypoint = request.waypoint();
  probe.provider = request.provider();
  probe.method = request.method();
  probe.path = request.path();
  probe.host = request.host();
  probe.source_principal = request.source_principal();
  if (request.has_body()) probe.body = request.body();
  return probe;
}

pb::ExtAuthzProbeResponse ExtAuthzProbeResultToProto(const ExtAuthzProbeResult& result) {
  pb::ExtAuthzProbeResponse out;
  if (!result.error.empty()) {
    out.set_error(result.error);
    return out;
  }
  using Outcome = ExtAuthzProbeResult::Outcome;
  out.set_outcome(result.outcome == Outcome::kAllow  ? pb::EXT_AUTHZ_PROBE_OUTCOME_ALLOW
                  : result.outcome == Outcome::kDeny ? pb::EXT_AUTHZ_PROBE_OUTCOME_DENY
                                                     : pb::EXT_AUTHZ_PROBE_OUTCOME_ERROR);
  out.set_status(static_cast<uint32_t>(std::max(0, result.status)));
  HeadersToProto(result.deny_headers, out.mutable_deny_headers());
  out.set_deny_body(result.deny_body.substr(0, kMaxProbeAnswerBody));
  out.set_deny_body_truncated(result.deny_body.size() > kMaxProbeAnswerBody);
  EditsToProto(result.upstream_edits, out.mutable_upstream_edits());
  EditsToProto(result.downstream_edits, out.mutable_downstream_edits());
  out.set_detail(result.detail);
  out.set_latency_us(absl::ToInt64Microseconds(result.latency));
  out.set_waypoint_pod(result.waypoint_pod);
  out.set_provider_kind(result.provider_kind);
  out.set_fail_open(result.fail_open);
  out.set_status_on_error(result.status_on_error);
  out.set_timeout_ms(absl::ToInt64Milliseconds(result.timeout));
  out.set_unresolved(result.unresolved);
  return out;
}

absl::StatusOr<pb::TrustBundle> ReadTrustBundleFile(int fd, uint64_t size) {
  return ReadSealedMessage<pb::TrustBundle>(fd, size, kMaxTrustBundleBytes, "trust_bundle_ref",
                                            "TrustBundle");
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
