#include "agent/authn/jose.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace ambit::authn {
namespace {

using Json = nlohmann::json;

// A token or JWKS far beyond any real one is refused before parsing (headers are capped by the
// HTTP layer too; this keeps the library safe on its own).
constexpr size_t kMaxTokenSize = 64 * 1024;
constexpr size_t kMaxJwksSize = 1024 * 1024;

// True when the text nests arrays/objects at most kMaxJsonDepth deep (strings skipped), so that
// neither parsing nor destroying the value recurses without bound.
bool DepthWithinLimit(absl::string_view text) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth) return false;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return true;
}

// Parses without exceptions; nullopt when the text is not JSON or nests too deeply.
std::optional<Json> ParseJson(absl::string_view text) {
  if (!DepthWithinLimit(text)) return std::nullopt;
  Json j = Json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

authz::ClaimValue ToClaim(const Json& j) {
  switch (j.type()) {
    case Json::value_t::string:
      return authz::ClaimValue::String(j.get_ref<const std::string&>());
    case Json::value_t::boolean:
      return authz::ClaimValue::Bool(j.get<bool>());
    case Json::value_t::number_integer:
      return authz::ClaimValue::Number(static_cast<double>(j.get<int64_t>()));
    case Json::value_t::number_unsigned:
      return authz::ClaimValue::Number(static_cast<double>(j.get<uint64_t>()));
    case Json::value_t::number_float:
      return authz::ClaimValue::Number(j.get<double>());
    case Json::value_t::array: {
      authz::ClaimValue::List items;
      for (const Json& item : j) items.push_back(ToClaim(item));
      return authz::ClaimValue::ListOf(std::move(items));
    }
    case Json::value_t::object: {
      authz::ClaimValue::Object members;
      for (auto it = j.begin(); it != j.end(); ++it) members[it.key()] = ToClaim(it.value());
      return authz::ClaimValue::ObjectOf(std::move(members));
    }
    default:
      return authz::ClaimValue();
  }
}

// base64url without padding, as JOSE writes it. absl accepts padding too, as jwt_verify_lib does.
bool DecodeB64Url(absl::string_view in, std::string* out) {
  return absl::WebSafeBase64Unescape(in, out);
}

// A JWK member holding base64url bytes. Absent: empty and true; present but not a string or not
// base64url: false.
bool B64Member(const Json& key, const char* name, std::string* out) {
  auto it = key.find(name);
  if (it == key.end()) return true;
  if (!it->is_string()) return false;
  return DecodeB64Url(it->get_ref<const std::string&>(), out) && !out->empty();
}

std::string StringMember(const Json& key, const char* name, bool* ok) {
  auto it = key.find(name);
  if (it == key.end()) return "";
  if (!it->is_string()) {
    *ok = false;
    return "";
  }
  return it->get_ref<const std::string&>();
}

size_t CurveBytes(absl::string_view crv) {
  if (crv == "P-256") return 32;
  if (crv == "P-384") return 48;
  if (crv == "P-521") return 66;
  return 0;
}

// Why one key is unusable, or "" when it is fine.
std::string CheckKey(const Json& key, Jwk* jwk) {
  if (!key.is_object()) return "is not a JSON object";
  bool ok = true;
  jwk->kty = StringMember(key, "kty", &ok);
  jwk->kid = StringMember(key, "kid", &ok);
  jwk->alg = StringMember(key, "alg", &ok);
  jwk->crv = StringMember(key, "crv", &ok);
  if (!ok) return "kty, kid, alg and crv must be strings";
  if (jwk->kty.empty()) return "has no kty";
  if (!jwk->alg.empty() && !ParseAlgorithm(jwk->alg)) {
    return absl::StrCat("alg '", jwk->alg, "' is not supported");
  }
  const absl::string_view alg = jwk->alg;
  if (jwk->kty == "RSA") {
    if (!B64Member(key, "n", &jwk->n) || !B64Member(key, "e", &jwk->e) || jwk->n.empty() ||
        jwk->e.empty()) {
      return "an RSA key needs n and e in base64url";
    }
    if (!alg.empty() && !absl::StartsWith(alg, "RS") && !absl::StartsWith(alg, "PS")) {
      return absl::StrCat("alg '", alg, "' is not an RSA algorithm");
    }
    if (jwk->n.size() > 1024 || jwk->e.size() > 8) return "the RSA key is too large";
    return "";
  }
  if (jwk->kty == "EC") {
    const size_t bytes = CurveBytes(jwk->crv);
    if (bytes == 0) return absl::StrCat("crv '", jwk->crv, "' is not P-256, P-384 or P-521");
    if (!B64Member(key, "x", &jwk->x) || !B64Member(key, "y", &jwk->y) || jwk->x.size() != bytes ||
        jwk->y.size() != bytes) {
      return absl::StrCat("an EC key on ", jwk->crv, " needs x and y of ", bytes,
                          " bytes in base64url");
    }
    const absl::string_view want = bytes == 32 ? "ES256" : (bytes == 48 ? "ES384" : "ES512");
    if (!alg.empty() && alg != want) {
      return absl::StrCat("alg '", alg, "' does not fit crv ", jwk->crv, " (", want, ")");
    }
    return "";
  }
  if (jwk->kty == "oct") {
    if (!B64Member(key, "k", &jwk->k) || jwk->k.empty()) return "an oct key needs k in base64url";
    if (!alg.empty() && !absl::StartsWith(alg, "HS")) {
      return absl::StrCat("alg '", alg, "' is not an HMAC algorithm");
    }
    return "";
  }
  if (jwk->kty == "OKP") {
    if (jwk->crv != "Ed25519") return absl::StrCat("crv '", jwk->crv, "' is not Ed25519");
    if (!B64Member(key, "x", &jwk->x) || jwk->x.size() != 32) {
      return "an Ed25519 key needs x of 32 bytes in base64url";
    }
    if (!alg.empty() && alg != "EdDSA") return absl::StrCat("alg '", alg, "' is not EdDSA");
    return "";
  }
  return absl::StrCat("kty '", jwk->kty, "' is not RSA, EC, oct or OKP");
}

// DER writing, just enough for SubjectPublicKeyInfo and ECDSA-Sig-Value.
void AppendLength(size_t length, std::string* out) {
  if (length < 0x80) {
    out->push_back(static_cast<char>(length));
    return;
  }
  std::string bytes;
  while (length > 0) {
    bytes.insert(bytes.begin(), static_cast<char>(length & 0xff));
    length >>= 8;
  }
  out->push_back(static_cast<char>(0x80 | bytes.size()));
  out->append(bytes);
}

std::string Tlv(uint8_t tag, absl::string_view content) {
  std::string out(1, static_cast<char>(tag));
  AppendLength(content.size(), &out);
  out.append(content.data(), content.size());
  return out;
}

// A positive INTEGER from big-endian bytes: leading zeros dropped, a 0x00 added before a high bit.
std::string DerUnsigned(absl::string_view bytes) {
  while (bytes.size() > 1 && bytes[0] == '\0') bytes.remove_prefix(1);
  std::string content;
  if (bytes.empty() || (static_cast<uint8_t>(bytes[0]) & 0x80) != 0) content.push_back('\0');
  content.append(bytes.data(), bytes.size());
  return Tlv(0x02, content);
}

// From a literal by its size: OIDs contain zero bytes, which would end a C string early.
template <size_t N>
std::string Oid(const char (&encoded)[N]) {
  return Tlv(0x06, absl::string_view(encoded, N - 1));
}

std::string NormalizeAudience(absl::string_view aud) {
  if (absl::StartsWith(aud, "http://")) {
    aud.remove_prefix(7);
  } else if (absl::StartsWith(aud, "https://")) {
    aud.remove_prefix(8);
  }
  if (absl::EndsWith(aud, "/")) aud.remove_suffix(1);
  return std::string(aud);
}

// exp/nbf/iat: absent is fine; otherwise a non-negative integer.
JwtStatus TimeClaim(const Json& payload, const char* name, JwtStatus not_integer,
                    JwtStatus out_of_range, uint64_t* out) {
  auto it = payload.find(name);
  if (it == payload.end()) return JwtStatus::kOk;
  if (it->is_number_unsigned()) {
    *out = it->get<uint64_t>();
    return JwtStatus::kOk;
  }
  if (it->is_number_integer()) return out_of_range;  // negative
  if (it->is_number_float()) {
    const double v = it->get<double>();
    if (v < 0 || v >= 18446744073709551616.0 || std::floor(v) != v) return out_of_range;
    *out = static_cast<uint64_t>(v);
    return JwtStatus::kOk;
  }
  return not_integer;
}

}  // namespace

