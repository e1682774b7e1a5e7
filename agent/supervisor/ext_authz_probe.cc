#include "agent/supervisor/ext_authz_probe.h"

#include "absl/strings/str_cat.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::supervisor {
namespace {

namespace pb = ::ambit::dataplane::v1;

absl::Status Malformed(absl::string_view why) {
  return absl::DataLossError(absl::StrCat("the waypoint's ext_authz answer is malformed: ", why));
}

absl::StatusOr<std::vector<ExtAuthzProbeAnswer::HeaderEdit>> Edits(
    const google::protobuf::RepeatedPtrField<pb::ProbeHeaderEdit>& edits) {
  using Op = ExtAuthzProbeAnswer::HeaderEdit::Op;
  std::vector<ExtAuthzProbeAnswer::HeaderEdit> out;
  for (const auto& e : edits) {
    ExtAuthzProbeAnswer::HeaderEdit edit{Op::kSet, e.name(), e.value()};
    switch (e.op()) {
      case pb::PROBE_HEADER_EDIT_OP_SET:
        edit.op = Op::kSet;
        break;
      case pb::PROBE_HEADER_EDIT_OP_APPEND:
        edit.op = Op::kAppend;
        break;
      case pb::PROBE_HEADER_EDIT_OP_REMOVE:
        edit.op = Op::kRemove;
        break;
      default:
        return Malformed(
            absl::StrCat("header edit of ", e.name(), " has op ", static_cast<int>(e.op())));
    }
    out.push_back(std::move(edit));
  }
  return out;
}

}  // namespace

pb::ExtAuthzProbeRequest ExtAuthzProbeQueryToProto(const ExtAuthzProbeQuery& query) {
  pb::ExtAuthzProbeRequest out;
  out.set_waypoint_pod(query.waypoint_pod);
  out.set_waypoint(query.waypoint);
  out.set_provider(query.provider);
  out.set_method(query.method);
  out.set_path(query.path);
  out.set_host(query.host);
  for (const auto& [name, value] : query.headers) {
    auto* h = out.add_headers();
    h->set_name(name);
    h->set_value(value);
  }
  out.set_source_address(query.source_address);
  out.set_source_principal(query.source_principal);
  out.set_destination_address(query.destination_address);
  return out;
}

absl::StatusOr<ExtAuthzProbeAnswer> ExtAuthzProbeAnswerFromProto(
    const pb::ExtAuthzProbeResponse& response) {
  if (!response.error().empty()) return absl::FailedPreconditionError(response.error());
  ExtAuthzProbeAnswer a;
  switch (response.outcome()) {
    case pb::EXT_AUTHZ_PROBE_OUTCOME_ALLOW:
      a.outcome = ExtAuthzProbeAnswer::Outcome::kAllow;
      break;
    case pb::EXT_AUTHZ_PROBE_OUTCOME_DENY:
      a.outcome = ExtAuthzProbeAnswer::Outcome::kDeny;
      if (response.status() < 100 || response.status() > 599) {
        return Malformed(absl::StrCat("deny with status ", response.status()));
      }
      break;
    case pb::EXT_AUTHZ_PROBE_OUTCOME_ERROR:
      a.outcome = ExtAuthzProbeAnswer::Outcome::kError;
      break;
    default:
      return Malformed(absl::StrCat("outcome ", static_cast<int>(response.outcome())));
  }
  if (response.latency_us() < 0 || response.timeout_ms() < 0) {
    return Malformed("a negative duration");
  }
  a.status = static_cast<int>(response.status());
  for (const auto& h : response.deny_headers()) a.deny_headers.emplace_back(h.name(), h.value());
  a.deny_body = response.deny_body();
  a.deny_body_truncated = response.deny_body_truncated();
  auto up = Edits(response.upstream_edits());
  if (!up.ok()) return up.status();
  a.upstream_edits = std::move(*up);
  auto down = Edits(response.downstream_edits());
  if (!down.ok()) return down.status();
  a.downstream_edits = std::move(*down);
  a.detail = response.detail();
  a.latency = absl::Microseconds(response.latency_us());
  a.waypoint_pod = response.waypoint_pod();
  a.provider_kind = response.provider_kind();
  a.fail_open = response.fail_open();
  a.status_on_error = response.status_on_error();
  if (a.status_on_error == 0) a.status_on_error = 403;  // Istio's default
  a.timeout = absl::Milliseconds(response.timeout_ms());
  a.unresolved = response.unresolved();
  return a;
}

}  // namespace ambit::supervisor
