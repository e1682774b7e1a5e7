#include "agent/config/kube_yaml.h"

#include <string>
#include <tuple>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::config {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::Pair;
using ::testing::SizeIs;
using ::testing::UnorderedElementsAre;

IpAddress Ip(const char* text) { return IpAddress::Parse(text).value(); }

template <typename T>
std::vector<T> All(const ParsedFile& parsed) {
  std::vector<T> out;
  for (const ParsedObject& o : parsed.objects) {
    if (const T* t = std::get_if<T>(&o.object)) out.push_back(*t);
  }
  return out;
}

std::vector<std::string> Ids(const ParsedFile& parsed) {
  std::vector<std::string> out;
  for (const ParsedObject& o : parsed.objects) out.push_back(o.id);
  return out;
}

std::vector<ConfigError> Errors(const ParsedFile& parsed) {
  std::vector<ConfigError> out;
  for (const ConfigError& e : parsed.errors) {
    if (!e.warning) out.push_back(e);
  }
  return out;
}

std::vector<ConfigError> Warnings(const ParsedFile& parsed) {
  std::vector<ConfigError> out;
  for (const ConfigError& e : parsed.errors) {
    if (e.warning) out.push_back(e);
  }
  return out;
}

std::string Describe(const ParsedFile& parsed) {
  std::string out;
  for (const ConfigError& e : parsed.errors) out += e.ToString() + "\n";
  return out;
}

TEST(KubeYamlTest, ParsesPodWithLabelsAnnotationsAndDualStackIps) {
  ParsedFile parsed = ParseKubeYaml("pods.yaml", R"(
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: prod
  uid: 6f0c1c5e-1111-2222-3333-444455556666
  labels:
    app: web
    app.kubernetes.io/version: "1.2"
  annotations:
    ambit.dev/netns: /var/run/netns/web-0
    example.com/note: "free text: anything goes"
spec:
  serviceAccountName: web-sa
  nodeName: node-a
  containers:
  - name: web
    image: nginx
status:
  phase: Running
  podIP: 198.18.0.10
  podIPs:
  - ip: 198.18.0.10
  - ip: 2001:2::10
)");
  EXPECT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  EXPECT_FALSE(parsed.unparseable);
  ASSERT_THAT(All<state::Pod>(parsed), SizeIs(1));
  const state::Pod pod = All<state::Pod>(parsed)[0];
  EXPECT_EQ(parsed.objects[0].id, "Pod prod/web-0");
  EXPECT_EQ(pod.name, "web-0");
  EXPECT_EQ(pod.namespace_name, "prod");
  EXPECT_EQ(pod.Key(), "prod/web-0");
  EXPECT_EQ(pod.uid, "6f0c1c5e-1111-2222-3333-444455556666");
  EXPECT_THAT(pod.labels,
              UnorderedElementsAre(Pair("app", "web"), Pair("app.kubernetes.io/version", "1.2")));
  // Annotations are checked, then only those ambit reads later are kept; the netns one is
  // netns_path.
  EXPECT_THAT(pod.annotations, IsEmpty());
  EXPECT_EQ(pod.netns_path, "/var/run/netns/web-0");
  EXPECT_EQ(pod.service_account, "web-sa");
  EXPECT_EQ(pod.node_name, "node-a");
  EXPECT_THAT(pod.ips, ElementsAre(Ip("198.18.0.10"), Ip("2001:2::10")));
  EXPECT_EQ(pod.netns_path, "/var/run/netns/web-0");
  EXPECT_EQ(pod.source_file, "pods.yaml");
}

TEST(KubeYamlTest, PodDefaultsAndFallbacks) {
  ParsedFile parsed = ParseKubeYaml("pods.yaml", R"(
apiVersion: v1
kind: Pod
metadata:
  name: bare
---
apiVersion: v1
kind: Pod
metadata:
  name: old-style
  labels:
  annotations: null
spec:
  serviceAccount: legacy
status:
  podIP: 198.18.0.20
)");
  EXPECT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  auto pods = All<state::Pod>(parsed);
  ASSERT_THAT(pods, SizeIs(2));
  EXPECT_EQ(pods[0].namespace_name, "default");
  EXPECT_EQ(pods[0].service_account, "default");
  EXPECT_THAT(pods[0].ips, IsEmpty());
  EXPECT_EQ(pods[0].netns_path, "");
  EXPECT_EQ(pods[0].uid, "");
  EXPECT_EQ(pods[1].service_account, "legacy");
  EXPECT_THAT(pods[1].ips, ElementsAre(Ip("198.18.0.20")));
  EXPECT_THAT(pods[1].labels, IsEmpty());
}