absl::string_view StatusText(JwtStatus status) {
  switch (status) {
    case JwtStatus::kOk:
      return "OK";
    case JwtStatus::kMissing:
      return "Jwt is missing";
    case JwtStatus::kNotYetValid:
      return "Jwt not yet valid";
    case JwtStatus::kExpired:
      return "Jwt is expired";
    case JwtStatus::kBadFormat:
      return "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections";
    case JwtStatus::kHeaderBadBase64:
      return "Jwt header is an invalid Base64url encoded";
    case JwtStatus::kHeaderBadJson:
      return "Jwt header is an invalid JSON";
    case JwtStatus::kHeaderBadAlg:
      return "Jwt header [alg] field is required and must be a string";
    case JwtStatus::kHeaderAlgNotImplemented:
      return "Jwt header [alg] is not supported";
    case JwtStatus::kHeaderBadKid:
      return "Jwt header [kid] field is not a string";
    case JwtStatus::kPayloadBadBase64:
      return "Jwt payload is an invalid Base64url encoded";
    case JwtStatus::kPayloadBadJson:
      return "Jwt payload is an invalid JSON";
    case JwtStatus::kIssNotString:
      return "Jwt payload [iss] field is not a string";
    case JwtStatus::kSubNotString:
      return "Jwt payload [sub] field is not a string";
    case JwtStatus::kIatNotInteger:
      return "Jwt payload [iat] field is not an integer";
    case JwtStatus::kIatOutOfRange:
      return "Jwt payload [iat] field is not a positive 64 bit integer";
    case JwtStatus::kNbfNotInteger:
      return "Jwt payload [nbf] field is not an integer";
    case JwtStatus::kNbfOutOfRange:
      return "Jwt payload [nbf] field is not a positive 64 bit integer";
    case JwtStatus::kExpNotInteger:
      return "Jwt payload [exp] field is not an integer";
    case JwtStatus::kExpOutOfRange:
      return "Jwt payload [exp] field is not a positive 64 bit integer";
    case JwtStatus::kJtiNotString:
      return "Jwt payload [jti] field is not a string";
    case JwtStatus::kAudNotString:
      return "Jwt payload [aud] field is not a string or string list";
    case JwtStatus::kSignatureBadBase64:
      return "Jwt signature is an invalid Base64url encoded";
    case JwtStatus::kUnknownIssuer:
      return "Jwt issuer is not configured";
    case JwtStatus::kAudienceNotAllowed:
      return "Audiences in Jwt are not allowed";
    case JwtStatus::kVerificationFail:
      return "Jwt verification fails";
    case JwtStatus::kJwksKidAlgMismatch:
      return "Jwks doesn't have key to match kid or alg from Jwt";
    case JwtStatus::kJwksNoValidKeys:
      return "Jwks doesn't have any valid public key";
    case JwtStatus::kJwksFetchFail:
      return "Jwks remote fetch is failed";
  }
  return "Jwt verification fails";
}

