#include "agent/issuance/ca_server.h"

#include <grpcpp/grpcpp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "agent/ca/certificate_authority.h"
#include "agent/common/log.h"
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

absl::StatusOr<std::map<std::string, std::string>> LoadTokens(const std::string& path) {
  std::map<std::string, std::string> tokens;
  if (path.empty()) return tokens;
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read CA tokens file ", path));
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    std::string_view body = line;
    body = body.substr(0, body.find('#'));
    std::vector<std::string> f =
        absl::StrSplit(std::string(body), absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (f.empty()) continue;
    if (f.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", n, ": expected '<token> <node-name>'"));
    }
    tokens[f[0]] = f[1];
  }
  return tokens;
}

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
}

absl::Status Entitlements::Check(const std::string& node, const std::string& identity) const {
  absl::MutexLock lock(&mu_);
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
          std::map<std::string, std::string> tokens, std::shared_ptr<SigningRateLimiter> rate)
      : ca_(std::move(ca)),
        entitlements_(std::move(entitlements)),
        tokens_(std::move(tokens)),
        rate_(std::move(rate)) {}

  grpc::Status CreateCertificate(grpc::ServerContext* ctx,
                                 const istio::v1::auth::IstioCertificateRequest* req,
                                 istio::v1::auth::IstioCertificateResponse* resp) override {
    std::string peer = ctx->peer();
    auto node = Authenticate(*ctx);
    if (!node.ok()) {
      AMBIT_LOG(kComponent, Warning)
          << "CreateCertificate from " << peer << ": " << node.status().message();
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, std::string(node.status().message()));
    }
    auto uris = RequestedUris(req->csr());
    if (!uris.ok()) return Refuse(peer, *node, uris.status());
    if (uris->size() != 1) {
      return Refuse(
          peer, *node,
          absl::InvalidArgumentError(absl::StrCat(
              "csr must ask for exactly one URI (a SPIFFE ID); it asks for ", uris->size())));
    }
    const std::string& identity = (*uris)[0];
    if (auto allowed = entitlements_->Check(*node, identity); !allowed.ok()) {
      return Refuse(peer, *node, allowed);
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
    AMBIT_LOG(kComponent, Info) << "issued " << identity << " to node " << *node << " (" << peer
                                << ")";
    return grpc::Status::OK;
  }

 private:
  absl::StatusOr<std::string> Authenticate(const grpc::ServerContext& ctx) const {
    auto range = ctx.client_metadata().equal_range("authorization");
    for (auto it = range.first; it != range.second; ++it) {
      std::string value(it->second.data(), it->second.size());
      if (!absl::StartsWithIgnoreCase(value, "bearer ")) continue;
      std::string token(absl::StripAsciiWhitespace(value.substr(7)));
      auto t = tokens_.find(token);
      if (t != tokens_.end()) return t->second;
      return absl::UnauthenticatedError("unknown bearer token");
    }
    return absl::UnauthenticatedError("no 'authorization: Bearer <token>' metadata");
  }

  static grpc::Status Refuse(const std::string& peer, const std::string& node,
                             const absl::Status& why) {
    AMBIT_LOG(kComponent, Warning)
        << "refused CreateCertificate from node " << node << " (" << peer << "): " << why.message();
    return grpc::Status(static_cast<grpc::StatusCode>(why.code()), std::string(why.message()));
  }

  std::shared_ptr<const ca::CertificateAuthority> ca_;
  std::shared_ptr<const Entitlements> entitlements_;
  std::map<std::string, std::string> tokens_;
  std::shared_ptr<SigningRateLimiter> rate_;
};

absl::StatusOr<std::unique_ptr<CaServer>> CaServer::Start(
    const CaServerOptions& options, std::shared_ptr<const ca::CertificateAuthority> ca,
    std::shared_ptr<const Entitlements> entitlements, std::shared_ptr<SigningRateLimiter> rate) {
  auto tokens = LoadTokens(options.tokens_file);
  if (!tokens.ok()) return tokens.status();
  if (tokens->empty()) {
    return absl::InvalidArgumentError(
        "--ca-listen needs --ca-tokens: without tokens no caller could be authenticated");
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
  server->service_ =
      std::make_unique<Service>(ca, std::move(entitlements), std::move(*tokens), std::move(rate));
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
  return server;
}

CaServer::~CaServer() {
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

}  // namespace ambit::issuance
