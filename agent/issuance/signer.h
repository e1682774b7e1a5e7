#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ambit::ca {
class CertificateAuthority;
}

namespace ambit::issuance {

class RootCertSource;

// Where this node's workload certificates come from: the built-in CA or an external one speaking
// Istio's CA API. Thread-safe. Sign may block (a network round trip); call it off the control
// thread.
class Signer {
 public:
  virtual ~Signer() = default;
  // Returns the chain, leaf first, for a CSR asking for exactly `identity`.
  virtual absl::StatusOr<std::vector<std::string>> Sign(const std::string& csr_pem,
                                                        const std::string& identity,
                                                        absl::Duration ttl) = 0;
  // Roots peers' certificates must chain to (PEM; several during a root rotation).
  virtual std::vector<std::string> TrustBundle() const = 0;
  // "built-in CA" or "external CA at HOST:PORT", for operators.
  virtual std::string Description() const = 0;
};

// The shortest workload certificate lifetime ambitd asks for. The data plane renews at half of
// what is left, so 60 s leaves 30 s for a renewal: a round trip, an external CA's deadline
// (RemoteCaOptions::timeout) and a few retries with back-off. Shorter lifetimes buy nothing but
// signing load and expired certificates when the CA is slow.
inline constexpr absl::Duration kMinCertTtl = absl::Seconds(60);

// OK, or InvalidArgument saying why `ttl` cannot be the workload certificate lifetime.
absl::Status CheckCertTtl(absl::Duration ttl);

std::unique_ptr<Signer> MakeLocalSigner(std::shared_ptr<const ca::CertificateAuthority> ca);

struct RemoteCaOptions {
  std::string address;  // host:port of an Istio-compatible CA
  // PEM roots: to verify the CA's TLS and as the trust bundle; re-read when the file changes.
  // Unused when `roots` is set.
  std::string root_cert_file;
  std::string token_file;  // bearer token sent as "authorization: Bearer <token>"
  absl::Duration timeout = absl::Seconds(10);
  // Sent as "clusterid" metadata with every call, as ztunnel sends its CLUSTER_ID: istiod picks
  // the cluster whose API server reviews the token by it. Empty: not sent.
  std::string cluster_id = "Kubernetes";
  // Where the roots come from instead of root_cert_file (istiod's ConfigMap).
  std::shared_ptr<RootCertSource> roots;
};
// An external CA, asked as ztunnel asks istiod: every CreateCertificate names the identity in
// the request's metadata (ImpersonatedIdentity), so the CA certifies the pod's identity and not
// the caller's own; the leaf that comes back must be for exactly that identity. The TLS channel
// is rebuilt when the roots change; without roots no call is made (UNAVAILABLE).
absl::StatusOr<std::unique_ptr<Signer>> MakeRemoteSigner(const RemoteCaOptions& options);

// Splits a PEM bundle into its certificates.
std::vector<std::string> SplitPemCertificates(const std::string& bundle);

}  // namespace ambit::issuance
