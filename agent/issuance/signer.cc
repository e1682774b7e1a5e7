#include "agent/issuance/signer.h"

#include <grpcpp/grpcpp.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <fstream>
#include <sstream>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "agent/ca/certificate_authority.h"
#include "agent/common/log.h"
#include "agent/issuance/ca_roots.h"
#include "agent/issuance/impersonation.h"
#include "istio/v1/auth/ca.grpc.pb.h"

namespace ambit::issuance {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", what, " ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::string> ReadToken(const std::string& path) {
  auto t = ReadFile(path, "CA token file");
  if (!t.ok()) return t.status();
  std::string token(absl::StripAsciiWhitespace(*t));
  if (token.empty())
    return absl::InvalidArgumentError(absl::StrCat("CA token file ", path, " is empty"));
  return token;
}

class LocalSigner final : public Signer {
 public:
  explicit LocalSigner(std::shared_ptr<const ca::CertificateAuthority> ca) : ca_(std::move(ca)) {}
  absl::StatusOr<std::vector<std::string>> Sign(const std::string& csr_pem,
                                                const std::string& identity,
                                                absl::Duration ttl) override {
    return ca_->Sign(csr_pem, identity, ttl);
  }
  std::vector<std::string> TrustBundle() const override { return ca_->TrustBundle(); }
  std::string Description() const override {
    return absl::StrCat("built-in CA (", ca_->IssuerName(), ")");
  }

 private:
  std::shared_ptr<const ca::CertificateAuthority> ca_;
};

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct NamesFree {
  void operator()(GENERAL_NAMES* n) const { GENERAL_NAMES_free(n); }
};

// OK when the leaf names exactly `identity` as its one URI SAN. The data plane checks this too,
// against its key; checking here as well puts the CA's mistake (or its refusal to impersonate,
// when it certifies the caller instead) in ambitd's log with the CA's name.
absl::Status CheckLeafIdentity(const std::string& leaf_pem, const std::string& identity) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(leaf_pem.data(), leaf_pem.size()));
  std::unique_ptr<X509, X509Free> leaf(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!leaf) return absl::DataLossError("the leaf certificate does not parse");
  std::unique_ptr<GENERAL_NAMES, NamesFree> names(static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(leaf.get(), NID_subject_alt_name, nullptr, nullptr)));
  std::vector<std::string> uris;
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names.get(), i);
    if (gn->type != GEN_URI) continue;
    const auto* s = gn->d.uniformResourceIdentifier;
    uris.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                      ASN1_STRING_length(s));
  }
  if (uris.size() == 1 && uris[0] == identity) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      "the leaf certificate is for ", uris.empty() ? "no URI" : absl::StrJoin(uris, ", "),
      ", not exactly ", identity, " (does the CA allow this node to impersonate its pods?)"));
}

class RemoteSigner final : public Signer {
 public:
  RemoteSigner(RemoteCaOptions options, std::shared_ptr<RootCertSource> roots)
      : options_(std::move(options)), roots_(std::move(roots)) {}

