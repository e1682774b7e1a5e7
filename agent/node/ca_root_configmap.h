#pragma once

// The external CA's roots from a ConfigMap read through the API server (`--ca-root-configmap`):
// istiod publishes its roots as istio-ca-root-cert (key root-cert.pem) in every namespace and
// rewrites it when its root rotates (docs/ARCHITECTURE.md#ca-api).

#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/issuance/ca_roots.h"
#include "agent/kube/client.h"

namespace ambit::node {

struct ConfigMapRef {
  std::string namespace_name;
  std::string name;
  std::string key = "root-cert.pem";  // istiod's key in istio-ca-root-cert
};

// "NAMESPACE/NAME" (both DNS labels / subdomains as Kubernetes allows them); INVALID_ARGUMENT
// naming the flag's value otherwise.
absl::StatusOr<ConfigMapRef> ParseConfigMapRef(absl::string_view text);

// The roots in the API server's answer to GET of the ConfigMap: data[key] when the status is 200
// and the body a ConfigMap. NOT_FOUND for 404 (not published yet, or another name), UNAVAILABLE
// for another status, INVALID_ARGUMENT for a body without the key; each names the ConfigMap.
// The roots themselves are validated by the holder. Pure.
absl::StatusOr<std::string> RootsFromConfigMap(long http_status, absl::string_view body,
                                               const ConfigMapRef& ref);

// Reads the ConfigMap at start and then every `interval` on a thread of its own, keeping the last
// good roots (issuance::RootCertHolder). Thread-safe; the destructor stops and joins the thread.
class ConfigMapRootSource final : public issuance::RootCertSource {
 public:
  // Never fails for an unreachable API server or a missing ConfigMap: it says so in the log and
  // Roots() is UNAVAILABLE until the ConfigMap is read (fail closed: no CA call without roots).
  static std::shared_ptr<ConfigMapRootSource> Start(std::unique_ptr<kube::KubeClient> client,
                                                    ConfigMapRef ref,
                                                    absl::Duration interval = absl::Seconds(5));
  ~ConfigMapRootSource() override;

  absl::StatusOr<std::string> Roots() override { return holder_.Current(); }
  std::string Description() const override { return holder_.description(); }

 private:
  ConfigMapRootSource(std::unique_ptr<kube::KubeClient> client, ConfigMapRef ref,
                      absl::Duration interval);
  void ReadOnce();
  void Run();

  const std::unique_ptr<kube::KubeClient> client_;
  const ConfigMapRef ref_;
  const absl::Duration interval_;
  issuance::RootCertHolder holder_;
  kube::Cancellation cancel_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace ambit::node
