#include "agent/ca/certificate_authority.h"

#include <errno.h>
#include <openssl/asn1.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/memory/memory.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/ca/openssl_util.h"
#include "agent/common/formats.h"
#include "agent/common/log.h"
#include "agent/common/status.h"

namespace ambit::ca {

using internal::Asn1BitStringPtr;
using internal::Asn1Ia5StringPtr;
using internal::Asn1OctetStringPtr;
using internal::AuthorityKeyIdPtr;
using internal::BasicConstraintsPtr;
using internal::BignumPtr;
using internal::BioPtr;
using internal::EvpPkeyPtr;
using internal::ExtendedKeyUsagePtr;
using internal::GeneralNamePtr;
using internal::GeneralNamesPtr;
using internal::OpenSslError;
using internal::X509ExtensionPtr;
using internal::X509ExtensionStackPtr;
using internal::X509NamePtr;
using internal::X509Ptr;
using internal::X509ReqPtr;
using internal::X509StackPtr;
using internal::X509StoreCtxPtr;
using internal::X509StorePtr;

// Everything Sign needs, fixed at Create. Only read afterwards, so concurrent signing is safe
// (OpenSSL 3 objects may be shared read-only between threads once set up).
struct SigningMaterial {
  X509Ptr cert;         // the certificate leaves are signed under
  EvpPkeyPtr key;       // its private key
  X509NamePtr subject;  // cert's subject, encoded once so copying it never mutates it
  std::string key_id;   // cert's subjectKeyIdentifier, becomes the leaves' authorityKeyIdentifier
  const EVP_MD* digest = nullptr;  // null for EdDSA keys
  absl::Time not_after;
  std::vector<std::string> chain_pem;  // cert, intermediates, root: what follows a leaf
  std::vector<std::string> trust_bundle_pem;
  std::string issuer_name;
  std::string trust_domain;  // the one Create was given; the CA's current one is its own
  absl::Duration default_ttl;
  absl::Duration max_ttl;
  const Clock* clock = nullptr;
};

namespace {

constexpr size_t kMaxCsrBytes = 64 * 1024;
constexpr size_t kMaxPemFileBytes = 1024 * 1024;
// Leaves start a little in the past so a peer whose clock is slightly behind accepts them.
constexpr absl::Duration kClockSkew = absl::Minutes(1);
constexpr absl::Duration kRootLifetime = absl::Hours(24 * 3653);  // ten years with leap days
constexpr int kMaxCommonNameLength = 64;                          // ub-common-name, RFC 5280

constexpr char kRootCertFile[] = "root-cert.pem";
constexpr char kRootKeyFile[] = "root-key.pem";
constexpr char kCaCertFile[] = "ca-cert.pem";
constexpr char kCaKeyFile[] = "ca-key.pem";
constexpr char kCertChainFile[] = "cert-chain.pem";

// Key usage bit positions (RFC 5280 section 4.2.1.3).
constexpr int kDigitalSignature = 0;
constexpr int kKeyEncipherment = 2;
constexpr int kKeyCertSign = 5;
constexpr int kCrlSign = 6;

// Bytes from a peer's CSR, made safe to put in an error message.
std::string Quote(absl::string_view untrusted) {
  constexpr size_t kMax = 200;
  std::string escaped = absl::CEscape(untrusted.substr(0, kMax));
  if (untrusted.size() > kMax) escaped += "...";
  return absl::StrCat("\"", escaped, "\"");
}

void Wipe(std::string& secret) { OPENSSL_cleanse(secret.data(), secret.size()); }

std::string OneLineName(const X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr ||
      X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB) < 0) {
    ERR_clear_error();
    return std::string();
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return len > 0 ? std::string(data, static_cast<size_t>(len)) : std::string();
}

absl::Status AddExtension(X509* cert, int nid, void* value, bool critical) {
  if (X509_add1_ext_i2d(cert, nid, value, critical ? 1 : 0, X509V3_ADD_REPLACE) != 1) {
    return OpenSslError(absl::StatusCode::kInternal,
                        absl::StrCat("add extension ", OBJ_nid2sn(nid)));
  }
  return absl::OkStatus();
}

absl::Status SetRandomSerial(X509* cert) {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "RAND_bytes for a serial number");
  }
  // The top bit set makes every serial exactly 128 bits; as a DER INTEGER it stays positive.
  bytes[0] |= 0x80;
  BignumPtr bn(BN_bin2bn(bytes, sizeof(bytes), nullptr));
  if (bn == nullptr || BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert)) == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "set serial number");
  }
  return absl::OkStatus();
}

absl::Status SetValidity(X509* cert, absl::Time not_before, absl::Time not_after) {
  if (ASN1_TIME_set(X509_getm_notBefore(cert), absl::ToTimeT(not_before)) == nullptr ||
      ASN1_TIME_set(X509_getm_notAfter(cert), absl::ToTimeT(not_after)) == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "set validity");
  }
  return absl::OkStatus();
}

// RFC 5280 section 4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits.
absl::StatusOr<std::string> PublicKeyId(const X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_pubkey_digest(cert, EVP_sha1(), md, &len) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "hash public key");
  }
  return std::string(reinterpret_cast<const char*>(md), len);
}

