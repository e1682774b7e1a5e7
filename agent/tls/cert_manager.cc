#include "agent/tls/cert_manager.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/common/formats.h"
#include "agent/common/log.h"
#include "agent/tls/keys.h"

namespace ambit::tls {
namespace {

constexpr char kLog[] = "tls";

}  // namespace

const char* CertStateName(CertState state) {
  switch (state) {
    case CertState::kPending:
      return "pending";
    case CertState::kValid:
      return "valid";
    case CertState::kRenewing:
      return "renewing";
    case CertState::kExpired:
      return "expired";
    case CertState::kFailed:
      return "failed";
  }
  return "unknown";
}

CertManager::CertManager(CsrSigner* signer, const Clock* clock, CertManagerOptions options)
    : signer_(signer),
      clock_(clock),
      options_(options),
      rng_(options.seed != 0 ? options.seed : std::random_device{}()) {}

double CertManager::JitterFraction() {
  const double half = std::max(options_.jitter, 0.0) / 2;
  if (half == 0) return 0;
  return std::uniform_real_distribution<double>(-half, half)(rng_);
}

absl::Duration CertManager::Jittered(absl::Duration d) {
  return std::min(d * (1 + JitterFraction()), options_.max_backoff);
}

bool CertManager::HasUsableCert(const Entry& entry, absl::Time now) const {
  return entry.current != nullptr && entry.current->not_before <= now &&
         now < entry.current->not_after;
}

void CertManager::AddRef(const std::string& identity) {
  auto [it, inserted] = entries_.try_emplace(identity);
  ++it->second.refs;
  if (!inserted) return;
  it->second.backoff = options_.initial_backoff;
  AMBIT_LOG(kLog, Info) << "requesting a certificate for " << identity;
  StartRequest(identity);
}

void CertManager::Release(const std::string& identity) {
  auto it = entries_.find(identity);
  if (it == entries_.end()) {
    AMBIT_LOG(kLog, Warning) << "release of " << identity << ", which has no local pods";
    return;
  }
  if (--it->second.refs > 0) return;
  CancelRequest(it->second);
  entries_.erase(it);
  AMBIT_LOG(kLog, Info) << "dropped key and certificate of " << identity << ": no local pods left";
}

void CertManager::CancelRequest(Entry& entry) {
  if (entry.request_id == 0) return;
  requests_.erase(entry.request_id);
  entry.request_id = 0;
  entry.request_key.reset();
  entry.request_deadline = absl::InfiniteFuture();
}

void CertManager::StartRequest(const std::string& identity) {
  auto it = entries_.find(identity);
  if (it == entries_.end()) return;
  Entry& entry = it->second;
  const absl::Time now = clock_->Now();
  CancelRequest(entry);
  entry.renew_time = absl::InfiniteFuture();
  entry.retry_time = absl::InfiniteFuture();

  // A new key for every request: a renewal never reuses the key of the certificate it replaces.
  auto key = GenerateP256Key();
  if (!key.ok()) return Fail(entry, std::string(key.status().message()), now);
  auto csr = BuildCsrPem(key->get(), identity);
  if (!csr.ok()) return Fail(entry, std::string(csr.status().message()), now);

  const uint64_t id = next_request_id_++;
  entry.request_id = id;
  entry.request_key = *std::move(key);
  entry.request_deadline = now + options_.request_timeout;
  requests_.emplace(id, identity);
  // Last: the signer may answer synchronously, through OnSigned, and `entry` with it.
  signer_->RequestSigning(id, identity, *csr);
}

void CertManager::Fail(Entry& entry, const std::string& error, absl::Time now) {
  entry.last_error = error;
  entry.retry_time = now + Jittered(entry.backoff);
  entry.backoff = std::min(entry.backoff * 2, options_.max_backoff);
  if (entry.current == nullptr) {
    entry.state = CertState::kFailed;
  } else {
    entry.state = now < entry.current->not_after ? CertState::kRenewing : CertState::kExpired;
  }
  AMBIT_LOG(kLog, Warning) << "certificate request failed (" << CertStateName(entry.state)
                           << ", retrying in " << absl::FormatDuration(entry.retry_time - now)
                           << "): " << error;
}

void CertManager::OnSigned(uint64_t request_id,
                           absl::StatusOr<std::vector<std::string>> chain_pem) {
  auto req = requests_.find(request_id);
  if (req == requests_.end()) {
    AMBIT_LOG(kLog, Debug) << "ignoring the answer to request " << request_id
                           << ": superseded, timed out, or its identity has no local pods";
    return;
  }
  const std::string identity = std::move(req->second);
  requests_.erase(req);
  auto it = entries_.find(identity);
  if (it == entries_.end() || it->second.request_id != request_id) return;
  Entry& entry = it->second;
  bssl::UniquePtr<EVP_PKEY> key = std::move(entry.request_key);
  entry.request_id = 0;
  entry.request_deadline = absl::InfiniteFuture();
  const absl::Time now = clock_->Now();

  if (!chain_pem.ok()) {
    return Fail(entry, absl::StrCat("signer refused the CSR: ", chain_pem.status().ToString()),
                now);
  }
  auto chain = ParsePemChain(*chain_pem);
  if (!chain.ok()) {
    return Fail(entry, absl::StrCat("bad chain from signer: ", chain.status().message()), now);
  }
  if (absl::Status s = CheckLeaf(*chain, key.get(), identity, now); !s.ok()) {
    return Fail(entry, absl::StrCat("rejected chain from signer: ", s.message()), now);
  }
  auto info = DescribeCert(chain->front().get());
  if (!info.ok()) {
    return Fail(entry, absl::StrCat("bad chain from signer: ", info.status().message()), now);
  }

  auto certified = std::make_shared<CertifiedKey>();
  certified->identity = identity;
  certified->key = std::move(key);
  certified->chain = *std::move(chain);
  certified->not_before = info->not_before;
  certified->not_after = info->not_after;
  certified->serial_hex = info->serial_hex;
  certified->issuer = info->issuer;
  entry.current = std::move(certified);
  entry.state = CertState::kValid;
  entry.last_error.clear();
  entry.backoff = options_.initial_backoff;
  entry.retry_time = absl::InfiniteFuture();

  const absl::Time usable_from = std::max(info->not_before, now);
  const absl::Duration usable = info->not_after - usable_from;
  const double fraction = std::clamp(options_.renew_at + JitterFraction(), 0.0, 1.0);
  entry.renew_time = std::max(usable_from + usable * fraction, now + options_.min_renew_delay);
  AMBIT_LOG(kLog, Info) << "certificate for " << identity << " serial " << info->serial_hex
                        << " valid until " << FormatTimestamp(info->not_after) << ", renewing at "
                        << FormatTimestamp(entry.renew_time);
}

void CertManager::Tick() {
  const absl::Time now = clock_->Now();
  std::vector<std::string> due;
  for (auto& [identity, entry] : entries_) {
    if (entry.request_id != 0 && now >= entry.request_deadline) {
      CancelRequest(entry);
      Fail(entry,
           absl::StrCat("no answer from the signer within ",
                        absl::FormatDuration(options_.request_timeout)),
           now);
    }
    const bool request_due =
        entry.request_id == 0 && (now >= entry.renew_time || now >= entry.retry_time);
    if (entry.current != nullptr && now >= entry.current->not_after) {
      if (entry.state != CertState::kExpired) {
        AMBIT_LOG(kLog, Warning) << "certificate for " << identity << " serial "
                                 << entry.current->serial_hex << " expired; no mTLS until a "
                                 << "new one arrives";
      }
      entry.state = CertState::kExpired;
    } else if (request_due && entry.state == CertState::kValid) {
      entry.state = CertState::kRenewing;
    }
    if (request_due) due.push_back(identity);
  }
  // Outside the loop: a synchronous signer re-enters OnSigned.
  for (const std::string& identity : due) StartRequest(identity);
}

absl::Time CertManager::NextDeadline() const {
  absl::Time next = absl::InfiniteFuture();
  for (const auto& [identity, entry] : entries_) {
    if (entry.request_id != 0) {
      next = std::min(next, entry.request_deadline);
    } else {
      next = std::min({next, entry.renew_time, entry.retry_time});
    }
    if (entry.current != nullptr && entry.state != CertState::kExpired) {
      next = std::min(next, entry.current->not_after);
    }
  }
  return next;
}

std::shared_ptr<const CertifiedKey> CertManager::Get(const std::string& identity) const {
  auto it = entries_.find(identity);
  if (it == entries_.end() || !HasUsableCert(it->second, clock_->Now())) return nullptr;
  return it->second.current;
}

std::vector<CertStatus> CertManager::Statuses() const {
  std::vector<CertStatus> out;
  out.reserve(entries_.size());
  for (const auto& [identity, entry] : entries_) {
    CertStatus status;
    status.identity = identity;
    status.state = entry.state;
    status.last_error = entry.last_error;
    status.refs = entry.refs;
    if (entry.current != nullptr) {
      status.serial_hex = entry.current->serial_hex;
      status.issuer = entry.current->issuer;
      status.not_before = entry.current->not_before;
      status.not_after = entry.current->not_after;
      for (const auto& cert : entry.current->chain) status.chain_pem += CertToPem(cert.get());
    }
    out.push_back(std::move(status));
  }
  return out;
}

}  // namespace ambit::tls