TEST(KubeYamlTest, PodWorkloadMetadataFromOwnerReferencesAndLabels) {
  ParsedFile parsed = ParseKubeYaml("pods.yaml", R"(
apiVersion: v1
kind: Pod
metadata:
  name: web-5d4f8b7c9-x2x7q
  generateName: web-5d4f8b7c9-
  namespace: prod
  labels:
    app: web
    version: v2
    pod-template-hash: 5d4f8b7c9
  ownerReferences:
  - apiVersion: apps/v1
    kind: ReplicaSet
    name: web-5d4f8b7c9
    uid: 1b2c
    controller: true
    blockOwnerDeletion: true
---
apiVersion: v1
kind: Pod
metadata:
  name: solo
)");
  EXPECT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  auto pods = All<state::Pod>(parsed);
  ASSERT_THAT(pods, SizeIs(2));
  EXPECT_EQ(pods[0].workload_name, "web");
  EXPECT_EQ(pods[0].canonical_service, "web");
  EXPECT_EQ(pods[0].canonical_revision, "v2");
  EXPECT_EQ(pods[1].workload_name, "solo");
  EXPECT_EQ(pods[1].canonical_service, "solo");
  EXPECT_EQ(pods[1].canonical_revision, "latest");
}

TEST(KubeYamlTest, MalformedOwnerReferencesAreWarningsAndThePodStays) {
  ParsedFile parsed = ParseKubeYaml("pods.yaml", R"(
apiVersion: v1
kind: Pod
metadata:
  name: web-abcde
  generateName: web-
  ownerReferences:
  - kind: [ReplicaSet]
    name: web
    controller: true
  - just-a-string
  - kind: StatefulSet
    controller: true
---
apiVersion: v1
kind: Pod
metadata:
  name: other
  ownerReferences: {kind: ReplicaSet}
)");
  EXPECT_THAT(Errors(parsed), IsEmpty()) << Describe(parsed);
  auto warnings = Warnings(parsed);
  ASSERT_THAT(warnings, SizeIs(5)) << Describe(parsed);
  EXPECT_EQ(warnings[0].field, "metadata.ownerReferences[0].kind");
  EXPECT_EQ(warnings[1].field, "metadata.ownerReferences[0].kind");
  EXPECT_EQ(warnings[2].field, "metadata.ownerReferences[1]");
  EXPECT_EQ(warnings[3].field, "metadata.ownerReferences[2].name");
  EXPECT_EQ(warnings[4].field, "metadata.ownerReferences");
  EXPECT_THAT(warnings[4].message, HasSubstr("must be a list"));
  auto pods = All<state::Pod>(parsed);
  ASSERT_THAT(pods, SizeIs(2));
  EXPECT_EQ(pods[0].workload_name, "web-abcde");  // no usable controller: the pod's name
  EXPECT_EQ(pods[1].workload_name, "other");
}

TEST(KubeYamlTest, MultiDocumentFileWithEmptyDocuments) {
  ParsedFile parsed = ParseKubeYaml("all.yaml", R"(---
apiVersion: v1
kind: Namespace
metadata:
  name: prod
  labels:
    istio.io/dataplane-mode: ambient
---
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: prod}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  clusterIP: 198.19.0.1
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
...
)");
  EXPECT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  EXPECT_THAT(Ids(parsed), ElementsAre("Namespace prod", "Pod prod/a", "Service prod/web"));
  ASSERT_THAT(All<state::Namespace>(parsed), SizeIs(1));
  EXPECT_THAT(All<state::Namespace>(parsed)[0].labels,
              ElementsAre(Pair("istio.io/dataplane-mode", "ambient")));
}

TEST(KubeYamlTest, KindListAsKubectlWritesIt) {
  ParsedFile parsed = ParseKubeYaml("get.yaml", R"(apiVersion: v1
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: a
    namespace: default
  status:
    podIPs:
    - ip: 198.18.0.1
- apiVersion: v1
  kind: Pod
  metadata:
    name: b
    namespace: default
  status:
    podIPs:
    - ip: 198.18.0.2
- apiVersion: v1
  kind: Service
  metadata:
    name: web
kind: List
metadata:
  resourceVersion: ""
)");
  EXPECT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  EXPECT_THAT(Ids(parsed), ElementsAre("Pod default/a", "Pod default/b", "Service default/web"));
}

TEST(KubeYamlTest, TypedListGivesItemsTheirKind) {
  ParsedFile parsed = ParseKubeYaml("pods.yaml", R"(apiVersion: v1
kind: PodList
items:
- metadata: {name: a}
- metadata: {name: b}
)");
  EXPECT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  EXPECT_THAT(Ids(parsed), ElementsAre("Pod default/a", "Pod default/b"));
}

