// VerifyMtls (ambitctl verify mtls): the wire-accounting map, folded into the agent's history,
// reported per enrolled pod and peer (agent/node/wire_report.h).

#include "absl/synchronization/mutex.h"
#include "agent/bpf/wire.h"
#include "agent/common/log.h"
#include "agent/common/status.h"
#include "agent/node/agent.h"

namespace ambit::node {
namespace {

constexpr const char* kComponent = "agent";

}  // namespace

void Agent::FoldWire(bool force) {
  const absl::Time now = clock_->Now();
  if (!force && now - wire_read_at_ < kWireBucket) return;
  auto read = bpf::ReadWire(redirector_->wire_map_fd());
  if (!read.ok()) {
    AMBIT_LOG(kComponent, Warning) << "read ambit_wire: " << read.status().message();
    return;
  }
  wire_ledger_.Fold(now, *read);
  wire_read_at_ = now;
}

absl::StatusOr<admin::v1::VerifyMtlsResponse> Agent::VerifyMtls(
    const admin::v1::VerifyMtlsRequest& req) {
  FoldWire(/*force=*/true);
  const absl::Time now = clock_->Now();
  WireReportInput in;
  WireTotals window;
  if (req.since_seconds() > 0) {
    AMBIT_ASSIGN_OR_RETURN(auto since,
                           wire_ledger_.Since(now - absl::Seconds(req.since_seconds())));
    window = std::move(since.first);
    in.totals = &window;
    in.window_start = since.second;
  } else {
    in.totals = &wire_ledger_.totals();
    in.window_start = wire_ledger_.started();
    in.window_starts_earlier = wire_ledger_.inherited();
  }
  bool found = req.pod().empty();
  for (const auto& [uid, e] : enrolled_) {
    in.pods[e.netns_cookie] = &e.pod;
    if (e.pod.Key() == req.pod()) found = true;
  }
  if (!found) {
    return absl::NotFoundError(absl::StrCat("pod ", req.pod(),
                                            " is not enrolled on this node (ambitctl workloads "
                                            "lists the pods and where they are enrolled)"));
  }
  in.pod_filter = req.pod();
  std::map<IpAddress, const state::Pod*> by_ip;
  for (const auto& [key, pod] : state_->pods) {
    if (state_->HasIpConflict(key)) continue;
    for (const IpAddress& ip : pod.ips) by_ip.emplace(ip, &pod);
  }
  in.peer_pod = [&by_ip](const IpAddress& ip) -> const state::Pod* {
    auto it = by_ip.find(ip);
    return it == by_ip.end() ? nullptr : it->second;
  };
  const std::vector<authz::PeerAuthentication> peer_authns = security_.PeerAuthenticationList();
  in.mtls_at = [&](const state::Pod& pod, uint16_t port) {
    return authz::ResolveMtlsMode(peer_authns, state_->mesh.root_namespace, pod.namespace_name,
                                  pod.labels, port);
  };
  admin::v1::VerifyMtlsResponse out;
  out.set_window_start_unix(absl::ToUnixSeconds(in.window_start));
  out.set_now_unix(absl::ToUnixSeconds(now));
  for (PodWireReport& r : BuildWireReport(in)) {
    admin::v1::PodWire* p = out.add_pods();
    p->set_pod(r.pod);
    p->set_encrypted_bytes(r.encrypted_bytes);
    p->set_plaintext_bytes(r.plaintext_bytes);
    p->set_plaintext_under_strict(r.plaintext_under_strict);
    if (r.plaintext_under_strict) out.set_plaintext_under_strict(true);
    for (const WireFlowReport& f : r.flows) {
      admin::v1::WireFlow* w = p->add_flows();
      w->set_peer_address(f.peer.ToString());
      w->set_peer_workload(f.peer_workload);
      w->set_mtls(f.mtls);
      w->set_protocol(WireProtocolName(f.proto));
      w->set_port(f.port);
      w->set_port_is_local(f.port_is_local);
      w->set_bytes_out(f.out.bytes);
      w->set_bytes_in(f.in.bytes);
      w->set_packets_out(f.out.packets);
      w->set_packets_in(f.in.packets);
      w->set_payload_out(f.out.payload);
      w->set_payload_in(f.in.payload);
      w->set_connections_out(f.out.syns);
      w->set_connections_in(f.in.syns);
      w->set_resets_out(f.out.resets);
      w->set_resets_in(f.in.resets);
      w->set_mtls_mode(f.mtls_mode);
      w->set_verdict(f.verdict);
    }
    for (std::string& v : r.verdicts) p->add_verdicts(std::move(v));
  }
  return out;
}

void Agent::InitVerifyMtlsHandler() {
  // Answered on the control thread, which owns the ledger, the enrolled pods and the
  // configuration; shared, so whichever side finishes first leaves the other a valid object.
  struct Pending {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    absl::StatusOr<admin::v1::VerifyMtlsResponse> answer ABSL_GUARDED_BY(mu) =
        absl::UnavailableError("the agent stopped before it answered");
  };
  FoldWire(/*force=*/true);  // the baseline: what an earlier agent counted
  admin_state_->SetVerifyMtlsHandler([this](const admin::v1::VerifyMtlsRequest& req)
                                         -> absl::StatusOr<admin::v1::VerifyMtlsResponse> {
    auto pending = std::make_shared<Pending>();
    completions_.Post([this, pending, req] {
      auto answer = VerifyMtls(req);
      absl::MutexLock lock(&pending->mu);
      pending->answer = std::move(answer);
      pending->done = true;
    });
    absl::MutexLock lock(&pending->mu);
    if (!pending->mu.AwaitWithTimeout(absl::Condition(&pending->done), absl::Seconds(10))) {
      return absl::DeadlineExceededError(
          "the control thread did not answer within 10s; see ambitctl status");
    }
    return std::move(pending->answer);
  });
}

}  // namespace ambit::node
