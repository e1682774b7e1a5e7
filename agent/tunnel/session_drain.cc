#include "agent/tunnel/session_drain.h"

#include "absl/strings/str_cat.h"
#include "agent/common/formats.h"

namespace ambit::tunnel {

const char* DrainReasonName(DrainReason reason) {
  switch (reason) {
    case DrainReason::kNone:
      return "none";
    case DrainReason::kExpired:
      return "expired";
    case DrainReason::kPeerExpired:
      return "peer_expired";
    case DrainReason::kOutOfTrustDomain:
      return "out_of_trust_domain";
    case DrainReason::kNotTrusted:
      return "not_trusted";
    case DrainReason::kRemoved:
      return "removed";
    case DrainReason::kUpgrade:
      return "upgrade";
    case DrainReason::kNoCertificate:
      return "no_certificate";
    case DrainReason::kPeerNotTrusted:
      return "peer_not_trusted";
  }
  return "?";
}

DrainDecision DecideContextDrain(const hbone::TlsContext& local, const TlsContexts* current,
                                 absl::Time now) {
  if (current == nullptr) return {};
  const std::string& identity = local.identity();
  const TlsContexts::Pair* pair = current->Find(identity);
  if (pair == nullptr) {
    auto it = current->missing_reason.find(identity);
    if (it == current->missing_reason.end()) {
      return {DrainReason::kRemoved,
              absl::StrCat("identity ", identity, " has no local workload any more")};
    }
    return {
        it->second == DrainReason::kNone ? DrainReason::kNoCertificate : it->second,
        absl::StrCat("certificate of ", identity, " replaced: ", current->WhyMissing(identity))};
  }
  const auto& now_ctx =
      local.role() == hbone::TlsContext::Role::kClient ? pair->client : pair->server;
  if (now_ctx == nullptr) {
    return {DrainReason::kNoCertificate, absl::StrCat("no TLS context for ", identity)};
  }
  if (now_ctx.get() == &local) return {};
  if (now_ctx->trust_domain() != local.trust_domain()) {
    return {DrainReason::kOutOfTrustDomain,
            absl::StrCat("identity ", identity, " is out of trust domain ", now_ctx->trust_domain(),
                         " (established in ", local.trust_domain(), ")")};
  }
  if (absl::Status covered = local.CoveredBy(*now_ctx, now); !covered.ok()) {
    return {DrainReason::kNotTrusted, std::string(covered.message())};
  }
  return {};
}

const hbone::TlsContext* ReplacementContext(const hbone::TlsContext& local,
                                            const TlsContexts* current) {
  if (current == nullptr) return nullptr;
  const TlsContexts::Pair* pair = current->Find(local.identity());
  if (pair == nullptr) return nullptr;
  const auto& now_ctx =
      local.role() == hbone::TlsContext::Role::kClient ? pair->client : pair->server;
  return now_ctx == nullptr || now_ctx.get() == &local ? nullptr : now_ctx.get();
}

DrainDecision DecideDrain(const hbone::TlsContext& local, absl::Time peer_not_after,
                          const TlsContexts* current, absl::Time now) {
  if (now >= local.not_after()) {
    return {DrainReason::kExpired, absl::StrCat("certificate of ", local.identity(), " expired at ",
                                                FormatTimestamp(local.not_after()))};
  }
  if (now >= peer_not_after) {
    return {DrainReason::kPeerExpired,
            absl::StrCat("peer certificate expired at ", FormatTimestamp(peer_not_after))};
  }
  return DecideContextDrain(local, current, now);
}

}  // namespace ambit::tunnel
