#pragma once

// The data plane's control decisions, apart from the sockets and threads that carry them out:
// the control messages from the agent (snapshots accepted or refused by generation, pods added,
// removed and handed back, heartbeats), the certificate lifecycle (when to request and renew,
// when a certificate expired, how long a new pod waits for one) and the TLS contexts the workers
// use. Each event goes in with the state kept here, and the actions to carry out come back, in
// order; Tunnel (control.h) executes them on the sockets and workers. No I/O: time comes from the
// injected clock, the kernel's view of a pod's listeners from PodSockets, so unit tests drive
// every edge case with fakes (tests/unit/tunnel/reconciler_test.cc).
//
// Thread-safety: single-threaded (the data plane's control thread).

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/tls/cert_manager.h"
#include "agent/tls/crl.h"
#include "agent/tunnel/control_rules.h"
#include "agent/tunnel/mesh_snapshot.h"
#include "agent/tunnel/pod_sockets.h"
#include "agent/tunnel/pod_table.h"
#include "agent/tunnel/tls_contexts.h"

namespace ambit::tunnel {

// What the executor does, one struct per kind. "Send" actions go up the control channel;
// "Workers" actions go to every worker (and to workers started later, see WorkersStarted).
namespace action {
struct SendHello {
  uint64_t pod_count = 0;
  uint64_t snapshot_version = 0;
};
// One add_pod with the pod's descriptors, so a restarted agent adopts the live listeners.
struct SendHandBack {
  std::shared_ptr<const Pod> pod;
};
struct SendAck {
  uint64_t version = 0;
};
struct SendNack {
  uint64_t version = 0;
  std::string error;
};
struct SendCsr {
  uint64_t request_id = 0;
  std::string identity;
  std::string csr_pem;
};
// Sent only when it differs from the last one this session got.
struct SendCertReport {
  std::vector<tls::CertStatus> certificates;
};
struct PodHealth {
  std::string uid;
  uint32_t listening = 0;          // its listeners still in the listening state
  uint32_t workers_accepting = 0;  // workers that watch every listener it holds
  bool waiting_for_certificate = false;
};
struct SendPong {
  uint64_t seq = 0;
  uint32_t workers = 0;  // workers that answered
  std::vector<PodHealth> pods;
};
// Every worker runs a task and reports the listeners it watches (the heartbeat's question); the
// answers go to Reconciler::HeartbeatAnswered with `seq` and `session`.
struct AskWorkers {
  uint64_t seq = 0;
  uint64_t session = 0;
};
// Workers accept on the pod's listeners.
struct ServePod {
  std::shared_ptr<const Pod> pod;
};
// Workers drop the pod (bounded wait), its listeners leave the listening state, then
// pod_removed goes up. `pod` is null for a pod this data plane did not know: the answer is
// still sent, so the agent never waits for it.
struct RemovePod {
  std::string uid;
  std::shared_ptr<const Pod> pod;
};
struct InstallSnapshot {
  std::shared_ptr<const MeshSnapshot> snapshot;
};
// Non-empty: refuse new connections with this reason; empty: accept again.
struct SetFailClosed {
  std::string reason;
};
struct InstallTls {
  std::shared_ptr<const TlsContexts> contexts;
};
}  // namespace action

using Action =
    std::variant<action::SendHello, action::SendHandBack, action::SendAck, action::SendNack,
                 action::SendCsr, action::SendCertReport, action::SendPong, action::AskWorkers,
                 action::ServePod, action::RemovePod, action::InstallSnapshot,
                 action::SetFailClosed, action::InstallTls>;
using Actions = std::vector<Action>;

// Builds the TLS contexts of every identity in `statuses` from the certificates `certs` serves
// and `trust_bundle` (PEM roots), for `trust_domain` (empty: cluster.local). An identity without a
// usable certificate, trust bundle or context gets a `missing` entry saying why. Peers of
// `aliases` (MeshConfig trustDomainAliases) are accepted as of `trust_domain`; `crls` (may be
// null) are enforced on every peer's chain.
std::shared_ptr<const TlsContexts> BuildTlsContexts(const tls::CertManager& certs,
                                                    const std::vector<tls::CertStatus>& statuses,
                                                    const std::vector<std::string>& trust_bundle,
                                                    const std::string& trust_domain,
                                                    const Clock* clock,
                                                    const std::vector<std::string>& aliases = {},
                                                    const tls::CrlSet* crls = nullptr);

class Reconciler final : private tls::CsrSigner {
 public:
  // `clock` and `sockets` must outlive the reconciler.
  Reconciler(const Clock* clock, const PodSockets* sockets,
             tls::CertManagerOptions cert_options = {});
  Reconciler(const Reconciler&) = delete;
  Reconciler& operator=(const Reconciler&) = delete;

  // CSRs sent and not answered yet, at most; the rest are held in order (see RequestSigning).
  // Four times what ambitd signs at once, so its signer never idles waiting for the next CSR.
  static constexpr size_t kMaxOutstandingCsrs = 16;

  // An agent connected (replacing any previous one): hello, then every pod handed back.
  Actions Connected();
  // The agent went away: CSRs it did not answer are retried by the certificate manager.
  Actions Disconnected();
  // The workers exist now (the agent sent the maps): everything they must know so far.
  Actions WorkersStarted();