namespace {
constexpr struct {
  absl::string_view name;
  Algorithm alg;
} kAlgorithms[] = {
    {"RS256", Algorithm::kRs256}, {"RS384", Algorithm::kRs384}, {"RS512", Algorithm::kRs512},
    {"PS256", Algorithm::kPs256}, {"PS384", Algorithm::kPs384}, {"PS512", Algorithm::kPs512},
    {"ES256", Algorithm::kEs256}, {"ES384", Algorithm::kEs384}, {"ES512", Algorithm::kEs512},
    {"HS256", Algorithm::kHs256}, {"HS384", Algorithm::kHs384}, {"HS512", Algorithm::kHs512},
    {"EdDSA", Algorithm::kEdDsa},
};
}  // namespace

std::optional<Algorithm> ParseAlgorithm(absl::string_view name) {
  for (const auto& a : kAlgorithms) {
    if (a.name == name) return a.alg;
  }
  return std::nullopt;
}

absl::string_view AlgorithmName(Algorithm alg) {
  for (const auto& a : kAlgorithms) {
    if (a.alg == alg) return a.name;
  }
  return "?";
}

int DigestBits(Algorithm alg) {
  switch (alg) {
    case Algorithm::kRs256:
    case Algorithm::kPs256:
    case Algorithm::kEs256:
    case Algorithm::kHs256:
      return 256;
    case Algorithm::kRs384:
    case Algorithm::kPs384:
    case Algorithm::kEs384:
    case Algorithm::kHs384:
      return 384;
    case Algorithm::kRs512:
    case Algorithm::kPs512:
    case Algorithm::kEs512:
    case Algorithm::kHs512:
      return 512;
    case Algorithm::kEdDsa:
      return 0;
  }
  return 0;
}

