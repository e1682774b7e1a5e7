#pragma once

// When an HBONE session must stop taking new streams because of the certificates it was
// established with. A TLS session proves identities once, at the handshake, but a pooled HBONE
// connection lives for hours: a certificate that expired since, or that peers would no longer
// accept (the trust domain or the trust bundle changed, the identity left the node), must not
// keep carrying new streams. Such a session drains: open streams finish, new ones go to a fresh
// handshake, which fails closed when no valid certificate exists.
//
// Pure functions of their arguments (the clock is an argument), so tests drive time by hand.
// Thread-safe.

#include <algorithm>
#include <string>

#include "absl/time/time.h"
#include "agent/hbone/tls_context.h"
#include "agent/tunnel/tls_contexts.h"

namespace ambit::tunnel {

struct DrainDecision {
  DrainReason reason = DrainReason::kNone;
  std::string detail;  // one line for the log: what is wrong with which certificate
  bool drain() const { return reason != DrainReason::kNone; }
};

// Whether `local`, the context a session was established with, is still one peers accept, given
// the contexts now in force (`current`; null before the first certificate): time is not looked
// at except to verify the chain against a changed trust bundle. A renewed certificate with the
// same trust domain and bundle is no reason: the old one stays good until its notAfter.
DrainDecision DecideContextDrain(const hbone::TlsContext& local, const TlsContexts* current,
                                 absl::Time now);

// The context now in force for `local`'s identity and role when it is another one than `local`
// (renewed certificate, changed trust bundle, CRLs or trust-domain aliases); null when `local`
// is still current or the identity has none. A session established with `local` has its peer
// checked again against it (TlsContext::AcceptsPeerOf): a peer revoked since the handshake must
// not keep a session open.
const hbone::TlsContext* ReplacementContext(const hbone::TlsContext& local,
                                            const TlsContexts* current);

// The whole decision for one session: our certificate's notAfter, the peer's
// (`peer_not_after`, absl::InfiniteFuture() if unknown), then DecideContextDrain.
DrainDecision DecideDrain(const hbone::TlsContext& local, absl::Time peer_not_after,
                          const TlsContexts* current, absl::Time now);

// The first time at which DecideDrain changes its answer by time alone.
inline absl::Time CredentialDeadline(const hbone::TlsContext& local, absl::Time peer_not_after) {
  return std::min(local.not_after(), peer_not_after);
}

}  // namespace ambit::tunnel
