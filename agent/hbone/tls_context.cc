#include "agent/hbone/tls_context.h"

#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/tls1.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/common/status.h"
#include "agent/identity/spiffe_id.h"
#include "agent/tls/crl.h"
#include "agent/tls/keys.h"

namespace ambit::hbone {
namespace {

constexpr uint8_t kAlpnH2[] = {2, 'h', '2'};
constexpr uint16_t kTlsAes128GcmSha256 = 0x1301;
constexpr uint16_t kTlsAes256GcmSha384 = 0x1302;

// Per SSL_CTX: what the callbacks need to know about the context, owned by the SSL_CTX (freed
// with it), so an SSL outliving its TlsContext object still finds it.
// Peer chains whose signatures already verified against this context's trust store, keyed by
// the SHA-256 of the DER of every certificate the peer sent, with the time the first certificate
// of the verified chain (root included) expires. A peer that reconnects with the same SVID
// (every pooled connection a workload opens, every reconnect) skips one ECDSA verification of its
// chain, the most expensive step of a server's full handshake with Debian's BoringSSL; it still
// proves its key with CertificateVerify, and its leaf still goes through every identity check.
// A trust-bundle change builds a new context, and with it an empty cache. Bounded; thread-safe
// (the contexts are shared by the workers).
class VerifiedChains {
 public:
  static constexpr size_t kMaxEntries = 4096;
  bool Contains(const std::string& key, absl::Time now) const {
    absl::MutexLock lock(&mu_);
    auto it = chains_.find(key);
    return it != chains_.end() && it->second.first <= now && now < it->second.second;
  }
  void Add(std::string key, absl::Time not_before, absl::Time not_after) {
    absl::MutexLock lock(&mu_);
    if (chains_.size() >= kMaxEntries) chains_.clear();  // churn of identities: start over
    chains_[std::move(key)] = {not_before, not_after};
  }

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::pair<absl::Time, absl::Time>> chains_ ABSL_GUARDED_BY(mu_);
};

struct CtxState {
  TlsContext::Role role;
  std::string identity;
  std::string trust_domain;
  // MeshConfig trustDomainAliases: peers of these trust domains are accepted as ours.
  std::vector<std::string> trust_domain_aliases;
  const Clock* clock;  // peers' chains are verified at its time
  mutable VerifiedChains verified;
};

// Per SSL: the identity a client expects, and what our callbacks decided.
struct ConnState {
  std::string expected_peer;
  PeerCheckFailure failure = PeerCheckFailure::kNone;
  std::string message;
};

void FreeCtxState(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<CtxState*>(ptr);
}
void FreeConnState(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<ConnState*>(ptr);
}

int CtxIndex() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, FreeCtxState);
  return index;
}
int ConnIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, FreeConnState);
  return index;
}

const CtxState* GetCtxState(const SSL* ssl) {
  return static_cast<const CtxState*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), CtxIndex()));
}
ConnState* GetConnState(const SSL* ssl) {
  return static_cast<ConnState*>(SSL_get_ex_data(ssl, ConnIndex()));
}

// Records the first failure only: it is the cause, later ones are consequences.
void Refuse(const SSL* ssl, PeerCheckFailure failure, std::string message) {
  ConnState* state = GetConnState(ssl);
  if (state == nullptr || state->failure != PeerCheckFailure::kNone) return;
  state->failure = failure;
  state->message = std::move(message);
}

bool AllowedCipher(const SSL_CIPHER* cipher) {
  if (cipher == nullptr) return false;
  uint16_t id = SSL_CIPHER_get_protocol_id(cipher);
  return id == kTlsAes128GcmSha256 || id == kTlsAes256GcmSha384;
}

const SSL_CIPHER* NegotiatedCipher(const SSL* ssl) {
  const SSL_CIPHER* cipher = SSL_get_pending_cipher(ssl);
  return cipher != nullptr ? cipher : SSL_get_current_cipher(ssl);
}

bool IsOurTrustDomain(const CtxState& ours, absl::string_view trust_domain) {
  return trust_domain == ours.trust_domain ||
         std::find(ours.trust_domain_aliases.begin(), ours.trust_domain_aliases.end(),
                   trust_domain) != ours.trust_domain_aliases.end();
}