absl::StatusOr<Jwks> ParseJwks(absl::string_view json) {
  if (json.size() > kMaxJwksSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("the JWKS is ", json.size(), " bytes, more than the 1 MiB allowed"));
  }
  std::optional<Json> doc = ParseJson(json);
  if (!doc) {
    return absl::InvalidArgumentError(
        absl::StrCat("is not valid JSON (or nests deeper than ", kMaxJsonDepth, " levels)"));
  }
  if (!doc->is_object()) {
    return absl::InvalidArgumentError("must be a JSON object: {\"keys\": [...]}");
  }
  Jwks out;
  auto keys = doc->find("keys");
  std::vector<const Json*> entries;
  if (keys == doc->end()) {
    if (doc->find("kty") == doc->end()) {
      return absl::InvalidArgumentError("has no \"keys\" list (a JWKS is {\"keys\": [...]})");
    }
    entries.push_back(&*doc);  // a lone JWK
  } else {
    if (!keys->is_array()) return absl::InvalidArgumentError("\"keys\" must be a JSON list");
    for (const Json& k : *keys) entries.push_back(&k);
  }
  for (size_t i = 0; i < entries.size(); ++i) {
    Jwk jwk;
    std::string problem = CheckKey(*entries[i], &jwk);
    if (!problem.empty()) {
      out.skipped.push_back(absl::StrCat("keys[", i, "] ", problem));
      continue;
    }
    out.keys.push_back(std::move(jwk));
  }
  if (out.keys.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "has no usable key", out.skipped.empty() ? "" : ": ", absl::StrJoin(out.skipped, "; ")));
  }
  return out;
}

std::string SubjectPublicKeyInfo(const Jwk& key) {
  std::string algorithm;
  std::string bits;
  if (key.kty == "RSA") {
    if (key.n.empty() || key.e.empty()) return "";
    // rsaEncryption 1.2.840.113549.1.1.1, NULL parameters.
    algorithm = Tlv(0x30, Oid("\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01") + Tlv(0x05, ""));
    bits = Tlv(0x30, DerUnsigned(key.n) + DerUnsigned(key.e));
  } else if (key.kty == "EC") {
    std::string curve;
    if (key.crv == "P-256") {
      curve = Oid("\x2a\x86\x48\xce\x3d\x03\x01\x07");  // 1.2.840.10045.3.1.7
    } else if (key.crv == "P-384") {
      curve = Oid("\x2b\x81\x04\x00\x22");  // 1.3.132.0.34
    } else if (key.crv == "P-521") {
      curve = Oid("\x2b\x81\x04\x00\x23");  // 1.3.132.0.35
    } else {
      return "";
    }
    const size_t bytes = CurveBytes(key.crv);
    if (key.x.size() != bytes || key.y.size() != bytes) return "";
    algorithm = Tlv(0x30, Oid("\x2a\x86\x48\xce\x3d\x02\x01") + curve);  // id-ecPublicKey
    bits = "\x04" + key.x + key.y;
  } else {
    return "";
  }
  return Tlv(0x30, algorithm + Tlv(0x03, std::string(1, '\0') + bits));
}

std::string EcdsaRawToDer(absl::string_view raw, size_t half) {
  if (half == 0 || raw.size() != 2 * half) return "";
  return Tlv(0x30, DerUnsigned(raw.substr(0, half)) + DerUnsigned(raw.substr(half)));
}