TEST(KubeYamlTest, BadIpIsReportedWithFileObjectAndFieldAndOtherPodsLoad) {
  ParsedFile parsed = ParseKubeYaml("pods.yaml", R"(apiVersion: v1
kind: Pod
metadata:
  name: web
status:
  podIPs:
  - ip: 198.18.0.1
  - ip: x
---
apiVersion: v1
kind: Pod
metadata:
  name: db
status:
  podIP: 198.18.0.2
)");
  ASSERT_THAT(parsed.errors, SizeIs(1)) << Describe(parsed);
  const ConfigError& e = parsed.errors[0];
  EXPECT_EQ(e.file, "pods.yaml");
  EXPECT_EQ(e.object, "Pod default/web");
  EXPECT_EQ(e.field, "status.podIPs[1].ip");
  EXPECT_EQ(e.message, "'x' is not an IPv4 or IPv6 address");
  EXPECT_FALSE(e.warning);
  EXPECT_EQ(e.line, 8);
  EXPECT_EQ(e.ToString(),
            "pods.yaml:8:9: Pod default/web: field status.podIPs[1].ip: 'x' is not an IPv4 or "
            "IPv6 address");
  EXPECT_THAT(Ids(parsed), ElementsAre("Pod default/db"));
  EXPECT_THAT(parsed.rejected_ids, ElementsAre("Pod default/web"));
}

TEST(KubeYamlTest, ErrorToStringWithoutPosition) {
  ConfigError e{"pods.yaml", "Pod default/web", "status.podIPs[1].ip",
                "'x' is not an IPv4 or IPv6 address"};
  EXPECT_EQ(e.ToString(),
            "pods.yaml: Pod default/web: field status.podIPs[1].ip: 'x' is not an IPv4 or IPv6 "
            "address");
  ConfigError w{"x.yaml", "Deployment default/api", "", "ignored", /*warning=*/true, 3};
  EXPECT_EQ(w.ToString(), "x.yaml:3: warning: Deployment default/api: ignored");
  ConfigError f{"x.yaml", "", "", "not valid YAML: oops", false, 2, 7};
  EXPECT_EQ(f.ToString(), "x.yaml:2:7: not valid YAML: oops");
}

TEST(KubeYamlTest, ReportsEveryBadFieldOfAnObject) {
  ParsedFile parsed = ParseKubeYaml("pods.yaml", R"(apiVersion: v1
kind: Pod
metadata:
  name: Web_0
  namespace: prod.eu
  labels:
    app: "not a valid value"
spec:
  serviceAccountName: [a, b]
status:
  podIP: 300.1.1.1
)");
  std::vector<std::string> fields;
  for (const ConfigError& e : Errors(parsed)) {
    EXPECT_EQ(e.object, "Pod prod.eu/Web_0");
    fields.push_back(e.field);
  }
  EXPECT_THAT(fields, ElementsAre("metadata.name", "metadata.namespace", "metadata.labels[app]",
                                  "spec.serviceAccountName", "status.podIP"))
      << Describe(parsed);
  EXPECT_THAT(parsed.objects, IsEmpty());
  EXPECT_THAT(parsed.rejected_ids, ElementsAre("Pod prod.eu/Web_0"));
}

TEST(KubeYamlTest, MissingNameIsAnErrorAndCannotBeIdentified) {
  ParsedFile parsed = ParseKubeYaml("pods.yaml", R"(apiVersion: v1
kind: Pod
metadata:
  namespace: prod
---
apiVersion: v1
kind: Pod
)");
  ASSERT_THAT(Errors(parsed), SizeIs(2)) << Describe(parsed);
  EXPECT_EQ(parsed.errors[0].object, "Pod (document 1)");
  EXPECT_EQ(parsed.errors[0].field, "metadata.name");
  EXPECT_EQ(parsed.errors[0].message, "is required");
  EXPECT_EQ(parsed.errors[1].object, "Pod (document 2)");
  EXPECT_THAT(parsed.rejected_ids, IsEmpty());
}

TEST(KubeYamlTest, DocumentWithoutApiVersionOrKindIsAnError) {
  ParsedFile parsed = ParseKubeYaml("pods.yaml", R"(kind: Pod
metadata: {name: a}
---
apiVersion: v1
metadata: {name: b}
---
- just
- a list
---
apiVersion: v1
kind: Pod
metadata: {name: c}
)");
  std::vector<ConfigError> errors = Errors(parsed);
  ASSERT_THAT(errors, SizeIs(3)) << Describe(parsed);
  EXPECT_EQ(errors[0].object, "Pod a");
  EXPECT_EQ(errors[0].field, "apiVersion");
  EXPECT_EQ(errors[1].object, "document 2");
  EXPECT_EQ(errors[1].field, "kind");
  EXPECT_EQ(errors[2].object, "document 3");
  EXPECT_THAT(errors[2].message, HasSubstr("expected a Kubernetes object"));
  EXPECT_THAT(Ids(parsed), ElementsAre("Pod default/c"));
}