absl::StatusOr<Asn1OctetStringPtr> OctetString(absl::string_view bytes) {
  Asn1OctetStringPtr s(ASN1_OCTET_STRING_new());
  if (s == nullptr ||
      ASN1_OCTET_STRING_set(s.get(), reinterpret_cast<const unsigned char*>(bytes.data()),
                            static_cast<int>(bytes.size())) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "ASN1_OCTET_STRING_set");
  }
  return s;
}

absl::Status AddKeyIdentifiers(X509* cert, absl::string_view authority_key_id) {
  AMBIT_ASSIGN_OR_RETURN(std::string subject_key_id, PublicKeyId(cert));
  AMBIT_ASSIGN_OR_RETURN(Asn1OctetStringPtr skid, OctetString(subject_key_id));
  AMBIT_RETURN_IF_ERROR(AddExtension(cert, NID_subject_key_identifier, skid.get(), false));
  AuthorityKeyIdPtr akid(AUTHORITY_KEYID_new());
  if (akid == nullptr) return OpenSslError(absl::StatusCode::kInternal, "AUTHORITY_KEYID_new");
  AMBIT_ASSIGN_OR_RETURN(Asn1OctetStringPtr keyid, OctetString(authority_key_id));
  akid->keyid = keyid.release();
  return AddExtension(cert, NID_authority_key_identifier, akid.get(), false);
}

absl::Status AddBasicConstraints(X509* cert, bool ca) {
  BasicConstraintsPtr bc(BASIC_CONSTRAINTS_new());
  if (bc == nullptr) return OpenSslError(absl::StatusCode::kInternal, "BASIC_CONSTRAINTS_new");
  bc->ca = ca ? 1 : 0;
  return AddExtension(cert, NID_basic_constraints, bc.get(), true);
}

absl::Status AddKeyUsage(X509* cert, std::initializer_list<int> bits) {
  Asn1BitStringPtr usage(ASN1_BIT_STRING_new());
  if (usage == nullptr) return OpenSslError(absl::StatusCode::kInternal, "ASN1_BIT_STRING_new");
  for (int bit : bits) {
    if (ASN1_BIT_STRING_set_bit(usage.get(), bit, 1) != 1) {
      return OpenSslError(absl::StatusCode::kInternal, "set key usage");
    }
  }
  return AddExtension(cert, NID_key_usage, usage.get(), true);
}

absl::Status AddExtendedKeyUsage(X509* cert, std::initializer_list<int> purposes) {
  ExtendedKeyUsagePtr eku(sk_ASN1_OBJECT_new_null());
  if (eku == nullptr) return OpenSslError(absl::StatusCode::kInternal, "sk_ASN1_OBJECT_new_null");
  for (int nid : purposes) {
    // OBJ_nid2obj returns a static object; freeing the stack leaves it alone.
    if (sk_ASN1_OBJECT_push(eku.get(), OBJ_nid2obj(nid)) == 0) {
      return OpenSslError(absl::StatusCode::kInternal, "build extendedKeyUsage");
    }
  }
  return AddExtension(cert, NID_ext_key_usage, eku.get(), false);
}

absl::Status AddStringName(GENERAL_NAMES* names, int type, absl::string_view value) {
  Asn1Ia5StringPtr s(ASN1_IA5STRING_new());
  if (s == nullptr || ASN1_STRING_set(s.get(), value.data(), static_cast<int>(value.size())) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "ASN1_STRING_set");
  }
  GeneralNamePtr name(GENERAL_NAME_new());
  if (name == nullptr) return OpenSslError(absl::StatusCode::kInternal, "GENERAL_NAME_new");
  GENERAL_NAME_set0_value(name.get(), type, s.release());
  if (sk_GENERAL_NAME_push(names, name.get()) == 0) {
    return OpenSslError(absl::StatusCode::kInternal, "add subjectAltName entry");
  }
  name.release();
  return absl::OkStatus();
}

absl::Status AddIpName(GENERAL_NAMES* names, Asn1OctetStringPtr address) {
  GeneralNamePtr name(GENERAL_NAME_new());
  if (name == nullptr) return OpenSslError(absl::StatusCode::kInternal, "GENERAL_NAME_new");
  GENERAL_NAME_set0_value(name.get(), GEN_IPADD, address.release());
  if (sk_GENERAL_NAME_push(names, name.get()) == 0) {
    return OpenSslError(absl::StatusCode::kInternal, "add subjectAltName entry");
  }
  name.release();
  return absl::OkStatus();
}

absl::StatusOr<GeneralNamesPtr> NewGeneralNames() {
  GeneralNamesPtr names(GENERAL_NAMES_new());
  if (names == nullptr) return OpenSslError(absl::StatusCode::kInternal, "GENERAL_NAMES_new");
  return names;
}

const EVP_MD* DigestFor(const EVP_PKEY* key) {
  if (EVP_PKEY_is_a(key, "ED25519") || EVP_PKEY_is_a(key, "ED448")) return nullptr;
  if (EVP_PKEY_is_a(key, "EC")) {
    int bits = EVP_PKEY_get_bits(key);
    if (bits > 384) return EVP_sha512();
    if (bits > 256) return EVP_sha384();
  }
  return EVP_sha256();
}

absl::Status SignCertificate(X509* cert, EVP_PKEY* key, const EVP_MD* digest) {
  if (X509_sign(cert, key, digest) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "sign certificate");
  }
  return absl::OkStatus();
}

struct LeafSpec {
  EVP_PKEY* public_key = nullptr;
  GENERAL_NAMES* names = nullptr;
  absl::Time not_before;
  absl::Time not_after;
  bool client_auth = true;
};

