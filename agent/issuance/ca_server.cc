#include "agent/issuance/ca_server.h"

#include <grpcpp/grpcpp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "agent/ca/certificate_authority.h"
#include "agent/common/log.h"
#include "agent/common/status.h"
#include "agent/issuance/impersonation.h"
#include "istio/v1/auth/ca.grpc.pb.h"

namespace ambit::issuance {
namespace {

constexpr const char* kComponent = "ca";
constexpr size_t kMaxCsrBytes = 64 * 1024;

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct ReqFree {
  void operator()(X509_REQ* r) const { X509_REQ_free(r); }
};
struct ExtsFree {
  void operator()(STACK_OF(X509_EXTENSION) * s) const {
    sk_X509_EXTENSION_pop_free(s, X509_EXTENSION_free);
  }
};
struct NamesFree {
  void operator()(GENERAL_NAMES* n) const { GENERAL_NAMES_free(n); }
};

}  // namespace

std::string ListenHost(const std::string& listen) {
  std::string host;
  if (absl::StartsWith(listen, "[")) {
    const size_t close = listen.find(']');
    if (close == std::string::npos || listen.compare(close + 1, 1, ":") != 0) return "";
    host = listen.substr(1, close - 1);
  } else {
    const size_t colon = listen.rfind(':');
    if (colon == std::string::npos) return "";
    host = listen.substr(0, colon);
    // An unbracketed IPv6 address has no port to split off.
    if (host.find(':') != std::string::npos) return "";
  }
  if (host.empty() || host == "0.0.0.0" || host == "::" || host == "*") return "";
  return host;
}

void Entitlements::Update(std::map<std::string, std::set<std::string>> identities_by_node) {
  absl::MutexLock lock(&mu_);
  by_node_ = std::move(identities_by_node);
  loaded_ = true;
}

absl::Status Entitlements::Check(const std::string& node, const std::string& identity) const {
  absl::MutexLock lock(&mu_);
  if (!loaded_) {
    return absl::UnavailableError(
        "the CA has not loaded which pods run on which node yet; retry shortly");
  }
  auto it = by_node_.find(node);
  if (it == by_node_.end() || !it->second.count(identity)) {
    return absl::PermissionDeniedError(absl::StrCat("node ", node, " may not obtain ", identity,
                                                    ": no pod with that identity runs on it"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> RequestedUris(const std::string& csr_pem) {
  if (csr_pem.size() > kMaxCsrBytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("CSR is ", csr_pem.size(), " bytes; at most ", kMaxCsrBytes, " allowed"));
  }
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(csr_pem.data(), csr_pem.size()));
  std::unique_ptr<X509_REQ, ReqFree> req(
      PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr));
  if (!req) return absl::InvalidArgumentError("csr is not a PEM certificate signing request");
  std::unique_ptr<STACK_OF(X509_EXTENSION), ExtsFree> exts(X509_REQ_get_extensions(req.get()));
  std::vector<std::string> uris;
  if (!exts) return uris;
  for (int i = 0; i < sk_X509_EXTENSION_num(exts.get()); ++i) {
    X509_EXTENSION* ext = sk_X509_EXTENSION_value(exts.get(), i);
    if (OBJ_obj2nid(X509_EXTENSION_get_object(ext)) != NID_subject_alt_name) continue;
    std::unique_ptr<GENERAL_NAMES, NamesFree> names(
        static_cast<GENERAL_NAMES*>(X509V3_EXT_d2i(ext)));
    if (!names) return absl::InvalidArgumentError("csr has an unreadable subjectAltName");
    for (int j = 0; j < sk_GENERAL_NAME_num(names.get()); ++j) {
      GENERAL_NAME* gn = sk_GENERAL_NAME_value(names.get(), j);
      if (gn->type != GEN_URI) continue;
      const auto* s = gn->d.uniformResourceIdentifier;
      uris.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                        ASN1_STRING_length(s));
    }
  }
  return uris;
}

class CaServer::Service final : public istio::v1::auth::IstioCertificateService::Service {
 public:
  Service(std::shared_ptr<const ca::CertificateAuthority> ca,
          std::shared_ptr<const Entitlements> entitlements,
          std::shared_ptr<CallerAuthenticator> authenticator,
          std::shared_ptr<SigningRateLimiter> rate, std::string cluster_id)
      : ca_(std::move(ca)),
        entitlements_(std::move(entitlements)),
        authenticator_(std::move(authenticator)),
        rate_(std::move(rate)),
        cluster_id_(std::move(cluster_id)) {}