TEST(KubeYamlTest, UnknownKindsAreWarningsAndIgnored) {
  ParsedFile parsed = ParseKubeYaml("mixed.yaml", R"(apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: prod}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec: {}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
---
apiVersion: v1
kind: Pod
metadata: {name: a}
)");
  EXPECT_THAT(Errors(parsed), IsEmpty()) << Describe(parsed);
  std::vector<ConfigError> warnings = Warnings(parsed);
  ASSERT_THAT(warnings, SizeIs(2));
  EXPECT_EQ(warnings[0].object, "Deployment prod/api");
  EXPECT_THAT(warnings[0].message, HasSubstr("kind Deployment (apiVersion apps/v1)"));
  EXPECT_EQ(warnings[1].object, "Secret creds");
  EXPECT_THAT(warnings[0].ToString(), HasSubstr("mixed.yaml:1:1: warning: Deployment prod/api"));
  // RequestAuthentication is read (request_authentication_yaml_test.cc has its rules).
  EXPECT_THAT(Ids(parsed), ElementsAre("RequestAuthentication prod/jwt", "Pod default/a"));
}

TEST(KubeYamlTest, NotYamlIsOneErrorWithLineAndColumn) {
  ParsedFile parsed =
      ParseKubeYaml("broken.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: a\n");
  EXPECT_TRUE(parsed.unparseable);
  EXPECT_THAT(parsed.objects, IsEmpty());
  ASSERT_THAT(parsed.errors, SizeIs(1));
  const ConfigError& e = parsed.errors[0];
  EXPECT_EQ(e.file, "broken.yaml");
  EXPECT_EQ(e.object, "");
  EXPECT_THAT(e.message, HasSubstr("not valid YAML"));
  EXPECT_GT(e.line, 0);
  EXPECT_GT(e.column, 0);

  ParsedFile tabs = ParseKubeYaml("tabs.yaml", "a:\n\tb: c\n");
  EXPECT_TRUE(tabs.unparseable);
  ASSERT_THAT(tabs.errors, SizeIs(1));
  EXPECT_EQ(tabs.errors[0].line, 2);
}

TEST(KubeYamlTest, EmptyFileHasNothing) {
  for (const char* text : {"", "\n", "# only a comment\n", "---\n"}) {
    ParsedFile parsed = ParseKubeYaml("empty.yaml", text);
    EXPECT_FALSE(parsed.unparseable) << text;
    EXPECT_THAT(parsed.errors, IsEmpty()) << text;
    EXPECT_THAT(parsed.objects, IsEmpty()) << text;
  }
}

std::string PodWithNetns(const std::string& path) {
  return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations:\n"
         "    ambit.dev/netns: \"" +
         path + "\"\n";
}

TEST(KubeYamlTest, NetnsAnnotationMustNameANetworkNamespace) {
  for (const char* good : {"/var/run/netns/web", "/run/netns/web-0", "/run/netns/cni-1a2b.c_d",
                           "/proc/1234/ns/net", "/proc/1/ns/net"}) {
    ParsedFile parsed = ParseKubeYaml("pods.yaml", PodWithNetns(good));
    EXPECT_THAT(parsed.errors, IsEmpty()) << good << ": " << Describe(parsed);
    ASSERT_THAT(All<state::Pod>(parsed), SizeIs(1)) << good;
    EXPECT_EQ(All<state::Pod>(parsed)[0].netns_path, good);
  }
  for (const char* bad :
       {"", "web", "var/run/netns/web", "/var/run/netns/", "/var/run/netns/../../etc/passwd",
        "/var/run/netns/..", "/var/run/netns/a/b", "/run/netns/.", "/tmp/netns/web",
        "/proc/self/ns/net", "/proc/0/ns/net", "/proc/01/ns/net", "/proc/12/ns/mnt",
        "/proc//ns/net", "/proc/ns/net", "/var/run/netns/web x", "/run/netns/..hidden"}) {
    ParsedFile parsed = ParseKubeYaml("pods.yaml", PodWithNetns(bad));
    ASSERT_THAT(Errors(parsed), SizeIs(1)) << "'" << bad << "' was accepted";
    EXPECT_EQ(parsed.errors[0].field, "metadata.annotations[ambit.dev/netns]");
    EXPECT_THAT(parsed.errors[0].message, HasSubstr("/var/run/netns/NAME"));
    EXPECT_THAT(parsed.objects, IsEmpty());
  }
}

