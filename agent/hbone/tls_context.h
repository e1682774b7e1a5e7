#pragma once

// TLS for HBONE (docs/ARCHITECTURE.md#hbone), on BoringSSL: TLS 1.3 only, ALPN "h2" required both
// ways, both sides present X.509 SVIDs, peers verified against the trust bundle and checked to hold
// a SPIFFE ID of our trust domain (the client also checks it is the exact identity it expects).
//
// Cipher suites. BoringSSL (this Debian build: API version 17) offers no way to configure the TLS
// 1.3 suites: SSL_CTX_set_strict_cipher_list only affects TLS 1.2, and neither
// SSL_set_compliance_policy nor SSL_CTX_set_aes_hw_override_for_testing exists in this version.
// Its fixed TLS 1.3 list is AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305, ordered by AES hardware
// support. So the policy is enforced by refusing, not by configuring:
//   - server: a ClientHello offering neither TLS_AES_128_GCM_SHA256 nor TLS_AES_256_GCM_SHA384 is
//     rejected before any key exchange; if the negotiated suite is still ChaCha20 (a client that
//     lists it first on a machine without AES-NI), the ALPN callback refuses h2 with a
//     no_application_protocol alert (the check RFC 7540 section 9.2.2 puts in the same place);
//   - client: the certificate verifier refuses the server when the suite it chose is not AES-GCM.
// Against ztunnel (rustls: AES-GCM suites only) and on hardware with AES, nothing is ever refused.
// Before the suites, the server checks the version: a ClientHello offering nothing above TLS 1.2
// lacks the TLS 1.3 suites too, but what it must be told is that TLS 1.3 is required
// (protocol_version alert, PeerCheckFailure::kVersion).
//
// Server certificate selection. The server presents the SVID of the local pod owning the
// destination IP, so there is one server TlsContext per local identity (a "factory keyed by
// identity"): the tunnel looks up getsockname() of the accepted connection -> pod -> identity ->
// context, and rebuilds a context when CertManager hands out a renewed CertifiedKey. Contexts are
// immutable and may be shared by every worker; live connections keep the context they started
// with (SSL holds a reference).
//
// Thread-safety: a TlsContext is immutable and thread-safe. The free functions are thread-safe.

#include <openssl/base.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/tls/cert_manager.h"

namespace ambit::hbone {

// Why a handshake failed our checks, for per-kind misbehaviour counters. kNone: the failure (if
// any) came from TLS itself (bad record, unsupported version, alert from the peer, ...).
enum class PeerCheckFailure {
  kNone,
  kNoClientCert,      // server: the client sent no certificate
  kUntrusted,         // the chain does not verify against the trust bundle
  kBadIdentity,       // no / several URI SANs, not a SPIFFE ID, a CA certificate as leaf
  kWrongTrustDomain,  // a SPIFFE ID of another trust domain
  kIdentityMismatch,  // client: not the identity we expected for this destination
  kNoAlpn,            // the peer did not offer / select "h2"
  kCipher,            // the negotiated suite is not AES-GCM
  kVersion,           // server: the client offers no TLS 1.3 (counted as a TLS failure)
  kRevoked,           // a certificate of the chain is revoked by a CRL of the trust bundle
};
const char* PeerCheckFailureName(PeerCheckFailure failure);

class TlsContext {
 public:
  enum class Role { kClient, kServer };

  // `svid` is the certificate and key to present (its identity must be a SPIFFE ID of
  // `trust_domain`); `roots` (a reference is taken; the store is not modified) verifies peers,
  // at the time `clock` (which must outlive the context) reads. Peers must be in `trust_domain`
  // or one of `trust_domain_aliases` (MeshConfig trustDomainAliases); a client also takes the
  // identity it expects in any of those trust domains (same path), as during a migration.
  static absl::StatusOr<std::shared_ptr<const TlsContext>> Create(
      Role role, const tls::CertifiedKey& svid, X509_STORE* roots, std::string trust_domain,
      const Clock* clock = &RealClock::Get(), std::vector<std::string> trust_domain_aliases = {});

  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  Role role() const { return role_; }
  // Our own SPIFFE ID, as presented in the SVID.
  const std::string& identity() const { return identity_; }
  const std::string& trust_domain() const { return trust_domain_; }
  SSL_CTX* ssl_ctx() const { return ctx_.get(); }

  // When our certificate expires: a session using this context takes no new streams after it.
  absl::Time not_after() const { return not_after_; }
  // OK if our certificate chain still verifies against `other`'s trust bundle at `now`: a session
  // made with this context stays acceptable to peers after the bundle changed. Says why not.
  absl::Status CoveredBy(const TlsContext& other, absl::Time now) const;
  // OK if the peer that finished a handshake on `ssl` (made by any TlsContext) would still be
  // accepted by this context at `now`: its chain verifies against this context's trust bundle,
  // CRLs included, and its SPIFFE ID is in a trust domain of ours. For sessions established
  // before the bundle, its CRLs or the trust-domain aliases changed. Says why not; `revoked` is
  // set when a certificate of the chain is listed in a CRL.
  absl::Status AcceptsPeerOf(const SSL* ssl, absl::Time now, bool* revoked = nullptr) const;

  // An SSL for one connection on `fd`, in connect (client) or accept (server) state.
  // `expected_peer` (client: required) is the SPIFFE ID the server must present; a server
  // accepts any identity of the trust domain and ignores it.
  absl::StatusOr<bssl::UniquePtr<SSL>> NewSsl(int fd, const std::string& expected_peer) const;

 private:
  TlsContext(Role role, bssl::UniquePtr<SSL_CTX> ctx, std::string identity,
             std::string trust_domain, absl::Time not_after, bssl::UniquePtr<X509> leaf,
             bssl::UniquePtr<STACK_OF(X509)> intermediates)
      : role_(role),
        ctx_(std::move(ctx)),
        identity_(std::move(identity)),
        trust_domain_(std::move(trust_domain)),
        not_after_(not_after),
        leaf_(std::move(leaf)),
        intermediates_(std::move(intermediates)) {}

  const Role role_;
  bssl::UniquePtr<SSL_CTX> ctx_;
  const std::string identity_;
  const std::string trust_domain_;
  const absl::Time not_after_;
  const bssl::UniquePtr<X509> leaf_;
  const bssl::UniquePtr<STACK_OF(X509)> intermediates_;
};

// TlsContext::Create for each role.
absl::StatusOr<std::shared_ptr<const TlsContext>> MakeServerContext(
    const tls::CertifiedKey& svid, X509_STORE* roots, std::string trust_domain,
    const Clock* clock = &RealClock::Get(), std::vector<std::string> trust_domain_aliases = {});
absl::StatusOr<std::shared_ptr<const TlsContext>> MakeClientContext(
    const tls::CertifiedKey& svid, X509_STORE* roots, std::string trust_domain,
    const Clock* clock = &RealClock::Get(), std::vector<std::string> trust_domain_aliases = {});

// The SPIFFE ID of the verified peer of a finished handshake on an SSL from a TlsContext: exactly
// one URI SAN in the leaf, a valid SPIFFE ID, in our trust domain. Errors name both identities.
absl::StatusOr<std::string> PeerSpiffeId(const SSL* ssl);

// After a failed handshake: which of our checks refused the peer, and the message saying why
// ("" if none did). A missing client certificate is read from the error queue, so call these
// before clearing it.
PeerCheckFailure PeerCheckFailureOf(const SSL* ssl);
std::string PeerCheckMessage(const SSL* ssl);

}  // namespace ambit::hbone
