#pragma once

// The one cryptographic question of JWT verification: does `signature` sign `signing_input` under
// `key` with `alg`? Behind an interface because the answer comes from a TLS library and the two
// halves of the process split use different ones (docs/ARCHITECTURE.md#process-split): the
// waypoint links BoringSSL, ambitctl (through gRPC) OpenSSL 3. Their EVP verify APIs are source
// compatible, so one source, agent/tls/jws_verify.cc, is compiled twice: into ambit_jws_boringssl
// (data plane) and ambit_jws_openssl (agent/admin: ambitctl, ambitd). Neither libjwt nor cjose is
// used: both link OpenSSL and would bring it into the BoringSSL process.

#include "absl/strings/string_view.h"
#include "agent/authn/jose.h"

namespace ambit::authn {

class SignatureVerifier {
 public:
  virtual ~SignatureVerifier() = default;
  // Thread-safe. False for any mismatch: wrong key type for alg, bad sizes, bad signature.
  virtual bool Verify(const Jwk& key, Algorithm alg, absl::string_view signing_input,
                      absl::string_view signature) const = 0;
};

// The verifier of the TLS library this binary links (defined in agent/tls/jws_verify.cc, built
// once per side).
const SignatureVerifier& CryptoSignatureVerifier();

}  // namespace ambit::authn
