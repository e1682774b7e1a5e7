// Configuration files (YAML from the config directory): every kind the loader reads (Pod,
// Namespace, Service, the istio ConfigMap, PeerAuthentication, AuthorizationPolicy) and the mesh
// file, through ParseConfigFile, then through the DirectoryLoader beside a fixed file of the other
// format, into an authorization engine that decides a connection between every pair of pods.
// Input: [format (byte & 1): 0 Kubernetes objects (objects.yaml), 1 mesh file (mesh.yaml)]
//        [file content].
// Properties: no crash, leak or hang; every error names the file it is about; an invalid object is
// never also a valid one; an unparseable file yields no objects.

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "agent/authz/peer_authentication.h"
#include "agent/common/log.h"
#include "agent/config/directory_loader.h"
#include "agent/config/kube_yaml.h"
#include "agent/config/load_result.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// Beside fuzzed objects: the mesh file, with a provider CUSTOM policies can name.
constexpr char kMesh[] = R"(trustDomain: cluster.local
rootNamespace: istio-system
extensionProviders:
- name: ext
  envoyExtAuthzGrpc: {service: ext.foo.svc.cluster.local, port: 9000}
)";

// Beside a fuzzed mesh file: a few objects whose meaning depends on it.
constexpr char kObjects[] = R"(apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec: {serviceAccountName: web, nodeName: node-a}
status: {podIP: 198.18.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: default, labels: {app: sleep}}
status: {podIP: 198.18.0.11}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: default}
spec:
  action: CUSTOM
  provider: {name: ext}
  rules: [{to: [{operation: {ports: ["8080"]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
)";

const std::string& Dir() {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/ambit-fuzz-config.XXXXXX";
    FUZZ_REQUIRE(mkdtemp(tmpl) != nullptr);
    static std::string to_remove = tmpl;
    atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(to_remove, ec);
    });
    return std::string(tmpl);
  }();
  return dir;
}

void Write(const std::string& name, absl::string_view content) {
  std::ofstream(Dir() + "/" + name, std::ios::binary | std::ios::trunc)
      .write(content.data(), static_cast<std::streamsize>(content.size()));
}

void Decide(const ambit::config::LoadResult& result) {
  auto engine = ambit::config::BuildAuthzEngine(result);
  if (!engine.ok()) return;
  const auto peer_authns = result.security.PeerAuthenticationList();
  int pairs = 0;
  for (const auto& [from_key, from] : result.state.pods) {
    for (const auto& [to_key, to] : result.state.pods) {
      if (++pairs > 16) return;
      ambit::authz::Workload target;
      target.namespace_name = to.namespace_name;
      target.labels = to.labels;
      ambit::authz::Request request;
      request.source_principal = "spiffe://cluster.local/ns/" + from.namespace_name + "/sa/x";
      if (!from.ips.empty()) request.source_ip = from.ips.front();
      if (!to.ips.empty()) request.destination_ip = to.ips.front();
      request.destination_port = 8080;
      (void)(*engine)->Explain(target, request);
      (void)ambit::authz::ResolveMtlsMode(peer_authns, result.state.mesh.root_namespace,
                                          target.namespace_name, target.labels, 8080);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Rejections are logged as warnings: millions of them would drown the fuzzer's own output.
  ambit::log::SetLevel("", ambit::log::Level::kError);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ambit::fuzz::Input in(data, size);
  const bool mesh = in.Byte() & 1;
  const absl::string_view content = in.Rest();
  const std::string name = mesh ? "mesh.yaml" : "objects.yaml";

  ambit::config::ParsedFile parsed =
      ambit::config::ParseConfigFile(name, std::string_view(content.data(), content.size()));
  for (const auto& e : parsed.errors) FUZZ_REQUIRE(e.file == name);
  // An id may be both accepted and rejected: a file that defines an object twice, once valid and
  // once not. The loader then keeps the valid definition and says the object is defined twice.
  for (const auto& o : parsed.objects) FUZZ_REQUIRE(!o.id.empty());
  if (parsed.unparseable) FUZZ_REQUIRE(parsed.objects.empty());

  // The loader keeps memory between loads: a fresh one per input, loaded twice (the second time
  // with the fuzzed file gone, so last-good bookkeeping and removal run too).
  std::filesystem::remove(Dir() + "/objects.yaml");
  std::filesystem::remove(Dir() + "/mesh.yaml");
  Write(name, content);
  Write(mesh ? "objects.yaml" : "mesh.yaml", mesh ? kObjects : kMesh);
  ambit::config::DirectoryLoader loader(Dir());
  ambit::config::LoadResult first = loader.Load();
  Decide(first);
  std::filesystem::remove(Dir() + "/" + name);
  ambit::config::LoadResult second = loader.Load();
  Decide(second);
  return 0;
}