// The leaf profile of an SVID (and of the CA's serving certificate): an empty subject, so the
// subjectAltName is critical (RFC 5280 section 4.2.1.6), and nothing else identifying.
absl::StatusOr<X509Ptr> IssueLeaf(const SigningMaterial& m, const LeafSpec& spec) {
  X509Ptr cert(X509_new());
  if (cert == nullptr) return OpenSslError(absl::StatusCode::kInternal, "X509_new");
  if (X509_set_version(cert.get(), X509_VERSION_3) != 1 ||
      X509_set_issuer_name(cert.get(), m.subject.get()) != 1 ||
      X509_set_pubkey(cert.get(), spec.public_key) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "build certificate");
  }
  AMBIT_RETURN_IF_ERROR(SetRandomSerial(cert.get()));
  AMBIT_RETURN_IF_ERROR(SetValidity(cert.get(), spec.not_before, spec.not_after));
  AMBIT_RETURN_IF_ERROR(AddBasicConstraints(cert.get(), /*ca=*/false));
  AMBIT_RETURN_IF_ERROR(AddKeyUsage(cert.get(), {kDigitalSignature, kKeyEncipherment}));
  if (spec.client_auth) {
    AMBIT_RETURN_IF_ERROR(AddExtendedKeyUsage(cert.get(), {NID_server_auth, NID_client_auth}));
  } else {
    AMBIT_RETURN_IF_ERROR(AddExtendedKeyUsage(cert.get(), {NID_server_auth}));
  }
  AMBIT_RETURN_IF_ERROR(AddExtension(cert.get(), NID_subject_alt_name, spec.names, true));
  AMBIT_RETURN_IF_ERROR(AddKeyIdentifiers(cert.get(), m.key_id));
  AMBIT_RETURN_IF_ERROR(SignCertificate(cert.get(), m.key.get(), m.digest));
  return cert;
}

absl::StatusOr<absl::Duration> LeafLifetime(const SigningMaterial& m, absl::Duration ttl) {
  if (ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("requested lifetime ", absl::FormatDuration(ttl), " is negative"));
  }
  if (ttl == absl::ZeroDuration()) ttl = m.default_ttl;
  return std::min(ttl, m.max_ttl);
}

// The validity window of a new leaf, never past the signing certificate's own expiry.
absl::StatusOr<std::pair<absl::Time, absl::Time>> LeafValidity(const SigningMaterial& m,
                                                               absl::Duration lifetime) {
  absl::Time now = m.clock->Now();
  if (now >= m.not_after) {
    return absl::FailedPreconditionError(
        absl::StrCat("the CA's signing certificate (", m.issuer_name, ") expired at ",
                     FormatTimestamp(m.not_after), "; replace it"));
  }
  return std::make_pair(now - kClockSkew, std::min(now + lifetime, m.not_after));
}

absl::Status CheckIdentity(absl::string_view identity, absl::string_view trust_domain) {
  const std::string prefix = absl::StrCat("spiffe://", trust_domain, "/");
  bool printable =
      std::all_of(identity.begin(), identity.end(), [](char c) { return c > 0x20 && c < 0x7f; });
  if (!printable || identity.size() <= prefix.size() || !absl::StartsWith(identity, prefix)) {
    return absl::InvalidArgumentError(absl::StrCat("identity ", Quote(identity),
                                                   " is not a SPIFFE ID in trust domain ",
                                                   trust_domain, " (", prefix, "...)"));
  }
  return absl::OkStatus();
}

absl::Status CheckCsrKey(const EVP_PKEY* key) {
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        "CSR public key is missing or uses an unsupported algorithm; use ECDSA P-256");
  }
  if (EVP_PKEY_is_a(key, "EC")) {
    char group[80] = {};
    size_t len = 0;
    if (EVP_PKEY_get_group_name(key, group, sizeof(group), &len) != 1) {
      return absl::InvalidArgumentError(
          "CSR EC key has no named curve (explicit curve parameters are not accepted)");
    }
    int nid = OBJ_txt2nid(group);
    if (nid != NID_X9_62_prime256v1 && nid != NID_secp384r1) {
      return absl::InvalidArgumentError(
          absl::StrCat("CSR EC key is on curve ", group, "; only P-256 and P-384 are accepted"));
    }
    return absl::OkStatus();
  }
  if (EVP_PKEY_is_a(key, "RSA")) {
    int bits = EVP_PKEY_get_bits(key);
    // The upper bound keeps a hostile CSR from making the CA do very expensive arithmetic.
    if (bits < 2048 || bits > 8192) {
      return absl::InvalidArgumentError(
          absl::StrCat("CSR RSA key has ", bits, " bits; between 2048 and 8192 are accepted"));
    }
    return absl::OkStatus();
  }
  const char* type = EVP_PKEY_get0_type_name(key);
  return absl::InvalidArgumentError(
      absl::StrCat("CSR key type ", type != nullptr ? type : "(unknown)",
                   " is not accepted; use ECDSA P-256/P-384 or RSA with at least 2048 bits"));
}

