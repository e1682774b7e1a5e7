// The JWS signature check on a TLS library's primitives. This one source is compiled twice, once
// against BoringSSL (ambit_jws_boringssl, for the waypoint) and once against OpenSSL 3
// (ambit_jws_openssl in agent/cli, for ambitctl, which links OpenSSL through gRPC), because the two
// libraries must never meet in one process (docs/ARCHITECTURE.md#process-split). Only calls that
// both offer with the same meaning and that OpenSSL 3 does not deprecate are used: keys come from
// DER SubjectPublicKeyInfo (d2i_PUBKEY) or raw Ed25519 bytes, verification is EVP_DigestVerify,
// HMAC is the one-shot HMAC() with a constant-time compare. So owners are plain unique_ptrs with
// the free functions rather than bssl::UniquePtr, which only BoringSSL has.

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <memory>
#include <string>
#include <unordered_map>

#include "agent/authn/jose.h"
#include "agent/authn/signature.h"

namespace ambit::authn {
namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;

const EVP_MD* Digest(Algorithm alg) {
  switch (DigestBits(alg)) {
    case 256:
      return EVP_sha256();
    case 384:
      return EVP_sha384();
    case 512:
      return EVP_sha512();
    default:
      return nullptr;
  }
}

PkeyPtr FromSpki(const std::string& der) {
  if (der.empty()) return nullptr;
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  PkeyPtr key(d2i_PUBKEY(nullptr, &p, static_cast<long>(der.size())));
  if (key && p != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) return nullptr;
  return key;
}

// Parsed keys by their DER, per thread. Parsing an RSA key and setting up its Montgomery form
// costs more than the verification itself, and a mesh's JWKS keys are few and long-lived. One
// cache per thread, so the request path takes no lock; cleared when full, so rotating keys cannot
// grow it. A key is only ever used by the thread that parsed it.
constexpr size_t kMaxCachedKeys = 64;

EVP_PKEY* CachedKey(const std::string& der) {
  thread_local std::unordered_map<std::string, PkeyPtr> cache;
  if (auto it = cache.find(der); it != cache.end()) return it->second.get();
  PkeyPtr key = FromSpki(der);
  if (!key) return nullptr;
  if (cache.size() >= kMaxCachedKeys) cache.clear();
  return cache.emplace(der, std::move(key)).first->second.get();
}

bool DigestVerify(EVP_PKEY* key, const EVP_MD* md, bool pss, absl::string_view input,
                  absl::string_view signature) {
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx) return false;
  EVP_PKEY_CTX* pctx = nullptr;  // owned by ctx
  if (EVP_DigestVerifyInit(ctx.get(), &pctx, md, nullptr, key) != 1) return false;
  if (pss) {
    // RFC 7518 3.5: MGF1 with the same hash, salt as long as the digest.
    if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, -1) != 1 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) != 1) {
      return false;
    }
  }
  return EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                          signature.size(), reinterpret_cast<const unsigned char*>(input.data()),
                          input.size()) == 1;
}

size_t EcHalf(Algorithm alg) {
  switch (alg) {
    case Algorithm::kEs256:
      return 32;
    case Algorithm::kEs384:
      return 48;
    case Algorithm::kEs512:
      return 66;
    default:
      return 0;
  }
}

absl::string_view EcCurve(Algorithm alg) {
  switch (alg) {
    case Algorithm::kEs256:
      return "P-256";
    case Algorithm::kEs384:
      return "P-384";
    case Algorithm::kEs512:
      return "P-521";
    default:
      return "";
  }
}

class CryptoVerifier final : public SignatureVerifier {
 public:
  bool Verify(const Jwk& key, Algorithm alg, absl::string_view input,
              absl::string_view signature) const override {
    switch (alg) {
      case Algorithm::kRs256:
      case Algorithm::kRs384:
      case Algorithm::kRs512:
      case Algorithm::kPs256:
      case Algorithm::kPs384:
      case Algorithm::kPs512: {
        if (key.kty != "RSA") return false;
        EVP_PKEY* pkey = CachedKey(SubjectPublicKeyInfo(key));
        if (pkey == nullptr || EVP_PKEY_id(pkey) != EVP_PKEY_RSA) return false;
        const bool pss =
            alg == Algorithm::kPs256 || alg == Algorithm::kPs384 || alg == Algorithm::kPs512;
        return DigestVerify(pkey, Digest(alg), pss, input, signature);
      }
      case Algorithm::kEs256:
      case Algorithm::kEs384:
      case Algorithm::kEs512: {
        if (key.kty != "EC" || key.crv != EcCurve(alg)) return false;
        const std::string der = EcdsaRawToDer(signature, EcHalf(alg));
        if (der.empty()) return false;  // not R||S of this curve's size (DER is refused)
        EVP_PKEY* pkey = CachedKey(SubjectPublicKeyInfo(key));
        if (pkey == nullptr || EVP_PKEY_id(pkey) != EVP_PKEY_EC) return false;
        return DigestVerify(pkey, Digest(alg), false, input, der);
      }
      case Algorithm::kEdDsa: {
        if (key.kty != "OKP" || key.crv != "Ed25519" || key.x.size() != 32) return false;
        PkeyPtr pkey(EVP_PKEY_new_raw_public_key(
            EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(key.x.data()),
            key.x.size()));
        if (!pkey) return false;
        return DigestVerify(pkey.get(), nullptr, false, input, signature);
      }
      case Algorithm::kHs256:
      case Algorithm::kHs384:
      case Algorithm::kHs512: {
        // Only a shared `oct` key: an RSA or EC public key used as an HMAC secret is the classic
        // key-confusion forgery.
        if (key.kty != "oct" || key.k.empty()) return false;
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int mac_len = 0;
        if (HMAC(Digest(alg), key.k.data(), static_cast<int>(key.k.size()),
                 reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac,
                 &mac_len) == nullptr) {
          return false;
        }
        return mac_len == signature.size() && CRYPTO_memcmp(mac, signature.data(), mac_len) == 0;
      }
    }
    return false;
  }
};

}  // namespace

const SignatureVerifier& CryptoSignatureVerifier() {
  static const CryptoVerifier* const verifier = new CryptoVerifier();
  return *verifier;
}

}  // namespace ambit::authn
