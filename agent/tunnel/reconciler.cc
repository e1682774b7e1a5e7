#include "agent/tunnel/reconciler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/common/log.h"
#include "agent/hbone/tls_context.h"
#include "agent/identity/spiffe_id.h"
#include "agent/tls/trust_bundle.h"

namespace ambit::tunnel {
namespace {

constexpr const char* kComponent = "tunnel";

// The listeners a pod holds, in the order the heartbeat counts them.
std::vector<const UniqueFd*> Listeners(const Pod& pod) {
  return {&pod.outbound_v4, &pod.outbound_v6, &pod.plain_v4,
          &pod.plain_v6,    &pod.hbone_v4,    &pod.hbone_v6};
}

// Equal keys mean equal reports: the report is sent only when this changes.
std::string ReportKey(const std::vector<tls::CertStatus>& statuses) {
  std::string key = "report;";  // never empty, so the first report of a session always differs
  for (const auto& c : statuses) {
    absl::StrAppend(&key, c.identity.size(), ":", c.identity, tls::CertStateName(c.state), "|",
                    c.serial_hex, "|", c.issuer, "|", c.last_error.size(), ":", c.last_error,
                    c.refs, "|", absl::FormatTime(c.not_before), "|", absl::FormatTime(c.not_after),
                    ";");
  }
  return key;
}

}  // namespace

std::shared_ptr<const TlsContexts> BuildTlsContexts(
    const tls::CertManager& certs, const std::vector<tls::CertStatus>& statuses,
    const std::vector<std::string>& trust_bundle, const std::string& configured_domain,
    const Clock* clock, const std::vector<std::string>& aliases, const tls::CrlSet* crls) {
  auto contexts = std::make_shared<TlsContexts>();
  bssl::UniquePtr<X509_STORE> store;
  std::string store_error = "no trust bundle from the agent yet";
  if (!trust_bundle.empty()) {
    auto bundle = tls::TrustBundle::Create(trust_bundle);
    if (bundle.ok()) {
      auto s = (*bundle)->NewStore();
      // Revocation is part of trust: a store whose CRLs could not be added verifies nobody.
      if (s.ok() && crls != nullptr) {
        if (absl::Status added = crls->AddTo(s->get()); !added.ok()) s = added;
      }
      if (s.ok()) {
        store = std::move(*s);
      } else {
        store_error = std::string(s.status().message());
      }
    } else {
      store_error = std::string(bundle.status().message());
    }
  }
  std::string trust_domain =
      configured_domain.empty() ? std::string(identity::kDefaultTrustDomain) : configured_domain;
  for (const auto& c : statuses) {
    auto key = certs.Get(c.identity);
    if (key == nullptr) {
      contexts->SetMissing(
          c.identity,
          c.state == tls::CertState::kExpired ? DrainReason::kExpired : DrainReason::kNoCertificate,
          absl::StrCat("certificate ", tls::CertStateName(c.state),
                       c.last_error.empty() ? "" : ": " + c.last_error));
      continue;
    }
    if (!store) {
      contexts->SetMissing(c.identity, DrainReason::kNotTrusted, store_error);
      continue;
    }
    auto client = hbone::MakeClientContext(*key, store.get(), trust_domain, clock, aliases);
    auto server = hbone::MakeServerContext(*key, store.get(), trust_domain, clock, aliases);
    if (!client.ok() || !server.ok()) {
      // An identity outside the configured trust domain is the common case (the trust domain
      // changed); sessions established with it must learn that, not just "no certificate".
      auto id = identity::ParseSpiffeId(c.identity);
      DrainReason reason = id.ok() && id->trust_domain != trust_domain
                               ? DrainReason::kOutOfTrustDomain
                               : DrainReason::kNoCertificate;
      contexts->SetMissing(
          c.identity, reason,
          std::string((!client.ok() ? client.status() : server.status()).message()));
      AMBIT_LOG(kComponent, Error)
          << "TLS context for " << c.identity << ": " << contexts->missing[c.identity];
      continue;
    }
    contexts->by_identity[c.identity] = {std::move(*client), std::move(*server)};
  }
  return contexts;
}

Reconciler::Reconciler(const Clock* clock, const PodSockets* sockets,
                       tls::CertManagerOptions cert_options)
    : clock_(clock), sockets_(sockets) {
  tls::CsrSigner* signer = this;  // the base is private: only this class hands itself out
  certs_ = std::make_unique<tls::CertManager>(signer, clock, cert_options);
}

Actions Reconciler::Connected() {
  ++session_;
  connected_ = true;
  // A new agent may number its generations afresh; staleness is judged within one session.
  session_version_ = 0;
  last_report_.clear();  // the new agent gets a full certificate report
  out_.push_back(action::SendHello{pods_.size(), snapshot_version_});
  for (const auto& [uid, pod] : pods_) out_.push_back(action::SendHandBack{pod});
  return Take();
}

Actions Reconciler::Disconnected() {
  connected_ = false;
  // Answers to these can no longer arrive; let the certificate manager retry with back-off.
  for (uint64_t id : outstanding_csrs_) {
    failed_csrs_.emplace_back(id, absl::UnavailableError("agent went away before answering"));
  }
  outstanding_csrs_.clear();
  for (const auto& held : held_csrs_) {
    failed_csrs_.emplace_back(held.request_id,
                              absl::UnavailableError("agent went away before it was sent"));
  }
  held_csrs_.clear();
  return Take();
}

Actions Reconciler::WorkersStarted() {
  workers_started_ = true;
  for (const auto& [uid, pod] : pods_) {
    if (!waiting_for_cert_.count(uid)) out_.push_back(action::ServePod{pod});
  }
  out_.push_back(action::InstallSnapshot{snapshot_});
  out_.push_back(action::InstallTls{tls_});
  if (!failed_reason_.empty()) out_.push_back(action::SetFailClosed{failed_reason_});
  return Take();
}

Actions Reconciler::AddPod(std::shared_ptr<const Pod> pod) {
  auto previous = pods_.find(pod->uid);
  if (previous == pods_.end() || previous->second->spiffe_id != pod->spiffe_id) {
    if (!pod->spiffe_id.empty()) certs_->AddRef(pod->spiffe_id);
    if (previous != pods_.end() && !previous->second->spiffe_id.empty()) {
      certs_->Release(previous->second->spiffe_id);
    }
  }
  // Accepting waits until the pod's certificate is valid (see ServePendingPods): until then
  // connections wait in the listeners' backlogs instead of failing closed.
  waiting_for_cert_[pod->uid] = clock_->Now();
  AMBIT_LOG(kComponent, Info) << "serving pod " << pod->uid
                              << " netns_cookie=" << pod->netns_cookie;
  pods_[pod->uid] = std::move(pod);
  return Take();
}

Actions Reconciler::RemovePod(const std::string& uid) {
  waiting_for_cert_.erase(uid);
  std::shared_ptr<const Pod> pod;
  auto it = pods_.find(uid);
  if (it != pods_.end()) {
    pod = std::move(it->second);
    if (!pod->spiffe_id.empty()) certs_->Release(pod->spiffe_id);
    pods_.erase(it);
  }
  out_.push_back(action::RemovePod{uid, std::move(pod)});
  return Take();
}

Actions Reconciler::ApplySnapshot(uint64_t version,
                                  absl::StatusOr<std::shared_ptr<const MeshSnapshot>> mapped) {
  if (version < session_version_) {
    // Within one session the agent only counts up: an older generation is a replay, and applying
    // it would undo what the newer one changed. Nothing in force changes.
    ++snapshots_rejected_;
    out_.push_back(action::SendNack{
        version, absl::StrCat("configuration generation ", version, " is stale: generation ",
                              session_version_, " was applied after it")});
    return Take();
  }
  if (!mapped.ok()) {
    // Half a configuration is no configuration: a workload whose mTLS mode or identity cannot
    // be read would otherwise be served by a guess.
    ++snapshots_rejected_;
    std::string error(mapped.status().message());
    FailClosed(version, error);
    out_.push_back(action::SendNack{version, std::move(error)});
    return Take();
  }
  snapshot_version_ = version;
  session_version_ = version;
  snapshot_ = *std::move(mapped);
  for (const auto& error : snapshot_->authz_errors()) {
    AMBIT_LOG(kComponent, Error) << "snapshot " << snapshot_version_ << ": " << error;
  }
  out_.push_back(action::InstallSnapshot{snapshot_});
  if (failed_version_ != 0 && failed_version_ <= snapshot_version_) {
    AMBIT_LOG(kComponent, Warning) << "configuration generation " << snapshot_version_
                                   << " applied; accepting new connections again";
    failed_version_ = 0;
    failed_reason_.clear();
    out_.push_back(action::SetFailClosed{""});
  }
  out_.push_back(action::SendAck{snapshot_version_});
  return Take();
}

Actions Reconciler::SnapshotFailed(uint64_t version, const std::string& error) {
  FailClosed(version, absl::StrCat("the agent could not deliver it: ", error));
  return Take();
}

void Reconciler::FailClosed(uint64_t version, const std::string& why) {
  // Generation `version` exists but is not in force: new connections are refused until one at
  // least as new applies. Stale enforcement would let a DENY written since go unenforced and send
  // traffic for pods the old configuration does not know in plaintext.
  if (version <= snapshot_version_) return;  // a later generation is already in force
  failed_version_ = version;
  failed_reason_ = absl::StrCat("configuration generation ", version, " could not be applied (",
                                why, "); generation ", snapshot_version_,
                                " is stale, so new connections are refused");
  AMBIT_LOG(kComponent, Error) << "FAIL CLOSED: " << failed_reason_;
  out_.push_back(action::SetFailClosed{failed_reason_});
}

Actions Reconciler::CsrAnswered(uint64_t request_id,
                                absl::StatusOr<std::vector<std::string>> chain_pem) {
  if (!outstanding_csrs_.erase(request_id)) return Take();  // superseded
  certs_->OnSigned(request_id, std::move(chain_pem));
  ReleaseHeldCsrs();
  return Take();
}

void Reconciler::CsrNotSent(uint64_t request_id, absl::Status status) {
  outstanding_csrs_.erase(request_id);
  failed_csrs_.emplace_back(request_id, std::move(status));
}

void Reconciler::ReleaseHeldCsrs() {
  while (connected_ && !held_csrs_.empty() && outstanding_csrs_.size() < kMaxOutstandingCsrs) {
    outstanding_csrs_.insert(held_csrs_.front().request_id);
    out_.push_back(std::move(held_csrs_.front()));
    held_csrs_.pop_front();
  }
}

void Reconciler::RequestSigning(uint64_t request_id, const std::string& identity,
                                const std::string& csr_pem) {
  if (!connected_) {
    failed_csrs_.emplace_back(request_id,
                              absl::UnavailableError("no agent connected to sign the CSR"));
    return;
  }
  // Paced: a node whose pods all start at once (or all renew at once) would otherwise put every
  // CSR on the control channel in one burst, and ambitd would queue every answer at once while
  // its signer (4 at a time) works through them. The rest wait here, in order.
  // A newer CSR for an identity still held replaces it (the manager gave up on the older one).
  std::erase_if(held_csrs_, [&](const action::SendCsr& h) { return h.identity == identity; });
  held_csrs_.push_back(action::SendCsr{request_id, identity, csr_pem});
  ReleaseHeldCsrs();
}

Actions Reconciler::TrustBundle(std::vector<std::string> root_pems,
                                std::vector<std::string> crl_pems) {
  trust_bundle_ = std::move(root_pems);
  AMBIT_LOG(kComponent, Info) << "trust bundle: " << trust_bundle_.size() << " root(s)";
  if (crl_pems.empty()) {
    if (crls_ != nullptr) {
      AMBIT_LOG(kComponent, Info) << "CRLs: none in force any more";
    }
    crls_ = nullptr;
    crl_pems_.clear();
    return Take();
  }
  if (crl_pems == crl_pems_) return Take();
  absl::StatusOr<std::unique_ptr<tls::TrustBundle>> bundle =
      tls::TrustBundle::Create(trust_bundle_);
  absl::StatusOr<std::shared_ptr<const tls::CrlSet>> parsed =
      bundle.ok() ? tls::CrlSet::Parse(crl_pems, **bundle)
                  : absl::StatusOr<std::shared_ptr<const tls::CrlSet>>(bundle.status());
  if (!parsed.ok()) {
    AMBIT_LOG(kComponent, Error) << "CRLs from the agent refused: " << parsed.status().message()
                                 << (crls_ != nullptr ? "; the last good ones stay in force"
                                                      : "; no CRL in force");
    return Take();
  }
  crls_ = *std::move(parsed);
  crl_pems_ = std::move(crl_pems);
  size_t revoked = 0;
  for (const tls::CrlInfo& info : crls_->infos()) revoked += info.revoked;
  AMBIT_LOG(kComponent, Info) << "CRLs: " << crls_->size() << " in force, " << revoked
                              << " revoked certificate(s)";
  return Take();
}

Actions Reconciler::Ping(uint64_t seq) {
  if (!workers_started_) {  // nothing to ask yet (no maps from the agent)
    return HeartbeatAnswered(seq, session_, {});
  }
  out_.push_back(action::AskWorkers{seq, session_});
  return Take();
}

Actions Reconciler::HeartbeatAnswered(
    uint64_t seq, uint64_t session,
    const std::vector<std::unordered_map<std::string, uint32_t>>& watched) {
  if (session != session_ || !connected_) return Take();
  action::SendPong pong;
  pong.seq = seq;
  pong.workers = static_cast<uint32_t>(watched.size());
  for (const auto& [uid, pod] : pods_) {
    action::PodHealth health;
    health.uid = uid;
    uint32_t held = 0;
    for (const UniqueFd* fd : Listeners(*pod)) {
      if (!*fd) continue;
      ++held;
      if (sockets_->Listening(fd->get())) ++health.listening;
    }
    for (const auto& w : watched) {
      auto it = w.find(uid);
      if (it != w.end() && it->second >= held) ++health.workers_accepting;
    }
    health.waiting_for_certificate = waiting_for_cert_.count(uid) > 0;
    pong.pods.push_back(std::move(health));
  }
  out_.push_back(std::move(pong));
  return Take();
}

void Reconciler::UpdateTlsContexts() {
  std::string signature =
      absl::StrCat(snapshot_->trust_domain().size(), ":", snapshot_->trust_domain(), "|",
                   absl::StrJoin(snapshot_->trust_domain_aliases(), ","), "|",
                   TrustBundleKey(trust_bundle_), "|", TrustBundleKey(crl_pems_), "|");
  auto statuses = certs_->Statuses();
  for (const auto& c : statuses) {
    absl::StrAppend(&signature, c.identity, "=", c.serial_hex, "/", tls::CertStateName(c.state),
                    ";");
  }
  if (signature == tls_signature_) return;
  tls_signature_ = std::move(signature);
  tls_ = BuildTlsContexts(*certs_, statuses, trust_bundle_, snapshot_->trust_domain(), clock_,
                          snapshot_->trust_domain_aliases(), crls_.get());
  out_.push_back(action::InstallTls{tls_});
}

void Reconciler::ServePendingPods() {
  // Nothing is served before the configuration: without it every policy would read as "none
  // configured" and plaintext to a STRICT pod would be delivered (fail open).
  if (!workers_started_ || snapshot_version_ == 0) return;
  for (auto it = waiting_for_cert_.begin(); it != waiting_for_cert_.end();) {
    auto pod = pods_.find(it->first);
    if (pod == pods_.end()) {
      it = waiting_for_cert_.erase(it);
      continue;
    }
    const auto& p = pod->second;
    const auto& ips = p->workload.ips;
    // The snapshot must know the pod as one of this node's: its policies (mTLS mode included)
    // are looked up by its address.
    const mesh::Workload* w = ips.empty() ? nullptr : snapshot_->WorkloadByIp(ips.front());
    bool known = ips.empty() || (w != nullptr && w->mtls.has_value());
    if (!known) {
      ++it;
      continue;
    }
    bool ready = p->spiffe_id.empty() || certs_->Get(p->spiffe_id) != nullptr;
    // Past the grace period the pod is served anyway: passthrough traffic must not wait on a
    // CA that is down, and mTLS connections then fail closed with the reason logged.
    bool overdue = CertGraceOver(it->second, clock_->Now());
    if (!ready && !overdue) {
      ++it;
      continue;
    }
    if (!ready) {
      AMBIT_LOG(kComponent, Warning)
          << "pod " << p->uid << " still has no certificate for " << p->spiffe_id << " after "
          << kCertGrace << "; serving it (mTLS connections are refused)";
    }
    out_.push_back(action::ServePod{p});
    it = waiting_for_cert_.erase(it);
  }
}

Actions Reconciler::Tick() {
  while (!failed_csrs_.empty()) {
    auto failed = std::exchange(failed_csrs_, {});
    for (auto& [id, status] : failed) certs_->OnSigned(id, status);
  }
  ReleaseHeldCsrs();  // room left by CSRs that could not be sent
  certs_->Tick();
  UpdateTlsContexts();
  ServePendingPods();
  if (connected_) {
    auto statuses = certs_->Statuses();
    std::string key = ReportKey(statuses);
    // An empty report is still a report: the first one of a session always goes.
    if (key != last_report_) {
      last_report_ = std::move(key);
      out_.push_back(action::SendCertReport{std::move(statuses)});
    }
  }
  return Take();
}

absl::Time Reconciler::NextDeadline() const {
  absl::Time next = certs_->NextDeadline();
  for (const auto& [uid, since] : waiting_for_cert_) next = std::min(next, since + kCertGrace);
  return next;
}

}  // namespace ambit::tunnel