  std::map<std::string, uint64_t> Counts() const {
    absl::MutexLock lock(&mu_);
    return counts_;
  }

  grpc::Status CreateCertificate(grpc::ServerContext* ctx,
                                 const istio::v1::auth::IstioCertificateRequest* req,
                                 istio::v1::auth::IstioCertificateResponse* resp) override {
    std::string peer = ctx->peer();
    // As istiod: a caller from another cluster has a token this cluster cannot review.
    const absl::Status cluster = CheckClusterId(ClaimedCluster(*ctx), cluster_id_);
    absl::StatusOr<std::string> node =
        cluster.ok() ? Authenticate(*ctx) : absl::StatusOr<std::string>(cluster);
    if (!node.ok()) {
      Count("unauthenticated");
      AMBIT_LOG(kComponent, Warning)
          << "CreateCertificate from " << peer << ": " << node.status().message();
      // UNAVAILABLE (the token could not be checked) stays: the caller should retry, not give
      // up. PERMISSION_DENIED (a genuine token of someone who is no node agent) stays too.
      const absl::StatusCode why = node.status().code();
      const grpc::StatusCode code =
          why == absl::StatusCode::kUnavailable        ? grpc::StatusCode::UNAVAILABLE
          : why == absl::StatusCode::kPermissionDenied ? grpc::StatusCode::PERMISSION_DENIED
                                                       : grpc::StatusCode::UNAUTHENTICATED;
      return grpc::Status(code, std::string(node.status().message()));
    }
    // A node agent asking on a pod's behalf (ztunnel's way with istiod) names the pod's identity
    // in the metadata; every caller is a node agent (its token says which node), so the rule is
    // the same either way: only identities of pods scheduled on the caller's node.
    auto impersonated = ImpersonatedIdentity(req->metadata());
    if (!impersonated.ok()) {
      return Refuse(peer, *node, impersonated.status(), "impersonation_invalid");
    }
    const bool impersonating = impersonated->has_value();
    auto uris = RequestedUris(req->csr());
    if (!uris.ok()) return Refuse(peer, *node, uris.status());
    auto requested = RequestedIdentity(*impersonated, *uris);
    if (!requested.ok()) {
      return Refuse(peer, *node, requested.status(),
                    impersonating && uris->size() == 1 ? "impersonation_invalid" : nullptr);
    }
    const std::string& identity = *requested;
    if (auto allowed = entitlements_->Check(*node, identity); !allowed.ok()) {
      return Refuse(peer, *node, allowed,
                    impersonating && allowed.code() == absl::StatusCode::kPermissionDenied
                        ? "impersonation_denied"
                        : nullptr);
    }
    // After the cheap checks, so that refused requests cost the node none of its rate.
    if (rate_ != nullptr) {
      if (auto admitted = rate_->Admit(*node); !admitted.ok()) {
        return Refuse(peer, *node, admitted);
      }
    }
    auto chain = ca_->Sign(req->csr(), identity, absl::Seconds(req->validity_duration()));
    if (!chain.ok()) return Refuse(peer, *node, chain.status());
    for (auto& pem : *chain) resp->add_cert_chain(pem);
    Count("issued");
    AMBIT_LOG(kComponent, Info) << "issued " << identity << " to node " << *node << " (" << peer
                                << (impersonating ? ", impersonated" : "") << ")";
    return grpc::Status::OK;
  }

