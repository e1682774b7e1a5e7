#include "agent/tls/trust_bundle.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/common/status.h"

namespace ambit::tls {

absl::StatusOr<std::unique_ptr<TrustBundle>> TrustBundle::Create(
    const std::vector<std::string>& pems) {
  std::vector<bssl::UniquePtr<X509>> roots;
  std::vector<CertInfo> infos;
  for (size_t i = 0; i < pems.size(); ++i) {
    auto certs = ParsePemChain(absl::string_view(pems[i]));
    if (!certs.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("trust bundle PEM #", i + 1, ": ", certs.status().message()));
    }
    for (size_t j = 0; j < certs->size(); ++j) {
      bssl::UniquePtr<X509>& cert = (*certs)[j];
      AMBIT_ASSIGN_OR_RETURN(CertInfo info, DescribeCert(cert.get()));
      // Only basicConstraints CA:TRUE counts: X509_check_ca also accepts v1 certificates and
      // keyCertSign without basicConstraints, which a root for this mesh never needs.
      if (X509_check_ca(cert.get()) != 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "trust bundle PEM #", i + 1, ", certificate #", j + 1, " (subject \"", info.subject,
            "\", serial ", info.serial_hex,
            ") is not a CA certificate (no basicConstraints CA:TRUE); only CA roots belong in "
            "a trust bundle"));
      }
      bool duplicate = false;
      for (const auto& root : roots) duplicate = duplicate || X509_cmp(root.get(), cert.get()) == 0;
      if (duplicate) continue;
      roots.push_back(std::move(cert));
      infos.push_back(std::move(info));
    }
  }
  if (roots.empty()) return absl::InvalidArgumentError("trust bundle holds no root certificate");
  return std::unique_ptr<TrustBundle>(new TrustBundle(std::move(roots), std::move(infos)));
}

absl::StatusOr<bssl::UniquePtr<X509_STORE>> TrustBundle::NewStore() const {
  bssl::UniquePtr<X509_STORE> store(X509_STORE_new());
  if (store == nullptr) return SslError(absl::StatusCode::kResourceExhausted, "X509_STORE_new");
  for (const auto& root : roots_) {
    if (!X509_STORE_add_cert(store.get(), root.get())) {
      return SslError(absl::StatusCode::kInternal, "adding a root to the trust store");
    }
  }
  return store;
}

absl::Status TrustBundle::Verify(const std::vector<bssl::UniquePtr<X509>>& chain,
                                 absl::Time now) const {
  if (chain.empty()) return absl::InvalidArgumentError("certificate chain is empty");
  AMBIT_ASSIGN_OR_RETURN(bssl::UniquePtr<X509_STORE> store, NewStore());
  bssl::UniquePtr<STACK_OF(X509)> untrusted(sk_X509_new_null());
  if (untrusted == nullptr) return SslError(absl::StatusCode::kResourceExhausted, "sk_X509_new");
  for (size_t i = 1; i < chain.size(); ++i) {
    if (!sk_X509_push(untrusted.get(), chain[i].get())) {
      return SslError(absl::StatusCode::kResourceExhausted, "sk_X509_push");
    }
    X509_up_ref(chain[i].get());
  }
  bssl::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  if (ctx == nullptr ||
      !X509_STORE_CTX_init(ctx.get(), store.get(), chain.front().get(), untrusted.get())) {
    return SslError(absl::StatusCode::kInternal, "setting up certificate verification");
  }
  X509_STORE_CTX_set_time(ctx.get(), /*flags=*/0, absl::ToTimeT(now));
  if (X509_verify_cert(ctx.get()) != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return absl::PermissionDeniedError(
        absl::StrCat("certificate chain does not verify against the trust bundle (", size(),
                     " roots): ", X509_verify_cert_error_string(err)));
  }
  return absl::OkStatus();
}

}  // namespace ambit::tls