  // A pod to serve (a new one, or one with the same uid replacing the old). It is served once
  // its certificate is valid and the configuration knows it, or once kCertGrace passed.
  Actions AddPod(std::shared_ptr<const Pod> pod);
  // Removal of `uid`, known or not.
  Actions RemovePod(const std::string& uid);
  // Generation `version`, as mapped from the agent's snapshot (or why it could not be). A
  // generation older than one applied in this session is refused as stale and changes nothing;
  // a snapshot that cannot be mapped is refused and fails closed.
  Actions ApplySnapshot(uint64_t version,
                        absl::StatusOr<std::shared_ptr<const MeshSnapshot>> mapped);
  // The agent could not deliver generation `version`: fail closed unless something at least as
  // new is in force.
  Actions SnapshotFailed(uint64_t version, const std::string& error);
  // The agent's answer to a CSR; answers to requests not outstanding (superseded, or from before
  // the agent reconnected) are ignored.
  Actions CsrAnswered(uint64_t request_id, absl::StatusOr<std::vector<std::string>> chain_pem);
  // A SendCsr could not be sent: counted as a failed request at the next Tick.
  void CsrNotSent(uint64_t request_id, absl::Status status);
  // `crl_pems`: the agent's --crl-file CRLs. They are checked against the roots here; CRLs that
  // fail keep the last good ones in force (logged), as the agent keeps the last good file.
  Actions TrustBundle(std::vector<std::string> root_pems, std::vector<std::string> crl_pems = {});
  Actions Ping(uint64_t seq);
  // The workers' answers to AskWorkers (`watched`: per worker that answered, its listeners by
  // pod uid). Nothing for a previous session's question: the agent that asked is gone.
  Actions HeartbeatAnswered(uint64_t seq, uint64_t session,
                            const std::vector<std::unordered_map<std::string, uint32_t>>& watched);

  // Runs after every event: certificate work that is due, TLS contexts rebuilt if a certificate
  // or the trust bundle changed, pods whose wait is over served, the certificate report.
  Actions Tick();
  // When Tick has work next by time alone; absl::InfiniteFuture() if never.
  absl::Time NextDeadline() const;

  // For the executor and the stats answer.
  const std::map<std::string, std::shared_ptr<const Pod>>& pods() const { return pods_; }
  bool waiting_for_certificate(const std::string& uid) const {
    return waiting_for_cert_.count(uid) > 0;
  }
  uint64_t snapshot_version() const { return snapshot_version_; }
  uint64_t failed_version() const { return failed_version_; }
  const std::string& failed_reason() const { return failed_reason_; }
  uint64_t snapshots_rejected() const { return snapshots_rejected_; }
  uint64_t session() const { return session_; }
  bool connected() const { return connected_; }
  const tls::CertManager& certs() const { return *certs_; }

 private:
  // tls::CsrSigner: the CSR becomes a SendCsr action (or a failure, with no agent to sign).
  void RequestSigning(uint64_t request_id, const std::string& identity,
                      const std::string& csr_pem) override;
  // Sends held CSRs while fewer than kMaxOutstandingCsrs wait for an answer.
  void ReleaseHeldCsrs();
  void FailClosed(uint64_t version, const std::string& why);
  void UpdateTlsContexts();
  void ServePendingPods();
  Actions Take() { return std::exchange(out_, {}); }

  const Clock* const clock_;
  const PodSockets* const sockets_;
  // Declared before certs_: the manager calls back into RequestSigning, which writes out_.
  Actions out_;
  std::unique_ptr<tls::CertManager> certs_;
  bool connected_ = false;
  bool workers_started_ = false;
  uint64_t session_ = 0;  // counts agent sessions: an answer is for the session that asked
  std::map<std::string, std::shared_ptr<const Pod>> pods_;
  std::map<std::string, absl::Time> waiting_for_cert_;  // pod uid -> since
  uint64_t snapshot_version_ = 0;
  // The newest generation applied in this session: an older one arriving after it is stale.
  uint64_t session_version_ = 0;
  uint64_t failed_version_ = 0;  // newest generation that could not be applied; 0 if none
  std::string failed_reason_;
  uint64_t snapshots_rejected_ = 0;
  std::shared_ptr<const MeshSnapshot> snapshot_ = std::make_shared<const MeshSnapshot>();
  std::set<uint64_t> outstanding_csrs_;
  // CSRs beyond kMaxOutstandingCsrs wait here, in order, until answers come back.
  std::deque<action::SendCsr> held_csrs_;
  // Requests that could not be sent: failed at the next Tick, never re-entrantly.
  std::vector<std::pair<uint64_t, absl::Status>> failed_csrs_;
  std::string last_report_;  // key of the last certificate report sent this session
  std::vector<std::string> trust_bundle_;
  std::vector<std::string> crl_pems_;        // as accepted, for the TLS signature
  std::shared_ptr<const tls::CrlSet> crls_;  // null: no CRL in force
  std::string tls_signature_;                // what the current TLS contexts were built from
  std::shared_ptr<const TlsContexts> tls_;
};

}  // namespace ambit::tunnel