 private:
  absl::StatusOr<std::string> Authenticate(const grpc::ServerContext& ctx) const {
    auto range = ctx.client_metadata().equal_range("authorization");
    for (auto it = range.first; it != range.second; ++it) {
      std::string value(it->second.data(), it->second.size());
      if (!absl::StartsWithIgnoreCase(value, "bearer ")) continue;
      std::string token(absl::StripAsciiWhitespace(value.substr(7)));
      return authenticator_->NodeOf(token);
    }
    return absl::UnauthenticatedError("no 'authorization: Bearer <token>' metadata");
  }

  // The "clusterid" metadata the caller sent; empty when none or several (istiod reads those as
  // no claim).
  static std::string ClaimedCluster(const grpc::ServerContext& ctx) {
    auto range = ctx.client_metadata().equal_range(kClusterIdHeader);
    if (range.first == range.second || std::next(range.first) != range.second) return "";
    return std::string(range.first->second.data(), range.first->second.size());
  }

  void Count(const char* outcome) {
    absl::MutexLock lock(&mu_);
    ++counts_[outcome];
  }

  // `outcome` null: by the status code.
  grpc::Status Refuse(const std::string& peer, const std::string& node, const absl::Status& why,
                      const char* outcome = nullptr) {
    const absl::StatusCode code = why.code();
    Count(outcome != nullptr ? outcome
          : code == absl::StatusCode::kPermissionDenied ||
                  code == absl::StatusCode::kResourceExhausted
              ? "denied"
          : code == absl::StatusCode::kUnavailable ? "unavailable"
                                                   : "invalid");
    AMBIT_LOG(kComponent, Warning)
        << "refused CreateCertificate from node " << node << " (" << peer << "): " << why.message();
    return grpc::Status(static_cast<grpc::StatusCode>(why.code()), std::string(why.message()));
  }

  std::shared_ptr<const ca::CertificateAuthority> ca_;
  std::shared_ptr<const Entitlements> entitlements_;
  std::shared_ptr<CallerAuthenticator> authenticator_;
  std::shared_ptr<SigningRateLimiter> rate_;
  const std::string cluster_id_;
  mutable absl::Mutex mu_;
  std::map<std::string, uint64_t> counts_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<std::unique_ptr<CaServer>> CaServer::Start(
    const CaServerOptions& options, std::shared_ptr<const ca::CertificateAuthority> ca,
    std::shared_ptr<const Entitlements> entitlements, std::shared_ptr<SigningRateLimiter> rate) {
  std::shared_ptr<CallerAuthenticator> authenticator = options.authenticator;
  if (authenticator == nullptr) {
    AMBIT_ASSIGN_OR_RETURN(authenticator, MakeStaticTokenAuthenticator(options.tokens_file));
  }
  // Clients check the name they dial against the certificate: the listen host must be in it.
  std::vector<std::string> names = options.serving_names;
  if (std::string host = ListenHost(options.listen);
      !host.empty() && std::find(names.begin(), names.end(), host) == names.end()) {
    names.push_back(host);
  }
  auto serving = ca->IssueServingCertificate(names, absl::Hours(24 * 365));
  if (!serving.ok()) return serving.status();
  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back({serving->second, serving->first});
  auto server = std::unique_ptr<CaServer>(new CaServer());
  server->service_ = std::make_unique<Service>(ca, std::move(entitlements), authenticator,
                                               std::move(rate), options.cluster_id);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::SslServerCredentials(ssl), &server->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(kMaxCsrBytes + 4096));
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (!server->server_ || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve the CA API on ", options.listen));
  }
  AMBIT_LOG(kComponent, Info) << "serving istio.v1.auth.IstioCertificateService on "
                              << options.listen << " with a certificate for "
                              << absl::StrJoin(names, ", ") << " (port " << server->port_ << ")";
  AMBIT_LOG(kComponent, Info) << "CA API callers authenticated by " << authenticator->Description();
  return server;
}

std::map<std::string, uint64_t> CaServer::Counts() const { return service_->Counts(); }

CaServer::~CaServer() {
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

}  // namespace ambit::issuance