TEST(KubeYamlTest, ParsesServices) {
  ParsedFile parsed = ParseKubeYaml("svc.yaml", R"(apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: prod
spec:
  clusterIP: 198.19.0.10
  clusterIPs: [198.19.0.10, "2001:2:0:1::10"]
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
  - name: grpc
    appProtocol: grpc
    port: 9090
    protocol: TCP
    targetPort: grpc-port
  - name: dns
    port: 53
    protocol: UDP
---
apiVersion: v1
kind: Service
metadata: {name: headless}
spec:
  clusterIP: None
  ports: [{port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: single}
spec:
  clusterIP: 198.19.0.11
)");
  EXPECT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  auto services = All<state::Service>(parsed);
  ASSERT_THAT(services, SizeIs(3));
  const state::Service& web = services[0];
  EXPECT_EQ(web.Key(), "prod/web");
  EXPECT_THAT(web.cluster_ips, ElementsAre(Ip("198.19.0.10"), Ip("2001:2:0:1::10")));
  EXPECT_THAT(web.selector, ElementsAre(Pair("app", "web")));
  EXPECT_THAT(web.ports, ElementsAre(state::ServicePort{"http", 80, "TCP", "8080", ""},
                                     state::ServicePort{"grpc", 9090, "TCP", "grpc-port", "grpc"},
                                     state::ServicePort{"dns", 53, "UDP", "53", ""}));
  EXPECT_EQ(web.source_file, "svc.yaml");
  EXPECT_THAT(services[1].cluster_ips, IsEmpty());
  EXPECT_THAT(services[1].ports, ElementsAre(state::ServicePort{"", 5432, "TCP", "5432", ""}));
  EXPECT_THAT(services[2].cluster_ips, ElementsAre(Ip("198.19.0.11")));
}

TEST(KubeYamlTest, RejectsBadServices) {
  ParsedFile parsed = ParseKubeYaml("svc.yaml", R"(apiVersion: v1
kind: Service
metadata: {name: web.v2}
---
apiVersion: v1
kind: Service
metadata: {name: ports}
spec:
  ports:
  - {port: 0}
  - {port: 70000}
  - {port: http}
  - {name: x, port: 80, protocol: ICMP}
  - {port: 81, targetPort: 0}
  - {port: 82, targetPort: Not_A_Name}
  - {name: ok, targetPort: 80}
---
apiVersion: v1
kind: Service
metadata: {name: ips}
spec:
  clusterIPs: [None, 198.19.0.1]
  selector: {app: [web]}
)");
  std::vector<std::string> fields;
  for (const ConfigError& e : Errors(parsed)) fields.push_back(e.object + " " + e.field);
  EXPECT_THAT(fields, ElementsAre("Service default/web.v2 metadata.name",
                                  "Service default/ports spec.ports[0].port",
                                  "Service default/ports spec.ports[1].port",
                                  "Service default/ports spec.ports[2].port",
                                  "Service default/ports spec.ports[3].protocol",
                                  "Service default/ports spec.ports[4].targetPort",
                                  "Service default/ports spec.ports[5].targetPort",
                                  "Service default/ports spec.ports[6].port",
                                  "Service default/ips spec.clusterIPs[0]",
                                  "Service default/ips spec.selector[app]"))
      << Describe(parsed);
  EXPECT_THAT(parsed.objects, IsEmpty());
  EXPECT_THAT(parsed.rejected_ids, ElementsAre("Service default/web.v2", "Service default/ports",
                                               "Service default/ips"));
  EXPECT_THAT(parsed.errors[1].message, HasSubstr("'0' is not a port number (1 to 65535)"));
}

TEST(KubeYamlTest, NamespaceNamesAreDnsLabels) {
  ParsedFile parsed = ParseKubeYaml("ns.yaml", R"(apiVersion: v1
kind: Namespace
metadata: {name: team.a}
---
apiVersion: v1
kind: Namespace
metadata:
  name: team-b
  annotations: {"bad key!": x}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-c}
)");
  ASSERT_THAT(Errors(parsed), SizeIs(2)) << Describe(parsed);
  EXPECT_EQ(parsed.errors[0].object, "Namespace team.a");
  EXPECT_EQ(parsed.errors[0].field, "metadata.name");
  EXPECT_THAT(parsed.errors[0].message, HasSubstr("DNS-1123 label"));
  EXPECT_EQ(parsed.errors[1].field, "metadata.annotations[bad key!]");
  EXPECT_THAT(Ids(parsed), ElementsAre("Namespace team-c"));
}

