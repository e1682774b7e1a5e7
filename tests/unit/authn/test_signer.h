#pragma once

// Keys and tokens for the authn tests, made with BoringSSL at test time: one key per JWS
// algorithm family, its JWK, and compact tokens signed with it.

#include <openssl/bn.h>
#include <openssl/curve25519.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/nid.h>
#include <openssl/rsa.h>

#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/authn/jose.h"

namespace ambit::authn::testing {

inline std::string B64(absl::string_view bytes) { return absl::WebSafeBase64Escape(bytes); }

inline std::string BnBytes(const BIGNUM* bn, size_t width = 0) {
  std::string out(width ? width : BN_num_bytes(bn), '\0');
  BN_bn2bin_padded(reinterpret_cast<uint8_t*>(out.data()), out.size(), bn);
  return out;
}

// A signing key of one family, with its public JWK as JSON members.
class TestKey {
 public:
  static TestKey Rsa(int bits = 2048) {
    TestKey k;
    bssl::UniquePtr<RSA> rsa(RSA_new());
    bssl::UniquePtr<BIGNUM> e(BN_new());
    BN_set_word(e.get(), RSA_F4);
    RSA_generate_key_ex(rsa.get(), bits, e.get(), nullptr);
    k.kty_ = "RSA";
    k.members_ = absl::StrCat("\"n\":\"", B64(BnBytes(RSA_get0_n(rsa.get()))), "\",\"e\":\"",
                              B64(BnBytes(RSA_get0_e(rsa.get()))), "\"");
    k.pkey_.reset(EVP_PKEY_new());
    EVP_PKEY_assign_RSA(k.pkey_.get(), rsa.release());
    return k;
  }

  static TestKey Ec(int nid) {
    TestKey k;
    bssl::UniquePtr<EC_KEY> ec(EC_KEY_new_by_curve_name(nid));
    EC_KEY_generate_key(ec.get());
    const EC_GROUP* group = EC_KEY_get0_group(ec.get());
    k.half_ = (EC_GROUP_get_degree(group) + 7) / 8;
    bssl::UniquePtr<BIGNUM> x(BN_new()), y(BN_new());
    EC_POINT_get_affine_coordinates_GFp(group, EC_KEY_get0_public_key(ec.get()), x.get(), y.get(),
                                        nullptr);
    const char* crv = nid == NID_X9_62_prime256v1 ? "P-256"
                      : nid == NID_secp384r1      ? "P-384"
                                                  : "P-521";
    k.kty_ = "EC";
    k.members_ = absl::StrCat("\"crv\":\"", crv, "\",\"x\":\"", B64(BnBytes(x.get(), k.half_)),
                              "\",\"y\":\"", B64(BnBytes(y.get(), k.half_)), "\"");
    k.pkey_.reset(EVP_PKEY_new());
    EVP_PKEY_assign_EC_KEY(k.pkey_.get(), ec.release());
    return k;
  }

  static TestKey Ed25519() {
    TestKey k;
    uint8_t pub[32], priv[64];
    ED25519_keypair(pub, priv);
    k.kty_ = "OKP";
    k.members_ = absl::StrCat("\"crv\":\"Ed25519\",\"x\":\"",
                              B64(std::string(reinterpret_cast<char*>(pub), 32)), "\"");
    k.pkey_.reset(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, priv, 32));
    return k;
  }

  static TestKey Hmac(std::string secret) {
    TestKey k;
    k.kty_ = "oct";
    k.members_ = absl::StrCat("\"k\":\"", B64(secret), "\"");
    k.secret_ = std::move(secret);
    return k;
  }

  // The public JWK as JSON; kid and alg are left out when empty.
  std::string Jwk(absl::string_view kid = "", absl::string_view alg = "") const {
    std::string out = absl::StrCat("{\"kty\":\"", kty_, "\",", members_);
    if (!kid.empty()) absl::StrAppend(&out, ",\"kid\":\"", kid, "\"");
    if (!alg.empty()) absl::StrAppend(&out, ",\"alg\":\"", alg, "\"");
    return out + "}";
  }

  // Signs input. ES* signatures are R||S unless der is set.
  std::string Sign(absl::string_view alg, absl::string_view input, bool der = false) const {
    const EVP_MD* md = absl::EndsWith(alg, "384")   ? EVP_sha384()
                       : absl::EndsWith(alg, "512") ? EVP_sha512()
                                                    : EVP_sha256();
    if (alg == "EdDSA") md = nullptr;
    if (absl::StartsWith(alg, "HS")) {
      uint8_t mac[EVP_MAX_MD_SIZE];
      unsigned len = 0;
      HMAC(md, secret_.data(), secret_.size(), reinterpret_cast<const uint8_t*>(input.data()),
           input.size(), mac, &len);
      return std::string(reinterpret_cast<char*>(mac), len);
    }
    bssl::ScopedEVP_MD_CTX ctx;
    EVP_PKEY_CTX* pctx = nullptr;
    EVP_DigestSignInit(ctx.get(), &pctx, md, nullptr, pkey_.get());
    if (absl::StartsWith(alg, "PS")) {
      EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
      EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, -1);
    }
    size_t len = 0;
    EVP_DigestSign(ctx.get(), nullptr, &len, reinterpret_cast<const uint8_t*>(input.data()),
                   input.size());
    std::string sig(len, '\0');
    EVP_DigestSign(ctx.get(), reinterpret_cast<uint8_t*>(sig.data()), &len,
                   reinterpret_cast<const uint8_t*>(input.data()), input.size());
    sig.resize(len);
    if (!absl::StartsWith(alg, "ES") || der) return sig;
    bssl::UniquePtr<ECDSA_SIG> parsed(
        ECDSA_SIG_from_bytes(reinterpret_cast<const uint8_t*>(sig.data()), sig.size()));
    const BIGNUM *r, *s;
    ECDSA_SIG_get0(parsed.get(), &r, &s);
    return BnBytes(r, half_) + BnBytes(s, half_);
  }

  // A compact token: header {"alg", "kid"?} and the payload JSON as given.
  std::string Token(absl::string_view alg, absl::string_view payload, absl::string_view kid = "",
                    bool der = false) const {
    std::string header = absl::StrCat("{\"alg\":\"", alg, "\"");
    if (!kid.empty()) absl::StrAppend(&header, ",\"kid\":\"", kid, "\"");
    header += "}";
    const std::string input = absl::StrCat(B64(header), ".", B64(payload));
    return absl::StrCat(input, ".", B64(Sign(alg, input, der)));
  }

 private:
  std::string kty_;
  std::string members_;
  bssl::UniquePtr<EVP_PKEY> pkey_;
  std::string secret_;
  size_t half_ = 0;
};

inline std::string JwksOf(const std::vector<std::string>& jwks) {
  std::string out = "{\"keys\":[";
  for (size_t i = 0; i < jwks.size(); ++i) absl::StrAppend(&out, i ? "," : "", jwks[i]);
  return out + "]}";
}

}  // namespace ambit::authn::testing
