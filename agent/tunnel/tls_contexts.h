#pragma once

#include <map>
#include <memory>
#include <string>

#include "agent/hbone/tls_context.h"

namespace ambit::tunnel {

// Why an HBONE session may take no new streams: the certificate it was established with is no
// longer one the peer accepts (or the peer's is no longer one we accept).
enum class DrainReason {
  kNone,
  kExpired,           // our certificate's notAfter passed
  kPeerExpired,       // the peer's certificate's notAfter passed
  kOutOfTrustDomain,  // the configured trust domain is no longer our identity's
  kNotTrusted,        // the trust bundle no longer covers our certificate
  kRemoved,           // the identity has no local pod any more
  kNoCertificate,     // no usable certificate for the identity (see the log for why)
  kUpgrade,           // this process is draining: a successor serves (a data-plane roll)
  kPeerNotTrusted,    // the peer's certificate is revoked or no longer verifies: closed at once
};
// The metric label: "expired", "peer_expired", ...
const char* DrainReasonName(DrainReason reason);

// The TLS contexts of every local identity that holds a valid certificate, built by the data
// plane's main thread whenever a certificate or the trust bundle changes, and shared read-only by
// the workers. An identity without a context gets no mTLS traffic (fail closed); `missing` says
// why, for the log line that refuses its connection, and `missing_reason` in one word, for the
// sessions established with the identity's previous context (see session_drain.h).
struct TlsContexts {
  struct Pair {
    std::shared_ptr<const hbone::TlsContext> client, server;
  };
  std::map<std::string, Pair> by_identity;
  std::map<std::string, std::string> missing;  // identity -> reason
  std::map<std::string, DrainReason> missing_reason;

  const Pair* Find(const std::string& identity) const {
    auto it = by_identity.find(identity);
    return it == by_identity.end() ? nullptr : &it->second;
  }
  std::string WhyMissing(const std::string& identity) const {
    auto it = missing.find(identity);
    return it == missing.end() ? "no certificate for this identity" : it->second;
  }
  // Records that `identity` has no context, and why.
  void SetMissing(const std::string& identity, DrainReason reason, std::string why) {
    missing[identity] = std::move(why);
    missing_reason[identity] = reason;
  }
};

}  // namespace ambit::tunnel
