#pragma once

// JOSE parsing for RequestAuthentication: JWKS documents (RFC 7517), compact JWS tokens (RFC 7515)
// and their claims (RFC 7519), with the checks and answer texts of Envoy's jwt_authn
// (jwt_verify_lib), so that a client sees the same 401 body from ambit as from an Istio
// waypoint. No cryptography here: signatures are checked by a SignatureVerifier
// (signature.h). JSON is read with nlohmann-json (Debian's nlohmann-json3-dev) with exceptions
// off; every input is bounded in size and nesting. Thread-safe: pure functions on values.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/authz/request.h"

namespace ambit::authn {

// Envoy's jwt_verify_lib Status values that reach a client, in its words (StatusText).
enum class JwtStatus {
  kOk,
  kMissing,
  kNotYetValid,
  kExpired,
  kBadFormat,
  kHeaderBadBase64,
  kHeaderBadJson,
  kHeaderBadAlg,
  kHeaderAlgNotImplemented,
  kHeaderBadKid,
  kPayloadBadBase64,
  kPayloadBadJson,
  kIssNotString,
  kSubNotString,
  kIatNotInteger,
  kIatOutOfRange,
  kNbfNotInteger,
  kNbfOutOfRange,
  kExpNotInteger,
  kExpOutOfRange,
  kJtiNotString,
  kAudNotString,
  kSignatureBadBase64,
  kUnknownIssuer,
  kAudienceNotAllowed,
  kVerificationFail,
  kJwksKidAlgMismatch,
  kJwksNoValidKeys,
  kJwksFetchFail,
};

// The text Envoy answers with, e.g. "Jwt is expired".
absl::string_view StatusText(JwtStatus status);

// Signature algorithms of JWS that Envoy accepts. `none` is not one of them.
enum class Algorithm {
  kRs256,
  kRs384,
  kRs512,
  kPs256,
  kPs384,
  kPs512,
  kEs256,
  kEs384,
  kEs512,
  kHs256,
  kHs384,
  kHs512,
  kEdDsa,
};

std::optional<Algorithm> ParseAlgorithm(absl::string_view name);
absl::string_view AlgorithmName(Algorithm alg);
// 256, 384 or 512 (the SHA-2 digest); 0 for EdDSA.
int DigestBits(Algorithm alg);

// One public (or, for `oct`, shared) key of a JWKS, its numbers base64url-decoded.
struct Jwk {
  std::string kty;   // "RSA", "EC", "oct" or "OKP"
  std::string kid;   // empty: none
  std::string alg;   // empty: none; otherwise a token's alg must equal it
  std::string crv;   // EC: P-256, P-384, P-521; OKP: Ed25519
  std::string n, e;  // RSA modulus and exponent, big-endian
  std::string x, y;  // EC coordinates (fixed width) / OKP public key (x)
  std::string k;     // oct secret

  friend bool operator==(const Jwk&, const Jwk&) = default;
};

struct Jwks {
  std::vector<Jwk> keys;
  // Keys left out because they were malformed or of a kind Envoy does not use, with the reason.
  std::vector<std::string> skipped;
};

// Parses a JWKS document ({"keys": [...]}) or a single JWK. Each key is checked on its own (kty
// and its members, crv, alg consistent with kty) and a bad one is skipped with its reason, as
// Envoy does; an error when the text is not JSON, not a JWKS, or has no usable key.
absl::StatusOr<Jwks> ParseJwks(absl::string_view json);

// The DER SubjectPublicKeyInfo of an RSA or EC key, which both OpenSSL and BoringSSL read with
// d2i_PUBKEY (so the crypto code needs no version-specific key construction). Empty for other
// key types or a malformed key.
std::string SubjectPublicKeyInfo(const Jwk& key);

// JWS ES* signatures are R||S, each half `half` bytes; verifiers take DER. Empty when the size is
// not 2*half (a DER signature is refused, as in Envoy).
std::string EcdsaRawToDer(absl::string_view raw, size_t half);

// A compact JWS token, split and decoded; claims not yet checked against any rule.
struct Jwt {
  std::string token;          // as found in the request
  std::string payload_b64;    // the payload segment as sent (base64url)
  std::string signing_input;  // "<header>.<payload>"
  std::string signature;      // decoded
  Algorithm alg = Algorithm::kRs256;
  std::string kid;
  authz::ClaimValue claims;  // the payload object
  std::string iss, sub;
  std::vector<std::string> audiences;  // `aud`, string or list
  uint64_t exp = 0, nbf = 0, iat = 0;  // 0: absent
};

// Splits and decodes a token (Envoy's order of checks); kOk fills *out.
JwtStatus ParseJwt(absl::string_view token, Jwt* out);

// Envoy's exp/nbf check with its 60 s clock skew.
inline constexpr int64_t kClockSkewSeconds = 60;
JwtStatus CheckTime(const Jwt& jwt, int64_t now_unix_seconds);

// True when one of the token's audiences is allowed (an empty list allows any). As Envoy does,
// "http://" / "https://" and a trailing "/" are ignored on both sides.
bool AudienceAllowed(const Jwt& jwt, const std::vector<std::string>& allowed);

// JSON text (bounded: at most kMaxJsonDepth nesting) into a claim value; nullopt when not JSON.
inline constexpr int kMaxJsonDepth = 32;
std::optional<authz::ClaimValue> ParseJsonClaims(absl::string_view json);

}  // namespace ambit::authn