// The CSR's subjectAltName must be exactly one URI, equal to identity.
absl::Status CheckCsrNames(X509_REQ* csr, absl::string_view identity) {
  X509ExtensionStackPtr extensions(X509_REQ_get_extensions(csr));
  ERR_clear_error();  // A CSR without an extension request leaves a harmless error behind.
  int critical = -1;
  GeneralNamesPtr names;
  if (extensions != nullptr) {
    names.reset(static_cast<GENERAL_NAMES*>(
        X509V3_get_d2i(extensions.get(), NID_subject_alt_name, &critical, nullptr)));
  }
  if (names == nullptr) {
    ERR_clear_error();
    if (critical == -2) {
      return absl::InvalidArgumentError("CSR has more than one subjectAltName extension");
    }
    if (critical >= 0) return absl::InvalidArgumentError("CSR subjectAltName is malformed");
    return absl::InvalidArgumentError(
        absl::StrCat("CSR has no subjectAltName; it needs exactly one URI SAN, ", identity));
  }
  std::vector<std::string> uris;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
    int type = 0;
    const void* value = GENERAL_NAME_get0_value(name, &type);
    auto text = [value] {
      const auto* s = static_cast<const ASN1_STRING*>(value);
      return absl::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                               static_cast<size_t>(ASN1_STRING_length(s)));
    };
    switch (type) {
      case GEN_URI:
        uris.emplace_back(text());
        break;
      case GEN_DNS:
        return absl::InvalidArgumentError(absl::StrCat(
            "CSR subjectAltName has a DNS name ", Quote(text()), "; an SVID carries only its URI"));
      case GEN_IPADD:
        return absl::InvalidArgumentError(
            "CSR subjectAltName has an IP address; an SVID carries only its URI");
      case GEN_EMAIL:
        return absl::InvalidArgumentError(absl::StrCat("CSR subjectAltName has an email address ",
                                                       Quote(text()),
                                                       "; an SVID carries only its URI"));
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("CSR subjectAltName has a name of type ", type,
                         " (otherName, directoryName, ...); an SVID carries only its URI"));
    }
  }
  if (uris.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CSR subjectAltName has ", uris.size(), " URIs; exactly one, ", identity, ", is allowed"));
  }
  if (uris[0] != identity) {
    return absl::InvalidArgumentError(absl::StrCat("CSR asks for URI ", Quote(uris[0]),
                                                   " but the caller's identity is ", identity));
  }
  return absl::OkStatus();
}

// A CA certificate in the sense a verifier checks: basicConstraints CA:TRUE and, if keyUsage is
// present, keyCertSign.
absl::Status CheckIsCa(X509* cert, absl::string_view file) {
  uint32_t flags = X509_get_extension_flags(cert);
  if ((flags & EXFLAG_INVALID) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(file,
                                                      ": the certificate has malformed or "
                                                      "duplicate extensions"));
  }
  if ((flags & EXFLAG_CA) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(file, ": the certificate is not a CA (basicConstraints CA:TRUE missing)"));
  }
  if ((X509_get_key_usage(cert) & KU_KEY_CERT_SIGN) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(file, ": the certificate's keyUsage lacks keyCertSign"));
  }
  return absl::OkStatus();
}

absl::Status CheckSigningKey(X509* cert, EVP_PKEY* key, absl::string_view key_file,
                             absl::string_view cert_file) {
  if (!EVP_PKEY_is_a(key, "EC") && !EVP_PKEY_is_a(key, "RSA") && !EVP_PKEY_is_a(key, "ED25519") &&
      !EVP_PKEY_is_a(key, "ED448")) {
    return absl::FailedPreconditionError(
        absl::StrCat(key_file, ": unsupported key type; use ECDSA, RSA or EdDSA"));
  }
  if (X509_check_private_key(cert, key) != 1) {
    ERR_clear_error();
    return absl::FailedPreconditionError(
        absl::StrCat(key_file, ": the private key does not match the certificate in ", cert_file));
  }
  return absl::OkStatus();
}

absl::StatusOr<X509Ptr> ParseOneCertificate(absl::string_view pem, absl::string_view file) {
  AMBIT_ASSIGN_OR_RETURN(std::vector<X509Ptr> certs, internal::ParseCertificates(pem, file));
  if (certs.size() != 1) {
    return absl::FailedPreconditionError(
        absl::StrCat(file, ": holds ", certs.size(),
                     " certificates; expected exactly one (the signing certificate)"));
  }
  return std::move(certs[0]);
}

absl::StatusOr<EvpPkeyPtr> ReadPrivateKey(const std::string& path) {
  AMBIT_ASSIGN_OR_RETURN(std::string pem, internal::ReadFile(path, kMaxPemFileBytes));
  absl::Cleanup wipe = [&pem] { Wipe(pem); };
  return internal::ParsePrivateKey(pem, path);
}

absl::StatusOr<bool> FileExists(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) return true;
  if (errno == ENOENT) return false;
  return absl::ErrnoToStatus(errno, absl::StrCat("stat ", path));
}

// Fills in what every signing source shares, from its certificate and key.
absl::StatusOr<std::unique_ptr<SigningMaterial>> NewMaterial(X509Ptr cert, EvpPkeyPtr key) {
  auto m = std::make_unique<SigningMaterial>();
  m->subject.reset(X509_NAME_dup(X509_get_subject_name(cert.get())));
  if (m->subject == nullptr || i2d_X509_NAME(m->subject.get(), nullptr) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "copy the CA's subject name");
  }
  if (const ASN1_OCTET_STRING* skid = X509_get0_subject_key_id(cert.get()); skid != nullptr) {
    m->key_id.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(skid)),
                     static_cast<size_t>(ASN1_STRING_length(skid)));
  } else {
    AMBIT_ASSIGN_OR_RETURN(m->key_id, PublicKeyId(cert.get()));
  }
  AMBIT_ASSIGN_OR_RETURN(m->not_after, internal::Asn1TimeToTime(X509_get0_notAfter(cert.get())));
  m->digest = DigestFor(key.get());
  m->issuer_name = OneLineName(X509_get_subject_name(cert.get()));
  m->cert = std::move(cert);
  m->key = std::move(key);
  return m;
}