// Whether the server's `got` is the `expected` identity. During a trust-domain migration the
// server may hold its identity in another trust domain of the bundle than the one we computed
// (our trustDomain): the same path in a trust domain of ours is the same workload, as Istio
// treats the aliases.
bool IsExpectedPeer(const CtxState& ours, absl::string_view expected, absl::string_view got) {
  if (expected == got) return true;
  if (ours.trust_domain_aliases.empty()) return false;
  absl::StatusOr<identity::SpiffeId> want = identity::ParseSpiffeId(expected);
  absl::StatusOr<identity::SpiffeId> have = identity::ParseSpiffeId(got);
  return want.ok() && have.ok() && want->path == have->path &&
         IsOurTrustDomain(ours, want->trust_domain) && IsOurTrustDomain(ours, have->trust_domain);
}

// The SPIFFE ID of a peer leaf whose chain has been verified, checked against our context.
absl::StatusOr<std::string> LeafIdentity(X509* leaf, const CtxState& ours,
                                         PeerCheckFailure* failure) {
  *failure = PeerCheckFailure::kBadIdentity;
  absl::StatusOr<tls::RequestedNames> names = tls::CertSubjectAltNames(leaf);
  if (!names.ok()) {
    return absl::PermissionDeniedError(
        absl::StrCat("peer certificate has no readable subjectAltName (we are ", ours.identity,
                     "): ", names.status().message()));
  }
  if (names->uris.size() != 1) {
    return absl::PermissionDeniedError(absl::StrCat(
        "peer certificate has ", names->uris.size(),
        " URI subjectAltNames; an X.509 SVID has exactly one (we are ", ours.identity, ")"));
  }
  const std::string& uri = names->uris[0];
  absl::StatusOr<identity::SpiffeId> id = identity::ParseSpiffeId(uri);
  if (!id.ok()) {
    return absl::PermissionDeniedError(absl::StrCat("peer URI SAN \"", uri,
                                                    "\" is not a SPIFFE ID (we are ", ours.identity,
                                                    "): ", id.status().message()));
  }
  if (X509_check_ca(leaf) != 0) {
    return absl::PermissionDeniedError(absl::StrCat(
        "peer ", uri, " presented a CA certificate as its leaf (we are ", ours.identity, ")"));
  }
  if (!IsOurTrustDomain(ours, id->trust_domain)) {
    *failure = PeerCheckFailure::kWrongTrustDomain;
    return absl::PermissionDeniedError(absl::StrCat("peer ", uri, " is in trust domain \"",
                                                    id->trust_domain, "\", not ours (we are ",
                                                    ours.identity, ")"));
  }
  *failure = PeerCheckFailure::kNone;
  return uri;
}

int CheckLeaf(SSL* ssl, const CtxState& ours, const ConnState& conn, X509* leaf,
              X509_STORE_CTX* store_ctx);