TEST(KubeYamlTest, WrongTypesAreErrorsNotCrashes) {
  ParsedFile parsed = ParseKubeYaml("pods.yaml", R"(apiVersion: v1
kind: Pod
metadata: [name, a]
---
apiVersion: v1
kind: Pod
metadata:
  name: {a: b}
---
apiVersion: v1
kind: Pod
metadata:
  name: c
  labels: [a, b]
spec: 42
status:
  podIPs: {ip: 198.18.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: d}
status:
  podIPs: [198.18.0.1, {address: 198.18.0.2}]
---
apiVersion: [v1]
kind: {Pod: 1}
)");
  EXPECT_THAT(parsed.objects, IsEmpty()) << Describe(parsed);
  EXPECT_THAT(Errors(parsed), SizeIs(::testing::Ge(7u))) << Describe(parsed);
  EXPECT_FALSE(parsed.unparseable);
}

TEST(KubeYamlTest, MeshFileDefaultsAndOverrides) {
  ParsedFile empty = ParseConfigFile("mesh.yaml", "");
  EXPECT_THAT(empty.errors, IsEmpty());
  EXPECT_THAT(empty.objects, IsEmpty());  // nothing to override: the defaults apply

  ParsedFile parsed = ParseConfigFile("mesh.yaml", R"(# Istio's meshConfig
trustDomain: example.org
rootNamespace: mesh-root
accessLogFile: /dev/stdout
defaultConfig:
  proxyMetadata: {}
extensionProviders:
- name: ext-authz
  envoyExtAuthzGrpc:
    service: authz.prod.svc.cluster.local
    port: 9000
)");
  EXPECT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  ASSERT_THAT(All<state::MeshConfig>(parsed), SizeIs(1));
  EXPECT_EQ(parsed.objects[0].id, "MeshConfig");
  EXPECT_EQ(All<state::MeshConfig>(parsed)[0].trust_domain, "example.org");
  EXPECT_EQ(All<state::MeshConfig>(parsed)[0].root_namespace, "mesh-root");

  ParsedFile partial = ParseConfigFile("mesh.yml", "rootNamespace: other\n");
  ASSERT_THAT(All<state::MeshConfig>(partial), SizeIs(1));
  EXPECT_EQ(All<state::MeshConfig>(partial)[0].trust_domain, "cluster.local");
  EXPECT_EQ(All<state::MeshConfig>(partial)[0].root_namespace, "other");
}

TEST(KubeYamlTest, MeshFileWarnsOnUnknownFieldsAndRejectsBadValues) {
  ParsedFile parsed = ParseConfigFile("mesh.yaml", "trustDomain: example.org\ntrustDomian: x\n");
  EXPECT_THAT(Errors(parsed), IsEmpty());
  ASSERT_THAT(Warnings(parsed), SizeIs(1));
  EXPECT_EQ(parsed.errors[0].field, "trustDomian");
  EXPECT_EQ(parsed.errors[0].line, 2);
  ASSERT_THAT(All<state::MeshConfig>(parsed), SizeIs(1));
  EXPECT_EQ(All<state::MeshConfig>(parsed)[0].trust_domain, "example.org");

  ParsedFile bad = ParseConfigFile("mesh.yaml", "trustDomain: Example.org/x\n");
  ASSERT_THAT(Errors(bad), SizeIs(1));
  EXPECT_EQ(bad.errors[0].object, "MeshConfig");
  EXPECT_EQ(bad.errors[0].field, "trustDomain");
  EXPECT_THAT(bad.objects, IsEmpty());
  EXPECT_THAT(bad.rejected_ids, ElementsAre("MeshConfig"));

  ParsedFile list = ParseConfigFile("mesh.yaml", "- trustDomain: a\n");
  EXPECT_THAT(Errors(list), SizeIs(1));
  EXPECT_THAT(list.objects, IsEmpty());
}