// Istio's cacerts plug-in layout. Returns null when the directory holds none of its files.
absl::StatusOr<std::unique_ptr<SigningMaterial>> LoadCacerts(const CaOptions& options,
                                                             absl::Time now) {
  auto path = [&options](const char* file) { return absl::StrCat(options.cacerts_dir, "/", file); };
  std::vector<std::string> present;
  std::vector<std::string> missing;
  for (const char* file : {kCaCertFile, kCaKeyFile, kRootCertFile, kCertChainFile}) {
    AMBIT_ASSIGN_OR_RETURN(bool exists, FileExists(path(file)));
    (exists ? present : missing).push_back(file);
  }
  if (present.empty()) return nullptr;
  if (!missing.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cacerts directory ", options.cacerts_dir, " has ", absl::StrJoin(present, ", "),
        " but not ", absl::StrJoin(missing, ", "),
        ": the cacerts layout needs ca-cert.pem, ca-key.pem, root-cert.pem and cert-chain.pem"));
  }

  const std::string ca_cert_path = path(kCaCertFile);
  const std::string ca_key_path = path(kCaKeyFile);
  const std::string root_path = path(kRootCertFile);
  const std::string chain_path = path(kCertChainFile);
  AMBIT_ASSIGN_OR_RETURN(std::string ca_cert_pem,
                         internal::ReadFile(ca_cert_path, kMaxPemFileBytes));
  AMBIT_ASSIGN_OR_RETURN(X509Ptr ca_cert, ParseOneCertificate(ca_cert_pem, ca_cert_path));
  AMBIT_ASSIGN_OR_RETURN(EvpPkeyPtr ca_key, ReadPrivateKey(ca_key_path));
  AMBIT_ASSIGN_OR_RETURN(std::string root_pem, internal::ReadFile(root_path, kMaxPemFileBytes));
  AMBIT_ASSIGN_OR_RETURN(std::vector<X509Ptr> roots,
                         internal::ParseCertificates(root_pem, root_path));
  AMBIT_ASSIGN_OR_RETURN(std::string chain_pem, internal::ReadFile(chain_path, kMaxPemFileBytes));
  AMBIT_ASSIGN_OR_RETURN(std::vector<X509Ptr> chain,
                         internal::ParseCertificates(chain_pem, chain_path, /*allow_empty=*/true));

  AMBIT_RETURN_IF_ERROR(CheckIsCa(ca_cert.get(), ca_cert_path));
  AMBIT_RETURN_IF_ERROR(CheckSigningKey(ca_cert.get(), ca_key.get(), ca_key_path, ca_cert_path));

  // ca-cert must chain to a root of root-cert.pem through cert-chain.pem, at the injected time.
  X509StorePtr store(X509_STORE_new());
  X509StackPtr untrusted(sk_X509_new_null());
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (store == nullptr || untrusted == nullptr || ctx == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "allocate certificate verifier");
  }
  for (const X509Ptr& root : roots) {
    if (X509_STORE_add_cert(store.get(), root.get()) != 1) {
      return OpenSslError(absl::StatusCode::kFailedPrecondition,
                          absl::StrCat(root_path, ": cannot use a root"));
    }
  }
  for (const X509Ptr& cert : chain) {
    if (X509_up_ref(cert.get()) != 1) return OpenSslError(absl::StatusCode::kInternal, "up_ref");
    X509Ptr ref(cert.get());
    if (sk_X509_push(untrusted.get(), ref.get()) == 0) {
      return OpenSslError(absl::StatusCode::kInternal, "build untrusted chain");
    }
    ref.release();
  }
  if (X509_STORE_CTX_init(ctx.get(), store.get(), ca_cert.get(), untrusted.get()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "X509_STORE_CTX_init");
  }
  X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx.get()), absl::ToTimeT(now));
  if (X509_verify_cert(ctx.get()) != 1) {
    int error = X509_STORE_CTX_get_error(ctx.get());
    int depth = X509_STORE_CTX_get_error_depth(ctx.get());
    ERR_clear_error();
    return absl::FailedPreconditionError(absl::StrCat(
        ca_cert_path, " does not chain to a root in ", root_path, " (intermediates from ",
        chain_path, "): ", X509_verify_cert_error_string(error), " (certificate at depth ", depth,
        ", 0 being ca-cert.pem)"));
  }
  X509StackPtr verified(X509_STORE_CTX_get1_chain(ctx.get()));
  if (verified == nullptr) return OpenSslError(absl::StatusCode::kInternal, "get verified chain");

  AMBIT_ASSIGN_OR_RETURN(auto m, NewMaterial(std::move(ca_cert), std::move(ca_key)));
  for (int i = 0; i < sk_X509_num(verified.get()); ++i) {
    m->chain_pem.push_back(internal::CertificateToPem(sk_X509_value(verified.get(), i)));
  }
  for (const X509Ptr& root : roots) {
    m->trust_bundle_pem.push_back(internal::CertificateToPem(root.get()));
  }
  AMBIT_LOG("ca", Info) << "signing with the operator's CA from " << options.cacerts_dir << " ("
                        << m->issuer_name << ")";
  return m;
}