// Runs for every certificate of the peer's chain, root first, leaf (depth 0) last.
int VerifyPeer(int ok, X509_STORE_CTX* store_ctx) {
  auto* ssl = static_cast<SSL*>(
      X509_STORE_CTX_get_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
  if (ssl == nullptr) return 0;
  const CtxState* ours = GetCtxState(ssl);
  ConnState* conn = GetConnState(ssl);
  if (ours == nullptr || conn == nullptr) return 0;
  int depth = X509_STORE_CTX_get_error_depth(store_ctx);
  if (!ok) {
    int err = X509_STORE_CTX_get_error(store_ctx);
    // ztunnel's CRL policy (tls/crl.h): an issuer without a CRL, or a CRL past nextUpdate, passes.
    if (tls::CrlTolerated(err)) return 1;
    if (err == X509_V_ERR_CERT_REVOKED) {
      X509* revoked = X509_STORE_CTX_get_current_cert(store_ctx);
      X509* leaf = X509_STORE_CTX_get0_cert(store_ctx);
      absl::StatusOr<tls::RequestedNames> names = tls::CertSubjectAltNames(leaf);
      std::string peer =
          names.ok() && names->uris.size() == 1 ? names->uris[0] : std::string("(no SPIFFE ID)");
      Refuse(ssl, PeerCheckFailure::kRevoked,
             absl::StrCat("peer ", peer, " presented a revoked certificate: serial ",
                          revoked != nullptr ? tls::SerialHex(revoked) : "(unknown)",
                          depth == 0 ? " (its own)" : absl::StrCat(" (chain depth ", depth, ")"),
                          " is listed in a CRL of the trust bundle (we are ", ours->identity, ")"));
      return 0;
    }
    Refuse(ssl, PeerCheckFailure::kUntrusted,
           absl::StrCat("peer certificate chain does not verify against the trust bundle (we are ",
                        ours->identity, "): ", X509_verify_cert_error_string(err), " at depth ",
                        depth));
    return 0;
  }
  if (depth != 0) return 1;
  return CheckLeaf(ssl, *ours, *conn, X509_STORE_CTX_get_current_cert(store_ctx), store_ctx);
}

// SHA-256 over the DER of the certificates the peer sent (leaf first): the VerifiedChains key.
std::string ChainKey(X509_STORE_CTX* store_ctx) {
  SHA256_CTX sha;
  SHA256_Init(&sha);
  auto add = [&](X509* cert) {
    uint8_t* der = nullptr;
    int len = i2d_X509(cert, &der);
    if (len <= 0) return false;
    uint8_t len_be[4] = {static_cast<uint8_t>(len >> 24), static_cast<uint8_t>(len >> 16),
                         static_cast<uint8_t>(len >> 8), static_cast<uint8_t>(len)};
    SHA256_Update(&sha, len_be, sizeof len_be);
    SHA256_Update(&sha, der, static_cast<size_t>(len));
    OPENSSL_free(der);
    return true;
  };
  X509* leaf = X509_STORE_CTX_get0_cert(store_ctx);
  if (leaf == nullptr || !add(leaf)) return "";
  if (STACK_OF(X509)* untrusted = X509_STORE_CTX_get0_untrusted(store_ctx)) {
    for (size_t i = 0; i < sk_X509_num(untrusted); ++i) {
      if (!add(sk_X509_value(untrusted, i))) return "";
    }
  }
  std::string key(SHA256_DIGEST_LENGTH, '\0');
  SHA256_Final(reinterpret_cast<uint8_t*>(key.data()), &sha);
  return key;
}

// The validity window shared by every certificate of a verified chain.
bool ChainWindow(X509_STORE_CTX* store_ctx, absl::Time when, absl::Time* not_before,
                 absl::Time* not_after) {
  STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(store_ctx);
  if (chain == nullptr || sk_X509_num(chain) == 0) return false;
  time_t now_t = absl::ToTimeT(when);
  bssl::UniquePtr<ASN1_TIME> now(ASN1_TIME_set(nullptr, now_t));
  if (now == nullptr) return false;
  absl::Time now_abs = absl::FromTimeT(now_t);
  *not_before = absl::InfinitePast();
  *not_after = absl::InfiniteFuture();
  for (size_t i = 0; i < sk_X509_num(chain); ++i) {
    X509* cert = sk_X509_value(chain, i);
    int days, secs;
    if (!ASN1_TIME_diff(&days, &secs, now.get(), X509_get0_notBefore(cert))) return false;
    *not_before = std::max(*not_before, now_abs + absl::Hours(24) * days + absl::Seconds(secs));
    if (!ASN1_TIME_diff(&days, &secs, now.get(), X509_get0_notAfter(cert))) return false;
    *not_after = std::min(*not_after, now_abs + absl::Hours(24) * days + absl::Seconds(secs));
  }
  return true;
}

// Replaces X509_verify_cert for peers (see VerifiedChains): a chain already verified under this
// context only repeats the per-connection checks of its leaf.
int VerifyChain(X509_STORE_CTX* store_ctx, void*) {
  auto* ssl = static_cast<SSL*>(
      X509_STORE_CTX_get_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
  const CtxState* ours = ssl != nullptr ? GetCtxState(ssl) : nullptr;
  ConnState* conn = ssl != nullptr ? GetConnState(ssl) : nullptr;
  if (ours == nullptr || conn == nullptr) return X509_verify_cert(store_ctx);
  // One time for the remembered chains, the full verification and the window remembered: the
  // context's clock, so a certificate's expiry is the same event for every check.
  absl::Time now = ours->clock->Now();
  std::string key = ChainKey(store_ctx);
  if (!key.empty() && ours->verified.Contains(key, now)) {
    return CheckLeaf(ssl, *ours, *conn, X509_STORE_CTX_get0_cert(store_ctx), store_ctx);
  }
  X509_STORE_CTX_set_time(store_ctx, 0, absl::ToTimeT(now));
  int ok = X509_verify_cert(store_ctx);
  absl::Time not_before, not_after;
  if (ok == 1 && X509_STORE_CTX_get_error(store_ctx) == X509_V_OK && !key.empty() &&
      ChainWindow(store_ctx, now, &not_before, &not_after)) {
    ours->verified.Add(std::move(key), not_before, not_after);
  }
  return ok;
}

// The checks of the peer's leaf that belong to each connection: cipher (client side), SPIFFE
// identity and trust domain, and the identity the client expects.
int CheckLeaf(SSL* ssl, const CtxState& ours, const ConnState& conn, X509* leaf,
              X509_STORE_CTX* store_ctx) {
  auto refuse = [&](PeerCheckFailure failure, std::string message) {
    Refuse(ssl, failure, std::move(message));
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  };
  if (ours.role == TlsContext::Role::kClient && !AllowedCipher(NegotiatedCipher(ssl))) {
    const SSL_CIPHER* cipher = NegotiatedCipher(ssl);
    return refuse(PeerCheckFailure::kCipher,
                  absl::StrCat("server chose cipher suite ",
                               cipher != nullptr ? SSL_CIPHER_get_name(cipher) : "(none)",
                               "; only TLS_AES_128_GCM_SHA256 and TLS_AES_256_GCM_SHA384 are "
                               "allowed"));
  }
  PeerCheckFailure failure;
  absl::StatusOr<std::string> id = LeafIdentity(leaf, ours, &failure);
  if (!id.ok()) return refuse(failure, std::string(id.status().message()));
  if (ours.role == TlsContext::Role::kClient && !IsExpectedPeer(ours, conn.expected_peer, *id)) {
    return refuse(PeerCheckFailure::kIdentityMismatch,
                  absl::StrCat("server identity mismatch: expected ", conn.expected_peer, ", got ",
                               *id, " (we are ", ours.identity, ")"));
  }
  return 1;
}

bool OffersAesGcm(const SSL_CLIENT_HELLO* hello) {
  for (size_t i = 0; i + 1 < hello->cipher_suites_len; i += 2) {
    uint16_t id = static_cast<uint16_t>(hello->cipher_suites[i] << 8 | hello->cipher_suites[i + 1]);
    if (id == kTlsAes128GcmSha256 || id == kTlsAes256GcmSha384) return true;
  }
  return false;
}

// "TLS 1.2" for a protocol version number (RFC 8446 section 4.2.1 numbering).
std::string VersionName(uint16_t version) {
  switch (version) {
    case SSL3_VERSION:
      return "SSL 3.0";
    case TLS1_VERSION:
      return "TLS 1.0";
    case TLS1_1_VERSION:
      return "TLS 1.1";
    case TLS1_2_VERSION:
      return "TLS 1.2";
    case TLS1_3_VERSION:
      return "TLS 1.3";
  }
  return absl::StrCat("version 0x", absl::Hex(version, absl::kZeroPad4));
}

// The highest protocol version a ClientHello offers: its supported_versions extension (RFC 8446
// section 4.2.1; GREASE values skipped), else its legacy version field, as a TLS 1.2 client
// sends no such extension. 0 when the extension is malformed.
uint16_t MaxOfferedVersion(const SSL_CLIENT_HELLO* hello) {
  const uint8_t* data;
  size_t len;
  if (!SSL_early_callback_ctx_extension_get(hello, TLSEXT_TYPE_supported_versions, &data, &len)) {
    return hello->version;
  }
  if (len < 1 || data[0] != len - 1 || data[0] % 2 != 0) return 0;
  uint16_t best = 0;
  for (size_t i = 1; i + 1 < len; i += 2) {
    const uint16_t v = static_cast<uint16_t>(data[i] << 8 | data[i + 1]);
    const bool grease = (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff);
    // Pre-standard TLS 1.3 drafts (0x7fxx) are not TLS 1.3 either.
    if (!grease && v <= TLS1_3_VERSION && v > best) best = v;
  }
  return best;
}

// Server, before key exchange: refuses what the later callbacks could not refuse cleanly.
ssl_select_cert_result_t CheckClientHello(const SSL_CLIENT_HELLO* hello) {
  // First: a client without TLS 1.3 also lacks the TLS 1.3 suites, and "TLS 1.3 is required"
  // is what it has to be told.
  if (const uint16_t max = MaxOfferedVersion(hello); max < TLS1_3_VERSION) {
    Refuse(hello->ssl, PeerCheckFailure::kVersion,
           max == 0 ? std::string("client's supported_versions extension is malformed; HBONE "
                                  "requires TLS 1.3")
                    : absl::StrCat("TLS 1.3 is required; the client offered ", VersionName(max),
                                   " at most"));
    SSL_send_fatal_alert(hello->ssl, SSL_AD_PROTOCOL_VERSION);
    return ssl_select_cert_error;
  }
  if (!OffersAesGcm(hello)) {
    Refuse(hello->ssl, PeerCheckFailure::kCipher,
           "client offers neither TLS_AES_128_GCM_SHA256 nor TLS_AES_256_GCM_SHA384");
    return ssl_select_cert_error;
  }
  const uint8_t* alpn;
  size_t alpn_len;
  // The ALPN callback only runs for clients that send the extension at all.
  if (!SSL_early_callback_ctx_extension_get(
          hello, TLSEXT_TYPE_application_layer_protocol_negotiation, &alpn, &alpn_len)) {
    Refuse(hello->ssl, PeerCheckFailure::kNoAlpn, "client offers no ALPN; HBONE requires h2");
    SSL_send_fatal_alert(hello->ssl, SSL_AD_NO_APPLICATION_PROTOCOL);
    return ssl_select_cert_error;
  }
  return ssl_select_cert_success;
}

int SelectAlpn(SSL* ssl, const uint8_t** out, uint8_t* out_len, const uint8_t* in, unsigned in_len,
               void*) {
  // The suite is chosen before ALPN runs, so this is the last moment to refuse it with an alert.
  if (!AllowedCipher(SSL_get_pending_cipher(ssl))) {
    const SSL_CIPHER* cipher = SSL_get_pending_cipher(ssl);
    Refuse(ssl, PeerCheckFailure::kCipher,
           absl::StrCat("negotiated cipher suite ",
                        cipher != nullptr ? SSL_CIPHER_get_name(cipher) : "(none)",
                        " is not AES-GCM; h2 refused"));
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  std::string offered;
  for (unsigned i = 0; i < in_len;) {
    unsigned len = in[i];
    if (i + 1 + len > in_len) break;
    absl::string_view proto(reinterpret_cast<const char*>(in + i + 1), len);
    if (proto == "h2") {
      *out = in + i + 1;
      *out_len = 2;
      return SSL_TLSEXT_ERR_OK;
    }
    absl::StrAppend(&offered, offered.empty() ? "" : ",", proto);
    i += 1 + len;
  }
  Refuse(ssl, PeerCheckFailure::kNoAlpn,
         absl::StrCat("client offers ALPN [", offered, "] without h2"));
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

}  // namespace

const char* PeerCheckFailureName(PeerCheckFailure failure) {
  switch (failure) {
    case PeerCheckFailure::kNone:
      return "none";
    case PeerCheckFailure::kNoClientCert:
      return "no_client_cert";
    case PeerCheckFailure::kUntrusted:
      return "untrusted";
    case PeerCheckFailure::kBadIdentity:
      return "bad_identity";
    case PeerCheckFailure::kWrongTrustDomain:
      return "wrong_trust_domain";
    case PeerCheckFailure::kIdentityMismatch:
      return "identity_mismatch";
    case PeerCheckFailure::kNoAlpn:
      return "no_alpn";
    case PeerCheckFailure::kCipher:
      return "cipher";
    case PeerCheckFailure::kVersion:
      return "version";
    case PeerCheckFailure::kRevoked:
      return "revoked";
  }
  return "unknown";
}

absl::StatusOr<std::shared_ptr<const TlsContext>> TlsContext::Create(
    Role role, const tls::CertifiedKey& svid, X509_STORE* roots, std::string trust_domain,
    const Clock* clock, std::vector<std::string> trust_domain_aliases) {
  if (clock == nullptr) return absl::InvalidArgumentError("TLS context: no clock");
  if (roots == nullptr) return absl::InvalidArgumentError("TLS context: no trust bundle");
  if (svid.key == nullptr || svid.chain.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS context for ", svid.identity, ": no key or certificate"));
  }
  AMBIT_RETURN_IF_ERROR(identity::ValidateTrustDomain(trust_domain));
  for (const std::string& alias : trust_domain_aliases) {
    AMBIT_RETURN_IF_ERROR(identity::ValidateTrustDomain(alias));
  }
  AMBIT_ASSIGN_OR_RETURN(identity::SpiffeId own, identity::ParseSpiffeId(svid.identity));
  if (own.trust_domain != trust_domain) {
    return absl::InvalidArgumentError(absl::StrCat("TLS context: our identity ", svid.identity,
                                                   " is not in trust domain ", trust_domain));
  }

  bssl::UniquePtr<SSL_CTX> ctx(SSL_CTX_new(TLS_method()));
  if (ctx == nullptr) return tls::SslError(absl::StatusCode::kInternal, "SSL_CTX_new");
  SSL_CTX* c = ctx.get();
  if (!SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION) ||
      !SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION)) {
    return tls::SslError(absl::StatusCode::kInternal, "restricting to TLS 1.3");
  }
  if (!SSL_CTX_use_certificate(c, svid.chain[0].get())) {
    return tls::SslError(absl::StatusCode::kInvalidArgument,
                         absl::StrCat("using the certificate of ", svid.identity));
  }
  for (size_t i = 1; i < svid.chain.size(); ++i) {
    if (!SSL_CTX_add1_chain_cert(c, svid.chain[i].get())) {
      return tls::SslError(absl::StatusCode::kInvalidArgument, "adding an intermediate");
    }
  }
  if (!SSL_CTX_use_PrivateKey(c, svid.key.get()) || !SSL_CTX_check_private_key(c)) {
    return tls::SslError(absl::StatusCode::kInvalidArgument,
                         absl::StrCat("the key of ", svid.identity, " does not match its leaf"));
  }
  X509_STORE_up_ref(roots);
  SSL_CTX_set_cert_store(c, roots);
  SSL_CTX_set_verify(
      c,
      role == Role::kServer ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER,
      VerifyPeer);
  SSL_CTX_set_cert_verify_callback(c, VerifyChain, nullptr);
  // No resumption: every connection proves its identity with a full handshake, and the server
  // sends no tickets it would have to rotate keys for.
  SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // Peers' certificates are held once per distinct certificate, not once per connection: the
  // connections of a pool (and of every client with the same identity) share the bytes.
  static CRYPTO_BUFFER_POOL* const kCertificatePool = CRYPTO_BUFFER_POOL_new();
  SSL_CTX_set0_buffer_pool(c, kCertificatePool);
  if (role == Role::kClient) {
    if (SSL_CTX_set_alpn_protos(c, kAlpnH2, sizeof kAlpnH2) != 0) {  // 0 is success here
      return tls::SslError(absl::StatusCode::kInternal, "setting ALPN");
    }
  } else {
    SSL_CTX_set_num_tickets(c, 0);
    SSL_CTX_set_select_certificate_cb(c, CheckClientHello);
    SSL_CTX_set_alpn_select_cb(c, SelectAlpn, nullptr);
  }
  auto* state =
      new CtxState{role, svid.identity, trust_domain, std::move(trust_domain_aliases), clock, {}};
  if (!SSL_CTX_set_ex_data(c, CtxIndex(), state)) {
    delete state;
    return tls::SslError(absl::StatusCode::kInternal, "SSL_CTX_set_ex_data");
  }
  // Kept to check, when the trust bundle changes, whether sessions made with this context would
  // still be accepted by peers (CoveredBy).
  bssl::UniquePtr<STACK_OF(X509)> intermediates(sk_X509_new_null());
  if (intermediates == nullptr) return tls::SslError(absl::StatusCode::kInternal, "sk_X509_new");
  for (size_t i = 1; i < svid.chain.size(); ++i) {
    X509_up_ref(svid.chain[i].get());
    if (!sk_X509_push(intermediates.get(), svid.chain[i].get())) {
      X509_free(svid.chain[i].get());
      return tls::SslError(absl::StatusCode::kInternal, "sk_X509_push");
    }
  }
  X509_up_ref(svid.chain[0].get());
  bssl::UniquePtr<X509> leaf(svid.chain[0].get());
  return std::shared_ptr<const TlsContext>(
      new TlsContext(role, std::move(ctx), svid.identity, std::move(trust_domain), svid.not_after,
                     std::move(leaf), std::move(intermediates)));
}

absl::Status TlsContext::CoveredBy(const TlsContext& other, absl::Time now) const {
  X509_STORE* store = SSL_CTX_get_cert_store(other.ctx_.get());
  bssl::UniquePtr<X509_STORE_CTX> verify(X509_STORE_CTX_new());
  if (store == nullptr || verify == nullptr ||
      !X509_STORE_CTX_init(verify.get(), store, leaf_.get(), intermediates_.get())) {
    return tls::SslError(absl::StatusCode::kInternal, "preparing a certificate check");
  }
  X509_STORE_CTX_set_time(verify.get(), 0, absl::ToTimeT(now));
  // The same CRL policy as for peers: an issuer without a CRL does not make our chain unusable.
  X509_STORE_CTX_set_verify_cb(verify.get(), [](int ok, X509_STORE_CTX* c) {
    return ok != 0 || tls::CrlTolerated(X509_STORE_CTX_get_error(c)) ? 1 : 0;
  });
  if (X509_verify_cert(verify.get()) != 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the certificate of ", identity_, " no longer verifies against the trust bundle: ",
        X509_verify_cert_error_string(X509_STORE_CTX_get_error(verify.get()))));
  }
  return absl::OkStatus();
}

