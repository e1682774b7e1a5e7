#include "tests/fakes/fake_signer.h"

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/nid.h>
#include <openssl/obj.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/common/status.h"
#include "agent/tls/keys.h"

namespace ambit::tls::testing {
namespace {

absl::Status Internal(absl::string_view what) {
  return SslError(absl::StatusCode::kInternal, what);
}

absl::Status SetRandomSerial(X509* cert) {
  bssl::UniquePtr<BIGNUM> bn(BN_new());
  if (bn == nullptr || !BN_rand(bn.get(), 128, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY)) {
    return Internal("random serial");
  }
  bssl::UniquePtr<ASN1_INTEGER> serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
  if (serial == nullptr || !X509_set_serialNumber(cert, serial.get())) {
    return Internal("setting serial");
  }
  return absl::OkStatus();
}

absl::Status SetValidity(X509* cert, absl::Time not_before, absl::Duration lifetime) {
  bssl::UniquePtr<ASN1_TIME> from(ASN1_TIME_set(nullptr, absl::ToTimeT(not_before)));
  bssl::UniquePtr<ASN1_TIME> to(ASN1_TIME_set(nullptr, absl::ToTimeT(not_before + lifetime)));
  if (from == nullptr || to == nullptr || !X509_set1_notBefore(cert, from.get()) ||
      !X509_set1_notAfter(cert, to.get())) {
    return Internal("setting validity");
  }
  return absl::OkStatus();
}

absl::Status AddBasicConstraints(X509* cert, bool ca) {
  bssl::UniquePtr<BASIC_CONSTRAINTS> bc(BASIC_CONSTRAINTS_new());
  if (bc == nullptr) return Internal("BASIC_CONSTRAINTS_new");
  bc->ca = ca ? 0xff : 0;
  if (X509_add1_ext_i2d(cert, NID_basic_constraints, bc.get(), /*crit=*/1, X509V3_ADD_DEFAULT) !=
      1) {
    return Internal("adding basicConstraints");
  }
  return absl::OkStatus();
}

absl::Status AddKeyUsage(X509* cert, std::initializer_list<int> bits) {
  bssl::UniquePtr<ASN1_BIT_STRING> usage(ASN1_BIT_STRING_new());
  if (usage == nullptr) return Internal("ASN1_BIT_STRING_new");
  for (int bit : bits) {
    if (!ASN1_BIT_STRING_set_bit(usage.get(), bit, 1)) return Internal("keyUsage bit");
  }
  if (X509_add1_ext_i2d(cert, NID_key_usage, usage.get(), /*crit=*/1, X509V3_ADD_DEFAULT) != 1) {
    return Internal("adding keyUsage");
  }
  return absl::OkStatus();
}

absl::Status AddUriSan(X509* cert, const std::string& uri) {
  bssl::UniquePtr<ASN1_IA5STRING> ia5(ASN1_IA5STRING_new());
  bssl::UniquePtr<GENERAL_NAME> name(GENERAL_NAME_new());
  bssl::UniquePtr<GENERAL_NAMES> names(sk_GENERAL_NAME_new_null());
  if (ia5 == nullptr || name == nullptr || names == nullptr ||
      !ASN1_STRING_set(ia5.get(), uri.data(), static_cast<int>(uri.size()))) {
    return Internal("building subjectAltName");
  }
  GENERAL_NAME_set0_value(name.get(), GEN_URI, ia5.release());
  if (!sk_GENERAL_NAME_push(names.get(), name.get())) return Internal("building subjectAltName");
  name.release();
  if (X509_add1_ext_i2d(cert, NID_subject_alt_name, names.get(), /*crit=*/1, X509V3_ADD_DEFAULT) !=
      1) {
    return Internal("adding subjectAltName");
  }
  return absl::OkStatus();
}

absl::Status AddWorkloadEku(X509* cert) {
  bssl::UniquePtr<EXTENDED_KEY_USAGE> eku(sk_ASN1_OBJECT_new_null());
  if (eku == nullptr) return Internal("EXTENDED_KEY_USAGE");
  for (int nid : {NID_server_auth, NID_client_auth}) {
    if (!sk_ASN1_OBJECT_push(eku.get(), OBJ_nid2obj(nid))) return Internal("EKU push");
  }
  if (X509_add1_ext_i2d(cert, NID_ext_key_usage, eku.get(), /*crit=*/0, X509V3_ADD_DEFAULT) != 1) {
    return Internal("adding extendedKeyUsage");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<TestCa>> TestCa::Create(const Clock* clock, Options options) {
  AMBIT_ASSIGN_OR_RETURN(bssl::UniquePtr<EVP_PKEY> key, GenerateP256Key());
  bssl::UniquePtr<X509> root(X509_new());
  if (root == nullptr || !X509_set_version(root.get(), X509_VERSION_3)) return Internal("X509");
  AMBIT_RETURN_IF_ERROR(SetRandomSerial(root.get()));
  X509_NAME* name = X509_get_subject_name(root.get());
  const auto* o = reinterpret_cast<const uint8_t*>(options.organization.c_str());
  const auto* cn = reinterpret_cast<const uint8_t*>(options.common_name.c_str());
  if (!X509_NAME_add_entry_by_NID(name, NID_organizationName, MBSTRING_UTF8, o, -1, -1, 0) ||
      !X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, cn, -1, -1, 0) ||
      !X509_set_issuer_name(root.get(), name) || !X509_set_pubkey(root.get(), key.get())) {
    return Internal("building root");
  }
  // Started an hour early, so leaves issued "now" never predate their issuer.
  AMBIT_RETURN_IF_ERROR(SetValidity(root.get(), clock->Now() - absl::Hours(1), options.lifetime));
  if (options.is_ca) {
    AMBIT_RETURN_IF_ERROR(AddBasicConstraints(root.get(), /*ca=*/true));
    AMBIT_RETURN_IF_ERROR(AddKeyUsage(root.get(), {5 /*keyCertSign*/, 6 /*cRLSign*/}));
  } else {
    AMBIT_RETURN_IF_ERROR(AddKeyUsage(root.get(), {0 /*digitalSignature*/}));
  }
  if (!X509_sign(root.get(), key.get(), EVP_sha256())) return Internal("signing root");
  std::string pem = CertToPem(root.get());
  if (pem.empty()) return Internal("writing root PEM");
  return std::unique_ptr<TestCa>(new TestCa(clock, std::move(key), std::move(root), pem));
}

absl::StatusOr<std::vector<std::string>> TestCa::Sign(const std::string& csr_pem,
                                                      const LeafOptions& options) {
  AMBIT_ASSIGN_OR_RETURN(bssl::UniquePtr<X509_REQ> csr, ParseCsrPem(csr_pem));
  AMBIT_ASSIGN_OR_RETURN(RequestedNames names, CsrSubjectAltNames(csr.get()));
  if (names.uris.size() != 1 || names.other_names != 0) {
    return absl::InvalidArgumentError("CSR must ask for exactly one URI subjectAltName");
  }
  bssl::UniquePtr<EVP_PKEY> pub(X509_REQ_get_pubkey(csr.get()));
  if (options.foreign_key) {
    AMBIT_ASSIGN_OR_RETURN(pub, GenerateP256Key());
  }

  bssl::UniquePtr<X509> leaf(X509_new());
  if (leaf == nullptr || !X509_set_version(leaf.get(), X509_VERSION_3) ||
      !X509_set_issuer_name(leaf.get(), X509_get_subject_name(root_.get())) ||
      !X509_set_pubkey(leaf.get(), pub.get())) {
    return Internal("building leaf");
  }
  AMBIT_RETURN_IF_ERROR(SetRandomSerial(leaf.get()));
  AMBIT_RETURN_IF_ERROR(
      SetValidity(leaf.get(), clock_->Now() - options.backdate, options.lifetime));
  AMBIT_RETURN_IF_ERROR(AddBasicConstraints(leaf.get(), /*ca=*/false));
  AMBIT_RETURN_IF_ERROR(AddKeyUsage(leaf.get(), {0 /*digitalSignature*/, 2 /*keyEncipherment*/}));
  AMBIT_RETURN_IF_ERROR(AddWorkloadEku(leaf.get()));
  AMBIT_RETURN_IF_ERROR(AddUriSan(leaf.get(), options.uri_override.value_or(names.uris[0])));
  if (!X509_sign(leaf.get(), key_.get(), EVP_sha256())) return Internal("signing leaf");
  return std::vector<std::string>{CertToPem(leaf.get()), root_pem_};
}

void FakeCsrSigner::RequestSigning(uint64_t request_id, const std::string& identity,
                                   const std::string& csr_pem) {
  Request request{request_id, identity, csr_pem, clock_->Now()};
  history_.push_back(request);
  switch (mode_) {
    case Mode::kQueue:
      queue_.push_back(std::move(request));
      return;
    case Mode::kSign:
      Answer(request, leaf_options_).IgnoreError();
      return;
    case Mode::kFail:
      if (manager_ != nullptr) manager_->OnSigned(request_id, failure_);
      return;
  }
}

absl::Status FakeCsrSigner::Answer(const Request& request, const TestCa::LeafOptions& options) {
  absl::StatusOr<std::vector<std::string>> chain = ca_->Sign(request.csr_pem, options);
  absl::Status status = chain.status();
  if (manager_ != nullptr) manager_->OnSigned(request.id, std::move(chain));
  return status;
}

absl::Status FakeCsrSigner::SignNext() { return SignNext(leaf_options_); }

absl::Status FakeCsrSigner::SignNext(const TestCa::LeafOptions& options) {
  if (queue_.empty()) return absl::FailedPreconditionError("no queued CSR");
  return Answer(TakeNext(), options);
}

void FakeCsrSigner::FailNext(absl::Status status) {
  if (queue_.empty()) return;
  Request request = TakeNext();
  if (manager_ != nullptr) manager_->OnSigned(request.id, std::move(status));
}

FakeCsrSigner::Request FakeCsrSigner::TakeNext() {
  Request request = std::move(queue_.front());
  queue_.pop_front();
  return request;
}

absl::StatusOr<std::string> TestCa::CrlPem(const std::vector<const X509*>& revoked,
                                           absl::Time this_update,
                                           std::optional<absl::Time> next_update,
                                           EVP_PKEY* signer) const {
  bssl::UniquePtr<X509_CRL> crl(X509_CRL_new());
  if (crl == nullptr || !X509_CRL_set_version(crl.get(), X509_CRL_VERSION_2) ||
      !X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(root_.get()))) {
    return SslError(absl::StatusCode::kInternal, "starting a CRL");
  }
  bssl::UniquePtr<ASN1_TIME> last(ASN1_TIME_set(nullptr, absl::ToTimeT(this_update)));
  if (last == nullptr || !X509_CRL_set1_lastUpdate(crl.get(), last.get())) {
    return SslError(absl::StatusCode::kInternal, "CRL thisUpdate");
  }
  if (next_update.has_value()) {
    bssl::UniquePtr<ASN1_TIME> next(ASN1_TIME_set(nullptr, absl::ToTimeT(*next_update)));
    if (next == nullptr || !X509_CRL_set1_nextUpdate(crl.get(), next.get())) {
      return SslError(absl::StatusCode::kInternal, "CRL nextUpdate");
    }
  }
  for (const X509* cert : revoked) {
    bssl::UniquePtr<X509_REVOKED> entry(X509_REVOKED_new());
    if (entry == nullptr ||
        !X509_REVOKED_set_serialNumber(entry.get(), X509_get0_serialNumber(cert)) ||
        !X509_REVOKED_set_revocationDate(entry.get(), last.get()) ||
        !X509_CRL_add0_revoked(crl.get(), entry.get())) {
      return SslError(absl::StatusCode::kInternal, "CRL entry");
    }
    entry.release();  // owned by the CRL now
  }
  if (!X509_CRL_sort(crl.get()) ||
      !X509_CRL_sign(crl.get(), signer != nullptr ? signer : key_.get(), EVP_sha256())) {
    return SslError(absl::StatusCode::kInternal, "signing a CRL");
  }
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || !PEM_write_bio_X509_CRL(bio.get(), crl.get())) {
    return SslError(absl::StatusCode::kInternal, "writing a CRL");
  }
  const uint8_t* data = nullptr;
  size_t len = 0;
  BIO_mem_contents(bio.get(), &data, &len);
  return std::string(reinterpret_cast<const char*>(data), len);
}

}  // namespace ambit::tls::testing