absl::StatusOr<std::pair<X509Ptr, EvpPkeyPtr>> GenerateRoot(absl::string_view trust_domain,
                                                            absl::Time now) {
  AMBIT_ASSIGN_OR_RETURN(EvpPkeyPtr key, internal::GenerateP256Key());
  X509Ptr cert(X509_new());
  X509NamePtr name(X509_NAME_new());
  if (cert == nullptr || name == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "allocate root certificate");
  }
  std::string common_name = absl::StrCat("ambit root CA ", trust_domain);
  common_name.resize(std::min<size_t>(common_name.size(), kMaxCommonNameLength));
  if (X509_NAME_add_entry_by_txt(name.get(), "O", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>("ambit"), -1, -1, 0) != 1 ||
      X509_NAME_add_entry_by_txt(name.get(), "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(common_name.c_str()), -1,
                                 -1, 0) != 1 ||
      X509_set_version(cert.get(), X509_VERSION_3) != 1 ||
      X509_set_subject_name(cert.get(), name.get()) != 1 ||
      X509_set_issuer_name(cert.get(), name.get()) != 1 ||
      X509_set_pubkey(cert.get(), key.get()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "build root certificate");
  }
  AMBIT_RETURN_IF_ERROR(SetRandomSerial(cert.get()));
  AMBIT_RETURN_IF_ERROR(SetValidity(cert.get(), now - kClockSkew, now + kRootLifetime));
  AMBIT_RETURN_IF_ERROR(AddBasicConstraints(cert.get(), /*ca=*/true));
  AMBIT_RETURN_IF_ERROR(AddKeyUsage(cert.get(), {kKeyCertSign, kCrlSign}));
  AMBIT_ASSIGN_OR_RETURN(std::string key_id, PublicKeyId(cert.get()));
  AMBIT_RETURN_IF_ERROR(AddKeyIdentifiers(cert.get(), key_id));
  AMBIT_RETURN_IF_ERROR(SignCertificate(cert.get(), key.get(), EVP_sha256()));
  return std::make_pair(std::move(cert), std::move(key));
}

absl::Status MakePrivateDirectory(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) < 0 && errno != EEXIST) {
    return absl::ErrnoToStatus(errno, absl::StrCat("create directory ", dir));
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) < 0) return absl::ErrnoToStatus(errno, absl::StrCat("stat ", dir));
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " exists and is not a directory"));
  }
  if ((st.st_mode & 07777) != 0700 && ::chmod(dir.c_str(), 0700) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("chmod 0700 ", dir));
  }
  return absl::OkStatus();
}

// The root in <state_dir>/ca/, generated on first start.
absl::StatusOr<std::unique_ptr<SigningMaterial>> LoadOrGenerateRoot(const CaOptions& options,
                                                                    absl::Time now) {
  if (options.state_dir.empty()) {
    return absl::InvalidArgumentError(
        "the CA needs a state directory for its root (or a cacerts directory); none was given");
  }
  // The default, /var/lib/ambit/<instance>, has a parent a fresh machine does not have yet.
  if (const auto parent = std::filesystem::path(options.state_dir).parent_path(); !parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) {
      return absl::ErrnoToStatus(
          ec.value(), absl::StrCat("create the parent of state directory ", options.state_dir));
    }
  }
  if (::mkdir(options.state_dir.c_str(), 0700) < 0 && errno != EEXIST) {
    return absl::ErrnoToStatus(errno, absl::StrCat("create state directory ", options.state_dir));
  }
  const std::string dir = absl::StrCat(options.state_dir, "/ca");
  AMBIT_RETURN_IF_ERROR(MakePrivateDirectory(dir));
  const std::string cert_path = absl::StrCat(dir, "/", kRootCertFile);
  const std::string key_path = absl::StrCat(dir, "/", kRootKeyFile);
  AMBIT_ASSIGN_OR_RETURN(bool have_cert, FileExists(cert_path));
  AMBIT_ASSIGN_OR_RETURN(bool have_key, FileExists(key_path));

  X509Ptr cert;
  EvpPkeyPtr key;
  if (have_cert != have_key) {
    return absl::FailedPreconditionError(absl::StrCat(
        have_cert ? key_path : cert_path, " is missing but ", have_cert ? cert_path : key_path,
        " exists: restore it, or remove both to generate a new root (every workload then needs "
        "new certificates and peers must trust the new root)"));
  }
  if (have_cert) {
    AMBIT_ASSIGN_OR_RETURN(std::string pem, internal::ReadFile(cert_path, kMaxPemFileBytes));
    AMBIT_ASSIGN_OR_RETURN(cert, ParseOneCertificate(pem, cert_path));
    AMBIT_ASSIGN_OR_RETURN(key, ReadPrivateKey(key_path));
    AMBIT_RETURN_IF_ERROR(CheckIsCa(cert.get(), cert_path));
    AMBIT_RETURN_IF_ERROR(CheckSigningKey(cert.get(), key.get(), key_path, cert_path));
    struct stat st;
    if (::stat(key_path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
      AMBIT_LOG("ca", Warning) << key_path << " was readable by others; setting mode 0600";
      if (::chmod(key_path.c_str(), 0600) < 0) {
        return absl::ErrnoToStatus(errno, absl::StrCat("chmod 0600 ", key_path));
      }
    }
  } else {
    AMBIT_ASSIGN_OR_RETURN(auto generated, GenerateRoot(options.trust_domain, now));
    cert = std::move(generated.first);
    key = std::move(generated.second);
    AMBIT_ASSIGN_OR_RETURN(std::string key_pem, internal::PrivateKeyToPem(key.get()));
    absl::Cleanup wipe = [&key_pem] { Wipe(key_pem); };
    // The key first: a crash in between leaves a key without a certificate, which is reported.
    AMBIT_RETURN_IF_ERROR(internal::WriteFileAtomically(key_path, key_pem, 0600));
    AMBIT_RETURN_IF_ERROR(
        internal::WriteFileAtomically(cert_path, internal::CertificateToPem(cert.get()), 0644));
    AMBIT_LOG("ca", Info) << "generated a new root CA in " << dir;
  }

  std::string root_pem = internal::CertificateToPem(cert.get());
  AMBIT_ASSIGN_OR_RETURN(auto m, NewMaterial(std::move(cert), std::move(key)));
  if (now >= m->not_after) {
    return absl::FailedPreconditionError(absl::StrCat(
        cert_path, ": the root expired at ", FormatTimestamp(m->not_after), "; remove ", dir,
        " to generate a new one (peers must then trust the new root)"));
  }
  m->chain_pem.push_back(root_pem);
  m->trust_bundle_pem.push_back(std::move(root_pem));
  return m;
}