TEST(KubeYamlTest, IstioConfigMapHoldsTheMeshConfig) {
  ParsedFile parsed = ParseKubeYaml("istio.yaml", R"(apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: istio-system
data:
  mesh: |-
    trustDomain: corp.example
    defaultProviders:
      metrics: [prometheus]
  meshNetworks: 'networks: {}'
---
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
data: {a: b}
)");
  EXPECT_THAT(Errors(parsed), IsEmpty()) << Describe(parsed);
  ASSERT_THAT(Warnings(parsed), SizeIs(1));
  EXPECT_EQ(parsed.errors[0].object, "ConfigMap default/unrelated");
  ASSERT_THAT(All<state::MeshConfig>(parsed), SizeIs(1));
  EXPECT_EQ(parsed.objects[0].id, "MeshConfig");
  EXPECT_EQ(All<state::MeshConfig>(parsed)[0].trust_domain, "corp.example");

  ParsedFile bad = ParseKubeYaml("istio.yaml", R"(apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: "rootNamespace: Not_Valid"
)");
  ASSERT_THAT(Errors(bad), SizeIs(1)) << Describe(bad);
  EXPECT_EQ(bad.errors[0].object, "ConfigMap istio-system/istio");
  EXPECT_EQ(bad.errors[0].field, "data.mesh.rootNamespace");
  EXPECT_EQ(bad.errors[0].line, 5);
  EXPECT_THAT(bad.rejected_ids, ElementsAre("MeshConfig"));

  ParsedFile unparseable = ParseKubeYaml("istio.yaml", R"(apiVersion: v1
kind: ConfigMap
metadata: {name: istio}
data:
  mesh: "a: [b"
)");
  ASSERT_THAT(Errors(unparseable), SizeIs(1)) << Describe(unparseable);
  EXPECT_EQ(unparseable.errors[0].field, "data.mesh");
  EXPECT_THAT(unparseable.errors[0].message, HasSubstr("not valid YAML"));
  EXPECT_FALSE(unparseable.unparseable);  // the file itself is fine
}

TEST(KubeYamlTest, MeshFileMayHoldTheIstioConfigMap) {
  ParsedFile parsed = ParseConfigFile("mesh.yaml", R"(apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: "trustDomain: td.example"
)");
  EXPECT_THAT(parsed.errors, IsEmpty()) << Describe(parsed);
  ASSERT_THAT(All<state::MeshConfig>(parsed), SizeIs(1));
  EXPECT_EQ(All<state::MeshConfig>(parsed)[0].trust_domain, "td.example");

  ParsedFile two = ParseConfigFile("mesh.yaml", "trustDomain: a.example\n---\ntrustDomain: b\n");
  ASSERT_THAT(Errors(two), SizeIs(1));
  EXPECT_THAT(two.errors[0].message, HasSubstr("one MeshConfig"));
  ASSERT_THAT(All<state::MeshConfig>(two), SizeIs(1));
  EXPECT_EQ(All<state::MeshConfig>(two)[0].trust_domain, "a.example");
}

TEST(KubeYamlTest, FileNameSelectsTheFormat) {
  EXPECT_TRUE(IsMeshFileName("mesh.yaml"));
  EXPECT_TRUE(IsMeshFileName("mesh.yml"));
  EXPECT_FALSE(IsMeshFileName("mesh.yaml.bak"));
  EXPECT_FALSE(IsMeshFileName("pods.yaml"));
  // In a pods file, a MeshConfig-looking document is not a Kubernetes object.
  ParsedFile parsed = ParseConfigFile("pods.yaml", "trustDomain: example.org\n");
  EXPECT_THAT(Errors(parsed), SizeIs(1));
  EXPECT_THAT(parsed.objects, IsEmpty());
}

// Thousands of nested maps or lists: yaml-cpp used to answer "bad file"; the answer must say what
// is wrong and where, and the parser must stop long before the stack runs out.
TEST(KubeYamlTest, DeepNestingIsNamedWithItsLine) {
  constexpr int kLevels = 100000;
  std::string block = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n";
  for (int i = 0; i < 2000; ++i) block += std::string(2 * i, ' ') + "k:\n";
  std::string flow =
      "apiVersion: v1\nkind: Pod\nmetadata:\n  labels: " + std::string(kLevels, '[') +
      std::string(kLevels, ']') + "\n";
  for (const auto& [name, text, line] :
       {std::tuple{"block.yaml", block, 0}, std::tuple{"flow.yaml", flow, 4}}) {
    ParsedFile parsed = ParseKubeYaml(name, text);
    EXPECT_TRUE(parsed.unparseable) << name;
    ASSERT_THAT(parsed.errors, SizeIs(1)) << name;
    const ConfigError& e = parsed.errors[0];
    EXPECT_THAT(e.message, HasSubstr("nesting too deep")) << name;
    EXPECT_THAT(e.message, Not(HasSubstr("bad file"))) << name;
    EXPECT_THAT(e.message, Not(HasSubstr("not valid YAML"))) << name;
    if (line > 0) {
      EXPECT_EQ(e.line, line) << name;
    } else {
      EXPECT_GT(e.line, 400) << name;  // where the limit was reached, not the top of the file
    }
    EXPECT_THAT(e.ToString(), HasSubstr(std::string(name) + ":" + std::to_string(e.line) + ":"));
  }
  // Nesting far deeper than any real object needs is still read.
  std::string fine = "apiVersion: example.com/v1\nkind: Thing\nmetadata:\n  name: a\nspec: " +
                     std::string(100, '[') + std::string(100, ']') + "\n";
  ParsedFile parsed = ParseKubeYaml("fine.yaml", fine);
  EXPECT_FALSE(parsed.unparseable) << Describe(parsed);
}

