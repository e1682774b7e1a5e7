#include "agent/node/ca_root_configmap.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace ambit::node {
namespace {

// A DNS-1123 subdomain, as Kubernetes names namespaces and ConfigMaps: what may go into the path.
bool IsSubdomain(absl::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) return false;
  }
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  return alnum(s.front()) && alnum(s.back());
}

std::string Name(const ConfigMapRef& ref) {
  return absl::StrCat("ConfigMap ", ref.namespace_name, "/", ref.name);
}

}  // namespace

absl::StatusOr<ConfigMapRef> ParseConfigMapRef(absl::string_view text) {
  std::vector<std::string> parts = absl::StrSplit(text, '/');
  if (parts.size() != 2 || !IsSubdomain(parts[0]) || !IsSubdomain(parts[1])) {
    return absl::InvalidArgumentError(
        absl::StrCat("--ca-root-configmap '", text,
                     "': expected NAMESPACE/NAME (lower-case Kubernetes names), e.g. "
                     "ambit-system/istio-ca-root-cert"));
  }
  ConfigMapRef ref;
  ref.namespace_name = std::move(parts[0]);
  ref.name = std::move(parts[1]);
  return ref;
}

absl::StatusOr<std::string> RootsFromConfigMap(long http_status, absl::string_view body,
                                               const ConfigMapRef& ref) {
  if (http_status == 404) {
    return absl::NotFoundError(absl::StrCat(Name(ref),
                                            " not found (istiod publishes "
                                            "istio-ca-root-cert in every namespace)"));
  }
  if (http_status != 200) {
    return absl::UnavailableError(
        absl::StrCat("reading ", Name(ref), ": the API server answered HTTP ", http_status));
  }
  nlohmann::json doc = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object() || doc.value("kind", "") != "ConfigMap") {
    return absl::UnavailableError(
        absl::StrCat("reading ", Name(ref), ": the API server's answer is no ConfigMap"));
  }
  auto data = doc.find("data");
  if (data == doc.end() || !data->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(Name(ref), " has no data"));
  }
  auto value = data->find(ref.key);
  if (value == data->end() || !value->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Name(ref), " has no data key ", ref.key, " (a PEM bundle of roots)"));
  }
  return value->get<std::string>();
}

std::shared_ptr<ConfigMapRootSource> ConfigMapRootSource::Start(
    std::unique_ptr<kube::KubeClient> client, ConfigMapRef ref, absl::Duration interval) {
  auto source = std::shared_ptr<ConfigMapRootSource>(
      new ConfigMapRootSource(std::move(client), std::move(ref), interval));
  // At once, so a node starting with the API server up has roots before its first CSR.
  source->ReadOnce();
  source->thread_ = std::thread([s = source.get()] { s->Run(); });
  return source;
}

ConfigMapRootSource::ConfigMapRootSource(std::unique_ptr<kube::KubeClient> client, ConfigMapRef ref,
                                         absl::Duration interval)
    : client_(std::move(client)), ref_(std::move(ref)), interval_(interval), holder_(Name(ref_)) {}

ConfigMapRootSource::~ConfigMapRootSource() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  cancel_.Cancel();
  if (thread_.joinable()) thread_.join();
}

void ConfigMapRootSource::ReadOnce() {
  const std::string path =
      absl::StrCat("/api/v1/namespaces/", ref_.namespace_name, "/configmaps/", ref_.name);
  auto resp = client_->Request("GET", path, {}, absl::Seconds(10), &cancel_);
  if (!resp.ok()) {
    if (resp.status().code() != absl::StatusCode::kCancelled) {
      holder_.Failed(absl::UnavailableError(
          absl::StrCat("reading ", Name(ref_), ": ", resp.status().message())));
    }
    return;
  }
  auto roots = RootsFromConfigMap(resp->status, resp->body, ref_);
  if (!roots.ok()) {
    holder_.Failed(roots.status());
    return;
  }
  (void)holder_.Offer(*roots, absl::StrCat(Name(ref_), " key ", ref_.key));
}

void ConfigMapRootSource::Run() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop_), interval_);
      if (stop_) return;
    }
    ReadOnce();
  }
}

}  // namespace ambit::node