absl::Status CheckTrustDomain(absl::string_view trust_domain) {
  // SPIFFE: lowercase letters, digits, dots, dashes and underscores, at most 255 characters.
  bool valid =
      !trust_domain.empty() && trust_domain.size() <= 255 &&
      std::all_of(trust_domain.begin(), trust_domain.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
      });
  if (!valid) {
    return absl::InvalidArgumentError(
        absl::StrCat("trust domain ", Quote(trust_domain),
                     " is invalid: use 1-255 lowercase letters, digits, '.', '-' or '_'"));
  }
  return absl::OkStatus();
}

}  // namespace

CertificateAuthority::CertificateAuthority(std::unique_ptr<const SigningMaterial> material)
    : material_(std::move(material)), trust_domain_(material_->trust_domain) {}

CertificateAuthority::~CertificateAuthority() = default;

absl::StatusOr<std::unique_ptr<CertificateAuthority>> CertificateAuthority::Create(
    const CaOptions& options) {
  AMBIT_RETURN_IF_ERROR(CheckTrustDomain(options.trust_domain));
  if (options.default_leaf_ttl <= absl::ZeroDuration() ||
      options.max_leaf_ttl < options.default_leaf_ttl) {
    return absl::InvalidArgumentError(absl::StrCat(
        "leaf lifetimes must satisfy 0 < default (", absl::FormatDuration(options.default_leaf_ttl),
        ") <= maximum (", absl::FormatDuration(options.max_leaf_ttl), ")"));
  }
  const Clock* clock = options.clock != nullptr ? options.clock : &RealClock::Get();
  const absl::Time now = clock->Now();
  ERR_clear_error();

  std::unique_ptr<SigningMaterial> material;
  if (!options.cacerts_dir.empty()) {
    AMBIT_ASSIGN_OR_RETURN(material, LoadCacerts(options, now));
  }
  if (material == nullptr) {
    AMBIT_ASSIGN_OR_RETURN(material, LoadOrGenerateRoot(options, now));
  }
  material->trust_domain = options.trust_domain;
  material->default_ttl = options.default_leaf_ttl;
  material->max_ttl = options.max_leaf_ttl;
  material->clock = clock;
  return absl::WrapUnique(new CertificateAuthority(std::move(material)));
}

absl::Status CertificateAuthority::SetTrustDomain(absl::string_view trust_domain) {
  AMBIT_RETURN_IF_ERROR(CheckTrustDomain(trust_domain));
  absl::MutexLock lock(&mu_);
  trust_domain_ = std::string(trust_domain);
  return absl::OkStatus();
}

std::string CertificateAuthority::trust_domain() const {
  absl::MutexLock lock(&mu_);
  return trust_domain_;
}

absl::StatusOr<std::vector<std::string>> CertificateAuthority::Sign(absl::string_view csr_pem,
                                                                    absl::string_view identity,
                                                                    absl::Duration ttl) const {
  const SigningMaterial& m = *material_;
  if (csr_pem.size() > kMaxCsrBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("CSR is ", csr_pem.size(), " bytes; at most ", kMaxCsrBytes, " are accepted"));
  }
  AMBIT_RETURN_IF_ERROR(CheckIdentity(identity, trust_domain()));
  AMBIT_ASSIGN_OR_RETURN(absl::Duration lifetime, LeafLifetime(m, ttl));
  ERR_clear_error();
  AMBIT_ASSIGN_OR_RETURN(X509ReqPtr csr, internal::ParseCsr(csr_pem));
  EVP_PKEY* public_key = X509_REQ_get0_pubkey(csr.get());
  AMBIT_RETURN_IF_ERROR(CheckCsrKey(public_key));
  if (X509_REQ_verify(csr.get(), public_key) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        "CSR signature does not verify: the request was altered or not signed by its key");
  }
  AMBIT_RETURN_IF_ERROR(CheckCsrNames(csr.get(), identity));

  AMBIT_ASSIGN_OR_RETURN(GeneralNamesPtr names, NewGeneralNames());
  AMBIT_RETURN_IF_ERROR(AddStringName(names.get(), GEN_URI, identity));
  AMBIT_ASSIGN_OR_RETURN(auto validity, LeafValidity(m, lifetime));
  LeafSpec spec;
  spec.public_key = public_key;
  spec.names = names.get();
  spec.not_before = validity.first;
  spec.not_after = validity.second;
  AMBIT_ASSIGN_OR_RETURN(X509Ptr leaf, IssueLeaf(m, spec));

  std::vector<std::string> chain;
  chain.reserve(1 + m.chain_pem.size());
  chain.push_back(internal::CertificateToPem(leaf.get()));
  chain.insert(chain.end(), m.chain_pem.begin(), m.chain_pem.end());
  return chain;
}