TEST(KubeYamlTest, DeepNestingInsideTheMeshConfigMapIsNamed) {
  std::string text =
      "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  namespace: istio-system\n"
      "data:\n  mesh: \"" +
      std::string(5000, '[') + std::string(5000, ']') + "\"\n";
  ParsedFile parsed = ParseKubeYaml("istio.yaml", text);
  std::string all = Describe(parsed);
  EXPECT_THAT(all, HasSubstr("data.mesh"));
  EXPECT_THAT(all, HasSubstr("nesting too deep"));
}
}  // namespace
}  // namespace ambit::config

namespace ambit::config {
namespace {

// Waypoints are declared with a Gateway of class istio-waypoint; Services keep their labels
// (istio.io/use-waypoint).
TEST(KubeYamlGatewayTest, ParsesGatewaysOfBothVersionsAndServiceLabels) {
  ParsedFile parsed = ParseKubeYaml("w.yaml", R"(apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: prod
  labels: {istio.io/waypoint-for: all}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: Gateway
metadata: {name: ingress}
spec: {gatewayClassName: istio}
---
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: prod
  labels: {istio.io/use-waypoint: waypoint}
spec: {selector: {app: api}, ports: [{port: 80}]}
)");
  EXPECT_THAT(Errors(parsed), IsEmpty()) << Describe(parsed);
  EXPECT_THAT(Warnings(parsed), IsEmpty()) << Describe(parsed);
  EXPECT_THAT(Ids(parsed),
              ElementsAre("Gateway prod/waypoint", "Gateway default/ingress", "Service prod/api"));
  std::vector<state::Gateway> gateways = All<state::Gateway>(parsed);
  ASSERT_THAT(gateways, SizeIs(2));
  EXPECT_EQ(gateways[0].gateway_class, "istio-waypoint");
  EXPECT_THAT(gateways[0].labels, ElementsAre(Pair("istio.io/waypoint-for", "all")));
  EXPECT_EQ(gateways[0].source_file, "w.yaml");
  EXPECT_EQ(gateways[1].Key(), "default/ingress");
  EXPECT_EQ(gateways[1].gateway_class, "istio");
  EXPECT_THAT(All<state::Service>(parsed)[0].labels,
              ElementsAre(Pair("istio.io/use-waypoint", "waypoint")));
}

TEST(KubeYamlGatewayTest, BadGatewaysAreRejectedWithTheirField) {
  struct Row {
    const char* yaml;
    const char* field;
    const char* message;
  };
  for (const Row& row : {
           Row{"metadata: {name: w}\nspec: {}\n", "spec.gatewayClassName", "is required"},
           Row{"metadata: {name: w}\n", "spec.gatewayClassName", "is required"},
           Row{"metadata: {name: w}\nspec: {gatewayClassName: [a]}\n", "spec.gatewayClassName",
               "must be a string"},
           Row{"metadata: {name: w, labels: {istio.io/waypoint-for: everything}}\n"
               "spec: {gatewayClassName: istio-waypoint}\n",
               "metadata.labels[istio.io/waypoint-for]", "'everything' is not a waypoint traffic"},
           Row{"metadata: {name: Bad_Name}\nspec: {gatewayClassName: istio-waypoint}\n",
               "metadata.name", ""},
       }) {
    ParsedFile parsed = ParseKubeYaml(
        "g.yaml",
        std::string("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n") + row.yaml);
    SCOPED_TRACE(row.yaml);
    EXPECT_THAT(parsed.objects, IsEmpty());
    std::vector<ConfigError> errors = Errors(parsed);
    ASSERT_THAT(errors, SizeIs(1)) << Describe(parsed);
    EXPECT_EQ(errors[0].field, row.field);
    EXPECT_THAT(errors[0].message, HasSubstr(row.message));
  }
  // Another class may use any label: only a waypoint reads istio.io/waypoint-for.
  ParsedFile other = ParseKubeYaml("g.yaml", R"(apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: w, labels: {istio.io/waypoint-for: everything}}
spec: {gatewayClassName: istio}
)");
  EXPECT_THAT(Errors(other), IsEmpty()) << Describe(other);
}

}  // namespace
}  // namespace ambit::config
