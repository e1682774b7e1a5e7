#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agent/issuance/caller_auth.h"
#include "agent/issuance/rate_limit.h"

namespace grpc {
class Server;
}

namespace ambit::ca {
class CertificateAuthority;
}

namespace ambit::issuance {

// Which identities each node may obtain: the SPIFFE IDs of the pods scheduled on it. Written by
// the control thread on every configuration change, read by CA request threads. Thread-safe.
class Entitlements {
 public:
  void Update(std::map<std::string, std::set<std::string>> identities_by_node);
  // OK, or PERMISSION_DENIED naming the node and identity; UNAVAILABLE before the first Update
  // (the pods' placement is not known yet, so nothing can be judged).
  absl::Status Check(const std::string& node, const std::string& identity) const;

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, std::set<std::string>> by_node_ ABSL_GUARDED_BY(mu_);
  bool loaded_ ABSL_GUARDED_BY(mu_) = false;
};

struct CaServerOptions {
  std::string listen;       // host:port or [v6]:port; port 0 picks a free one
  std::string tokens_file;  // lines "<token> <node-name>"; '#' starts a comment
  // Who callers are; null: the static tokens of tokens_file.
  std::shared_ptr<CallerAuthenticator> authenticator;
  // Names in the serving certificate, besides the listen host (an IP SAN for an address, a DNS
  // SAN for a name; a wildcard address adds nothing), which clients dialling it check.
  std::vector<std::string> serving_names = {"ambit-ca", "localhost"};
  // The cluster this CA serves: a caller whose "clusterid" metadata names another is refused
  // UNAUTHENTICATED, as istiod refuses a cluster it has no API server for.
  std::string cluster_id = "Kubernetes";
};

// The host part of a listen address ("10.0.0.1:15012" -> "10.0.0.1", "[::1]:0" -> "::1"), or ""
// for a wildcard ("0.0.0.0", "::", "[::]", ":port") or something that is not host:port.
std::string ListenHost(const std::string& listen);

// Serves istio.v1.auth.IstioCertificateService/CreateCertificate over gRPC with TLS, as istiod
// does. A caller authenticates with "authorization: Bearer <token>"; its token names its node
// (CallerAuthenticator: a static file, or a TokenReview), and it may only obtain identities of
// pods on that node. The identity is the CSR's one URI SAN, or the request metadata's
// ImpersonatedIdentity (impersonation.h), which must then be an Istio identity and equal the
// CSR's SAN: ztunnel's requests are served like ambit's own. A token that cannot be checked now
// (API server down) is refused UNAVAILABLE. Malformed or oversized CSRs are INVALID_ARGUMENT /
// RESOURCE_EXHAUSTED and never reach the signer unchecked. A node over its signing rate (`rate`,
// shared with other users of the same CA; null: unlimited) gets RESOURCE_EXHAUSTED saying when to
// retry.
class CaServer {
 public:
  static absl::StatusOr<std::unique_ptr<CaServer>> Start(
      const CaServerOptions& options, std::shared_ptr<const ca::CertificateAuthority> ca,
      std::shared_ptr<const Entitlements> entitlements,
      std::shared_ptr<SigningRateLimiter> rate = nullptr);
  ~CaServer();
  int port() const { return port_; }
  // Requests answered so far by outcome, for /metrics: "issued", "unauthenticated" (no or a bad
  // token, or it could not be checked, or another cluster's), "denied" (not entitled, rate),
  // "unavailable" (the placement not loaded yet), "invalid" (bad CSR), "impersonation_denied"
  // (an impersonated identity of no pod on the caller's node), "impersonation_invalid" (an
  // impersonated identity that is no Istio identity, or not the CSR's).
  std::map<std::string, uint64_t> Counts() const;

 private:
  class Service;
  CaServer() = default;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

// The URI SANs a PEM CSR asks for (parsing only; the CA verifies the signature).
absl::StatusOr<std::vector<std::string>> RequestedUris(const std::string& csr_pem);

}  // namespace ambit::issuance