std::vector<std::string> CertificateAuthority::TrustBundle() const {
  return material_->trust_bundle_pem;
}

absl::StatusOr<std::pair<std::string, std::string>> CertificateAuthority::IssueServingCertificate(
    const std::vector<std::string>& dns_names, absl::Duration ttl) const {
  const SigningMaterial& m = *material_;
  if (dns_names.empty()) {
    return absl::InvalidArgumentError("a serving certificate needs at least one DNS name");
  }
  ERR_clear_error();
  AMBIT_ASSIGN_OR_RETURN(GeneralNamesPtr names, NewGeneralNames());
  for (const std::string& name : dns_names) {
    bool printable =
        std::all_of(name.begin(), name.end(), [](char c) { return c > 0x20 && c < 0x7f; });
    if (name.empty() || name.size() > 253 || !printable) {
      return absl::InvalidArgumentError(
          absl::StrCat("serving certificate name ", Quote(name), " is not a DNS name"));
    }
    Asn1OctetStringPtr ip(a2i_IPADDRESS(name.c_str()));
    ERR_clear_error();
    if (ip != nullptr) {
      AMBIT_RETURN_IF_ERROR(AddIpName(names.get(), std::move(ip)));
    } else {
      AMBIT_RETURN_IF_ERROR(AddStringName(names.get(), GEN_DNS, name));
    }
  }
  AMBIT_ASSIGN_OR_RETURN(absl::Duration lifetime, LeafLifetime(m, ttl));
  AMBIT_ASSIGN_OR_RETURN(auto validity, LeafValidity(m, lifetime));
  AMBIT_ASSIGN_OR_RETURN(EvpPkeyPtr key, internal::GenerateP256Key());
  LeafSpec spec;
  spec.public_key = key.get();
  spec.names = names.get();
  spec.not_before = validity.first;
  spec.not_after = validity.second;
  spec.client_auth = false;
  AMBIT_ASSIGN_OR_RETURN(X509Ptr leaf, IssueLeaf(m, spec));

  std::string chain = internal::CertificateToPem(leaf.get());
  // Peers hold the root already; send the intermediates only.
  for (size_t i = 0; i + 1 < m.chain_pem.size(); ++i) chain += m.chain_pem[i];
  AMBIT_ASSIGN_OR_RETURN(std::string key_pem, internal::PrivateKeyToPem(key.get()));
  return std::make_pair(std::move(chain), std::move(key_pem));
}

std::string CertificateAuthority::IssuerName() const { return material_->issuer_name; }

absl::StatusOr<std::pair<std::string, std::string>> MakeCsrForTest(
    const std::vector<std::string>& uris, const std::vector<std::string>& dns) {
  ERR_clear_error();
  AMBIT_ASSIGN_OR_RETURN(EvpPkeyPtr key, internal::GenerateP256Key());
  X509ReqPtr csr(X509_REQ_new());
  if (csr == nullptr || X509_REQ_set_version(csr.get(), X509_REQ_VERSION_1) != 1 ||
      X509_REQ_set_pubkey(csr.get(), key.get()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "build CSR");
  }
  if (!uris.empty() || !dns.empty()) {
    AMBIT_ASSIGN_OR_RETURN(GeneralNamesPtr names, NewGeneralNames());
    for (const std::string& uri : uris) {
      AMBIT_RETURN_IF_ERROR(AddStringName(names.get(), GEN_URI, uri));
    }
    for (const std::string& name : dns) {
      AMBIT_RETURN_IF_ERROR(AddStringName(names.get(), GEN_DNS, name));
    }
    X509ExtensionPtr san(X509V3_EXT_i2d(NID_subject_alt_name, 0, names.get()));
    X509ExtensionStackPtr extensions(sk_X509_EXTENSION_new_null());
    if (san == nullptr || extensions == nullptr ||
        sk_X509_EXTENSION_push(extensions.get(), san.get()) == 0) {
      return OpenSslError(absl::StatusCode::kInternal, "build CSR subjectAltName");
    }
    san.release();
    if (X509_REQ_add_extensions(csr.get(), extensions.get()) != 1) {
      return OpenSslError(absl::StatusCode::kInternal, "add CSR extensions");
    }
  }
  if (X509_REQ_sign(csr.get(), key.get(), EVP_sha256()) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "sign CSR");
  }
  AMBIT_ASSIGN_OR_RETURN(std::string key_pem, internal::PrivateKeyToPem(key.get()));
  return std::make_pair(internal::CsrToPem(csr.get()), std::move(key_pem));
}

}  // namespace ambit::ca