JwtStatus ParseJwt(absl::string_view token, Jwt* out) {
  if (token.size() > kMaxTokenSize) return JwtStatus::kBadFormat;
  std::vector<absl::string_view> parts = absl::StrSplit(token, '.');
  if (parts.size() != 3) return JwtStatus::kBadFormat;
  Jwt jwt;
  jwt.token = std::string(token);

  std::string header_text;
  if (!DecodeB64Url(parts[0], &header_text)) return JwtStatus::kHeaderBadBase64;
  std::optional<Json> header = ParseJson(header_text);
  if (!header || !header->is_object()) return JwtStatus::kHeaderBadJson;
  auto alg = header->find("alg");
  if (alg == header->end() || !alg->is_string()) return JwtStatus::kHeaderBadAlg;
  std::optional<Algorithm> parsed_alg = ParseAlgorithm(alg->get_ref<const std::string&>());
  if (!parsed_alg) return JwtStatus::kHeaderAlgNotImplemented;  // `none` among them
  jwt.alg = *parsed_alg;
  if (auto kid = header->find("kid"); kid != header->end()) {
    if (!kid->is_string()) return JwtStatus::kHeaderBadKid;
    jwt.kid = kid->get_ref<const std::string&>();
  }

  std::string payload_text;
  if (!DecodeB64Url(parts[1], &payload_text)) return JwtStatus::kPayloadBadBase64;
  std::optional<Json> payload = ParseJson(payload_text);
  if (!payload || !payload->is_object()) return JwtStatus::kPayloadBadJson;
  if (auto iss = payload->find("iss"); iss != payload->end()) {
    if (!iss->is_string()) return JwtStatus::kIssNotString;
    jwt.iss = iss->get_ref<const std::string&>();
  }
  if (auto sub = payload->find("sub"); sub != payload->end()) {
    if (!sub->is_string()) return JwtStatus::kSubNotString;
    jwt.sub = sub->get_ref<const std::string&>();
  }
  if (JwtStatus s = TimeClaim(*payload, "iat", JwtStatus::kIatNotInteger, JwtStatus::kIatOutOfRange,
                              &jwt.iat);
      s != JwtStatus::kOk) {
    return s;
  }
  if (JwtStatus s = TimeClaim(*payload, "nbf", JwtStatus::kNbfNotInteger, JwtStatus::kNbfOutOfRange,
                              &jwt.nbf);
      s != JwtStatus::kOk) {
    return s;
  }
  if (JwtStatus s = TimeClaim(*payload, "exp", JwtStatus::kExpNotInteger, JwtStatus::kExpOutOfRange,
                              &jwt.exp);
      s != JwtStatus::kOk) {
    return s;
  }
  if (auto jti = payload->find("jti"); jti != payload->end() && !jti->is_string()) {
    return JwtStatus::kJtiNotString;
  }
  if (auto aud = payload->find("aud"); aud != payload->end()) {
    if (aud->is_string()) {
      jwt.audiences.push_back(aud->get_ref<const std::string&>());
    } else if (aud->is_array()) {
      for (const Json& a : *aud) {
        if (!a.is_string()) return JwtStatus::kAudNotString;
        jwt.audiences.push_back(a.get_ref<const std::string&>());
      }
    } else {
      return JwtStatus::kAudNotString;
    }
  }
  if (!DecodeB64Url(parts[2], &jwt.signature) || jwt.signature.empty()) {
    return JwtStatus::kSignatureBadBase64;
  }
  jwt.claims = ToClaim(*payload);
  jwt.payload_b64 = std::string(parts[1]);
  jwt.signing_input = absl::StrCat(parts[0], ".", parts[1]);
  *out = std::move(jwt);
  return JwtStatus::kOk;
}

JwtStatus CheckTime(const Jwt& jwt, int64_t now) {
  // Compared in unsigned arithmetic; a clock before 1970 counts as 0.
  const uint64_t t = now < 0 ? 0 : static_cast<uint64_t>(now);
  if (jwt.nbf != 0 && t + kClockSkewSeconds < jwt.nbf) return JwtStatus::kNotYetValid;
  if (jwt.exp != 0 && jwt.exp < std::numeric_limits<uint64_t>::max() - kClockSkewSeconds &&
      t > jwt.exp + kClockSkewSeconds) {
    return JwtStatus::kExpired;
  }
  return JwtStatus::kOk;
}

bool AudienceAllowed(const Jwt& jwt, const std::vector<std::string>& allowed) {
  if (allowed.empty()) return true;
  for (const std::string& a : allowed) {
    const std::string want = NormalizeAudience(a);
    for (const std::string& have : jwt.audiences) {
      if (NormalizeAudience(have) == want) return true;
    }
  }
  return false;
}

std::optional<authz::ClaimValue> ParseJsonClaims(absl::string_view json) {
  std::optional<Json> doc = ParseJson(json);
  if (!doc) return std::nullopt;
  return ToClaim(*doc);
}

}  // namespace ambit::authn