absl::Status TlsContext::AcceptsPeerOf(const SSL* ssl, absl::Time now, bool* revoked) const {
  if (revoked != nullptr) *revoked = false;
  const CtxState* ours = static_cast<const CtxState*>(SSL_CTX_get_ex_data(ctx_.get(), CtxIndex()));
  if (ours == nullptr) return absl::InternalError("TLS context without its state");
  // The session keeps the chain the peer sent (leaf first) after the handshake.
  STACK_OF(X509)* sent = SSL_get_peer_full_cert_chain(ssl);
  if (sent == nullptr || sk_X509_num(sent) == 0) {
    return absl::FailedPreconditionError("the session holds no peer certificate to check");
  }
  X509* leaf = sk_X509_value(sent, 0);
  X509_STORE* store = SSL_CTX_get_cert_store(ctx_.get());
  bssl::UniquePtr<X509_STORE_CTX> verify(X509_STORE_CTX_new());
  if (store == nullptr || verify == nullptr ||
      !X509_STORE_CTX_init(verify.get(), store, leaf, sent)) {
    return tls::SslError(absl::StatusCode::kInternal, "preparing a certificate check");
  }
  X509_STORE_CTX_set_time(verify.get(), 0, absl::ToTimeT(now));
  // The handshake's CRL policy: an issuer without a CRL, or a CRL past nextUpdate, passes.
  X509_STORE_CTX_set_verify_cb(verify.get(), [](int ok, X509_STORE_CTX* c) {
    return ok != 0 || tls::CrlTolerated(X509_STORE_CTX_get_error(c)) ? 1 : 0;
  });
  absl::StatusOr<tls::RequestedNames> names = tls::CertSubjectAltNames(leaf);
  const std::string peer =
      names.ok() && names->uris.size() == 1 ? names->uris[0] : std::string("(no SPIFFE ID)");
  if (X509_verify_cert(verify.get()) != 1) {
    int err = X509_STORE_CTX_get_error(verify.get());
    if (err == X509_V_ERR_CERT_REVOKED) {
      if (revoked != nullptr) *revoked = true;
      X509* listed = X509_STORE_CTX_get_current_cert(verify.get());
      int depth = X509_STORE_CTX_get_error_depth(verify.get());
      return absl::PermissionDeniedError(
          absl::StrCat("peer ", peer, " holds a revoked certificate: serial ",
                       listed != nullptr ? tls::SerialHex(listed) : "(unknown)",
                       depth == 0 ? " (its own)" : absl::StrCat(" (chain depth ", depth, ")"),
                       " is listed in a CRL of the trust bundle (we are ", identity_, ")"));
    }
    return absl::PermissionDeniedError(
        absl::StrCat("peer ", peer, " no longer verifies against the trust bundle (we are ",
                     identity_, "): ", X509_verify_cert_error_string(err)));
  }
  PeerCheckFailure failure;
  absl::StatusOr<std::string> id = LeafIdentity(leaf, *ours, &failure);
  return id.ok() ? absl::OkStatus() : id.status();
}