  absl::StatusOr<std::vector<std::string>> Sign(const std::string& csr_pem,
                                                const std::string& identity,
                                                absl::Duration ttl) override {
    auto channel = CurrentChannel();
    if (!channel.ok()) {
      return absl::UnavailableError(absl::StrCat("cannot ask external CA ", options_.address,
                                                 " for ", identity, ": ",
                                                 channel.status().message()));
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     absl::ToChronoMilliseconds(options_.timeout));
    // Waits (within the deadline) for a reconnect instead of failing while the channel is in
    // back-off.
    ctx.set_wait_for_ready(true);
    if (!options_.token_file.empty()) {
      // Read for every call: a projected service-account token is rotated by the kubelet, and
      // the CA refuses one that expired.
      auto token = ReadToken(options_.token_file);
      if (!token.ok()) {
        return absl::UnavailableError(absl::StrCat("cannot ask external CA ", options_.address,
                                                   " for ", identity, ": ",
                                                   token.status().message()));
      }
      ctx.AddMetadata("authorization", "Bearer " + *token);
    }
    if (!options_.cluster_id.empty()) ctx.AddMetadata(kClusterIdHeader, options_.cluster_id);
    istio::v1::auth::IstioCertificateRequest req;
    req.set_csr(csr_pem);
    req.set_validity_duration(absl::ToInt64Seconds(ttl));
    // Always, also for a CA that would take the CSR's SAN alone: istiod certifies the caller's
    // own identity unless told whom the certificate is for.
    (*req.mutable_metadata()->mutable_fields())[std::string(kImpersonatedIdentityKey)]
        .set_string_value(identity);
    istio::v1::auth::IstioCertificateResponse resp;
    grpc::Status status = (*channel)->stub->CreateCertificate(&ctx, req, &resp);
    if (!status.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          absl::StrCat("external CA ", options_.address, " refused ", identity,
                                       ": ", status.error_message()));
    }
    if (resp.cert_chain().empty()) {
      return absl::DataLossError(absl::StrCat("external CA ", options_.address,
                                              " returned an empty chain for ", identity));
    }
    std::vector<std::string> chain;
    // Some CAs return one PEM bundle in a single element; normalise to one cert per element.
    for (const auto& element : resp.cert_chain()) {
      for (auto& pem : SplitPemCertificates(element)) chain.push_back(std::move(pem));
    }
    if (chain.empty()) {
      return absl::DataLossError(absl::StrCat("external CA ", options_.address,
                                              " returned no PEM certificate for ", identity));
    }
    if (absl::Status leaf = CheckLeafIdentity(chain.front(), identity); !leaf.ok()) {
      return absl::Status(
          leaf.code(), absl::StrCat("external CA ", options_.address, " answered the request for ",
                                    identity, " wrongly: ", leaf.message()));
    }
    return chain;
  }
  std::vector<std::string> TrustBundle() const override {
    auto roots = roots_->Roots();
    if (!roots.ok()) return {};
    return SplitPemCertificates(*roots);
  }
  std::string Description() const override {
    return absl::StrCat("external CA at ", options_.address);
  }

 private:
  struct Channel {
    std::string roots;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<istio::v1::auth::IstioCertificateService::Stub> stub;
  };

  // The channel for the current roots: rebuilt when they changed, so the CA's new serving
  // certificate (under a new root) is accepted. Calls in flight keep the old one.
  absl::StatusOr<std::shared_ptr<const Channel>> CurrentChannel() {
    auto roots = roots_->Roots();
    if (!roots.ok()) return roots.status();
    absl::MutexLock lock(&mu_);
    if (channel_ != nullptr && channel_->roots == *roots) return channel_;
    auto c = std::make_shared<Channel>();
    c->roots = *roots;
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = c->roots;
    grpc::ChannelArguments args;
    // gRPC's own reconnect back-off grows to two minutes while the CA is down: a retry the data
    // plane scheduled (and logged) would then fail at once, without asking the CA that has
    // come back. A short cap keeps each retry a real attempt.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 1000);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    c->channel = grpc::CreateCustomChannel(options_.address, grpc::SslCredentials(ssl), args);
    c->stub = istio::v1::auth::IstioCertificateService::NewStub(c->channel);
    if (channel_ != nullptr) {
      AMBIT_LOG("ca", Info) << "external CA " << options_.address
                            << ": roots changed; new connections verify against them";
    }
    channel_ = std::move(c);
    return channel_;
  }

  const RemoteCaOptions options_;
  const std::shared_ptr<RootCertSource> roots_;
  absl::Mutex mu_;
  std::shared_ptr<const Channel> channel_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::Status CheckCertTtl(absl::Duration ttl) {
  if (ttl < kMinCertTtl) {
    return absl::InvalidArgumentError(absl::StrCat(
        "certificate lifetime ", absl::FormatDuration(ttl), " is below the minimum of ",
        absl::FormatDuration(kMinCertTtl),
        ": certificates are renewed at half of their lifetime, and a shorter one leaves no time "
        "for a slow CA or a retry"));
  }
  return absl::OkStatus();
}

std::vector<std::string> SplitPemCertificates(const std::string& bundle) {
  static constexpr absl::string_view kBegin = "-----BEGIN CERTIFICATE-----";
  static constexpr absl::string_view kEnd = "-----END CERTIFICATE-----";
  std::vector<std::string> out;
  size_t pos = 0;
  while (true) {
    size_t b = bundle.find(kBegin.data(), pos, kBegin.size());
    if (b == std::string::npos) break;
    size_t e = bundle.find(kEnd.data(), b, kEnd.size());
    if (e == std::string::npos) break;
    e += kEnd.size();
    out.push_back(bundle.substr(b, e - b) + "\n");
    pos = e;
  }
  return out;
}

std::unique_ptr<Signer> MakeLocalSigner(std::shared_ptr<const ca::CertificateAuthority> ca) {
  return std::make_unique<LocalSigner>(std::move(ca));
}

absl::StatusOr<std::unique_ptr<Signer>> MakeRemoteSigner(const RemoteCaOptions& options) {
  std::shared_ptr<RootCertSource> roots = options.roots;
  if (roots == nullptr) {
    auto file = MakeRootCertFile(options.root_cert_file);
    if (!file.ok()) return file.status();
    roots = std::move(*file);
  }
  if (!options.token_file.empty()) {
    // At start as well, so that a wrong path stops ambitd instead of failing every request.
    auto token = ReadToken(options.token_file);
    if (!token.ok()) return token.status();
  }
  return std::unique_ptr<Signer>(new RemoteSigner(options, std::move(roots)));
}

}  // namespace ambit::issuance
