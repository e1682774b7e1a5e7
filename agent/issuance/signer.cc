#include "agent/issuance/signer.h"

#include <grpcpp/grpcpp.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "agent/ca/certificate_authority.h"
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

class RemoteSigner final : public Signer {
 public:
  RemoteSigner(RemoteCaOptions options, std::string roots)
      : options_(std::move(options)), roots_(std::move(roots)) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = roots_;
    grpc::ChannelArguments args;
    // gRPC's own reconnect back-off grows to two minutes while the CA is down: a retry the data
    // plane scheduled (and logged) would then fail at once, without asking the CA that has
    // come back. A short cap keeps each retry a real attempt.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 1000);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    channel_ = grpc::CreateCustomChannel(options_.address, grpc::SslCredentials(ssl), args);
    stub_ = istio::v1::auth::IstioCertificateService::NewStub(channel_);
  }

  absl::StatusOr<std::vector<std::string>> Sign(const std::string& csr_pem,
                                                const std::string& identity,
                                                absl::Duration ttl) override {
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
    istio::v1::auth::IstioCertificateRequest req;
    req.set_csr(csr_pem);
    req.set_validity_duration(absl::ToInt64Seconds(ttl));
    istio::v1::auth::IstioCertificateResponse resp;
    grpc::Status status = stub_->CreateCertificate(&ctx, req, &resp);
    if (!status.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          absl::StrCat("external CA ", options_.address, " refused ", identity,
                                       ": ", status.error_message()));
    }
    if (resp.cert_chain().empty()) {
      return absl::DataLossError(
          absl::StrCat("external CA ", options_.address, " returned an empty chain"));
    }
    std::vector<std::string> chain;
    // Some CAs return one PEM bundle in a single element; normalise to one cert per element.
    for (const auto& element : resp.cert_chain()) {
      for (auto& pem : SplitPemCertificates(element)) chain.push_back(std::move(pem));
    }
    return chain;
  }
  std::vector<std::string> TrustBundle() const override { return SplitPemCertificates(roots_); }
  std::string Description() const override {
    return absl::StrCat("external CA at ", options_.address);
  }

 private:
  RemoteCaOptions options_;
  std::string roots_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<istio::v1::auth::IstioCertificateService::Stub> stub_;
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
  auto roots = ReadFile(options.root_cert_file, "external CA root certificate");
  if (!roots.ok()) return roots.status();
  if (SplitPemCertificates(*roots).empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.root_cert_file, ": no PEM certificate found (--ca-root-cert)"));
  }
  if (!options.token_file.empty()) {
    // At start as well, so that a wrong path stops ambitd instead of failing every request.
    auto token = ReadToken(options.token_file);
    if (!token.ok()) return token.status();
  }
  return std::unique_ptr<Signer>(new RemoteSigner(options, std::move(*roots)));
}

}  // namespace ambit::issuance