absl::StatusOr<bssl::UniquePtr<SSL>> TlsContext::NewSsl(int fd,
                                                        const std::string& expected_peer) const {
  if (role_ == Role::kClient && expected_peer.empty()) {
    return absl::InvalidArgumentError("an HBONE client must name the identity it expects");
  }
  bssl::UniquePtr<SSL> ssl(SSL_new(ctx_.get()));
  if (ssl == nullptr) return tls::SslError(absl::StatusCode::kInternal, "SSL_new");
  auto* state = new ConnState;
  if (role_ == Role::kClient) state->expected_peer = expected_peer;
  if (!SSL_set_ex_data(ssl.get(), ConnIndex(), state)) {
    delete state;
    return tls::SslError(absl::StatusCode::kInternal, "SSL_set_ex_data");
  }
  if (!SSL_set_fd(ssl.get(), fd)) return tls::SslError(absl::StatusCode::kInternal, "SSL_set_fd");
  // A pooled connection lives long after its handshake: drop the per-connection copy of the
  // certificate, key and verification configuration once the handshake is done (TLS 1.3 has no
  // renegotiation that would need it again).
  SSL_set_shed_handshake_config(ssl.get(), 1);
  if (role_ == Role::kClient) {
    SSL_set_connect_state(ssl.get());
  } else {
    SSL_set_accept_state(ssl.get());
  }
  return ssl;
}

absl::StatusOr<std::shared_ptr<const TlsContext>> MakeServerContext(
    const tls::CertifiedKey& svid, X509_STORE* roots, std::string trust_domain, const Clock* clock,
    std::vector<std::string> trust_domain_aliases) {
  return TlsContext::Create(TlsContext::Role::kServer, svid, roots, std::move(trust_domain), clock,
                            std::move(trust_domain_aliases));
}

absl::StatusOr<std::shared_ptr<const TlsContext>> MakeClientContext(
    const tls::CertifiedKey& svid, X509_STORE* roots, std::string trust_domain, const Clock* clock,
    std::vector<std::string> trust_domain_aliases) {
  return TlsContext::Create(TlsContext::Role::kClient, svid, roots, std::move(trust_domain), clock,
                            std::move(trust_domain_aliases));
}

absl::StatusOr<std::string> PeerSpiffeId(const SSL* ssl) {
  const CtxState* ours = GetCtxState(ssl);
  if (ours == nullptr) return absl::FailedPreconditionError("SSL was not made by a TlsContext");
  if (SSL_in_init(ssl)) return absl::FailedPreconditionError("TLS handshake not finished");
  bssl::UniquePtr<X509> leaf(SSL_get_peer_certificate(ssl));
  if (leaf == nullptr) {
    return absl::PermissionDeniedError(
        absl::StrCat("peer presented no certificate (we are ", ours->identity, ")"));
  }
  long verify = SSL_get_verify_result(ssl);
  if (verify != X509_V_OK) {
    return absl::PermissionDeniedError(absl::StrCat("peer certificate not verified (we are ",
                                                    ours->identity,
                                                    "): ", X509_verify_cert_error_string(verify)));
  }
  PeerCheckFailure failure;
  return LeafIdentity(leaf.get(), *ours, &failure);
}

PeerCheckFailure PeerCheckFailureOf(const SSL* ssl) {
  const ConnState* state = GetConnState(ssl);
  if (state != nullptr && state->failure != PeerCheckFailure::kNone) return state->failure;
  uint32_t err = ERR_peek_error();
  if (ERR_GET_LIB(err) == ERR_LIB_SSL &&
      ERR_GET_REASON(err) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
    return PeerCheckFailure::kNoClientCert;
  }
  return PeerCheckFailure::kNone;
}

std::string PeerCheckMessage(const SSL* ssl) {
  const ConnState* state = GetConnState(ssl);
  if (state != nullptr && !state->message.empty()) return state->message;
  if (PeerCheckFailureOf(ssl) == PeerCheckFailure::kNoClientCert) {
    const CtxState* ours = GetCtxState(ssl);
    return absl::StrCat("client presented no certificate (we are ",
                        ours != nullptr ? ours->identity : "?", ")");
  }
  return "";
}

}  // namespace ambit::hbone
