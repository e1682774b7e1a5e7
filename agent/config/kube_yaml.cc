#include "agent/config/kube_yaml.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "agent/config/validation.h"

namespace ambit::config {
namespace {

using internal::ToAbsl;
using internal::ValidateDns1123Label;
using internal::ValidateDns1123Subdomain;
using internal::ValidateLabelValue;
using internal::ValidateNetnsPath;
using internal::ValidatePortName;
using internal::ValidateQualifiedName;
using internal::ValidateTrustDomain;

constexpr char kMeshConfigId[] = "MeshConfig";

// MeshConfig fields (Istio's mesh.proto, JSON names) that ambit accepts and does not use.
const std::set<std::string_view>& KnownMeshFields() {
  static const auto* const kFields = new std::set<std::string_view>{
      "accessLogEncoding",
      "accessLogFile",
      "accessLogFormat",
      "ca",
      "caCertificates",
      "certificates",
      "configSources",
      "connectTimeout",
      "defaultConfig",
      "defaultDestinationRuleExportTo",
      "defaultHttpRetryPolicy",
      "defaultProviders",
      "defaultServiceExportTo",
      "defaultVirtualServiceExportTo",
      "disableEnvoyListenerLog",
      "discoverySelectors",
      "dnsRefreshRate",
      "enableAutoMtls",
      "enableEnvoyAccessLogService",
      "enablePrometheusMerge",
      "enableTracing",
      "extensionProviders",
      "h2UpgradePolicy",
      "inboundClusterStatName",
      "inboundTrafficPolicy",
      "ingressClass",
      "ingressControllerMode",
      "ingressSelector",
      "ingressService",
      "localityLbSetting",
      "meshMTLS",
      "outboundClusterStatName",
      "outboundTrafficPolicy",
      "pathNormalization",
      "protocolDetectionTimeout",
      "proxyHttpPort",
      "proxyInboundListenPort",
      "proxyListenPort",
      "serviceScopeConfigs",
      "serviceSettings",
      "tcpKeepalive",
      "thriftConfig",
      "tlsDefaults",
      "trustDomainAliases",
      "verifyCertificateAtClient",
  };
  return *kFields;
}

std::string Join(std::string_view path, std::string_view key) {
  return path.empty() ? std::string(key) : absl::StrCat(ToAbsl(path), ".", ToAbsl(key));
}

std::string TypeName(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Scalar:
      return absl::StrCat("'", n.Scalar(), "'");
    default:
      return "nothing";
  }
}

// The value under key, or nullopt when map is not a map, the key is absent or the value is null
// (Kubernetes treats an explicit null as unset). Never throws, unlike yaml-cpp's operator[].
std::optional<YAML::Node> Get(const YAML::Node& map, std::string_view key) {
  if (!map.IsMap()) return std::nullopt;
  for (auto it = map.begin(); it != map.end(); ++it) {
    if (it->first.IsScalar() && it->first.Scalar() == key) {
      if (it->second.IsNull()) return std::nullopt;
      return it->second;
    }
  }
  return std::nullopt;
}

// A scalar under key as text, or "" when absent or not a scalar. For names before validation.
std::string PeekString(const YAML::Node& map, std::string_view key) {
  auto v = Get(map, key);
  return v && v->IsScalar() ? v->Scalar() : std::string();
}

// Collects the problems of one object into the file's error list.
class Reporter {
 public:
  Reporter(std::string_view file, std::string object, std::vector<ConfigError>* out)
      : file_(file), object_(std::move(object)), out_(out) {}

  void Error(const YAML::Node& at, std::string_view field, std::string message) {
    Add(at, field, std::move(message), /*warning=*/false);
    ++errors_;
  }
  void Warning(const YAML::Node& at, std::string_view field, std::string message) {
    Add(at, field, std::move(message), /*warning=*/true);
  }
  void ErrorIf(const absl::Status& status, const YAML::Node& at, std::string_view field) {
    if (!status.ok()) Error(at, field, std::string(status.message()));
  }
  int errors() const { return errors_; }
  // Positions inside YAML embedded in a string are relative to that string: report them all at
  // the line of the string instead.
  void set_fixed_line(int line) { fixed_line_ = line; }

 private:
  void Add(const YAML::Node& at, std::string_view field, std::string message, bool warning) {
    ConfigError e{std::string(file_), object_, std::string(field), std::move(message), warning};
    if (fixed_line_ > 0) {
      e.line = fixed_line_;
    } else if (at.IsDefined()) {
      const YAML::Mark mark = at.Mark();
      if (!mark.is_null()) {
        e.line = mark.line + 1;
        e.column = mark.column + 1;
      }
    }
    out_->push_back(std::move(e));
  }

  std::string_view file_;
  std::string object_;
  std::vector<ConfigError>* out_;
  int errors_ = 0;
  int fixed_line_ = 0;
};

// A string field. Absent: nullopt. Not a scalar: an error, and nullopt.
std::optional<std::string> GetString(Reporter& r, const YAML::Node& map, std::string_view key,
                                     std::string_view path) {
  auto v = Get(map, key);
  if (!v) return std::nullopt;
  if (!v->IsScalar()) {
    r.Error(*v, Join(path, key), absl::StrCat("must be a string, not ", TypeName(*v)));
    return std::nullopt;
  }
  return v->Scalar();
}

// A map of strings (labels, annotations, selector). Absent: empty.
std::map<std::string, std::string> GetStringMap(Reporter& r, const YAML::Node& map,
                                                std::string_view key, std::string_view path) {
  std::map<std::string, std::string> out;
  auto v = Get(map, key);
  if (!v) return out;
  const std::string field = Join(path, key);
  if (!v->IsMap()) {
    r.Error(*v, field, absl::StrCat("must be a map of strings, not ", TypeName(*v)));
    return out;
  }
  for (auto it = v->begin(); it != v->end(); ++it) {
    if (!it->first.IsScalar()) {
      r.Error(it->first, field, "keys must be strings");
      continue;
    }
    const std::string& k = it->first.Scalar();
    if (it->second.IsNull()) {
      out[k] = "";
    } else if (it->second.IsScalar()) {
      out[k] = it->second.Scalar();
    } else {
      r.Error(it->second, absl::StrCat(field, "[", k, "]"),
              absl::StrCat("must be a string, not ", TypeName(it->second)));
    }
  }
  return out;
}

// Checks label-style keys and, when check_values, label-style values.
void ValidateLabels(Reporter& r, const YAML::Node& parent, const std::string& field,
                    const std::map<std::string, std::string>& labels, bool check_values) {
  auto node = Get(parent, field.substr(field.rfind('.') + 1));
  const YAML::Node& at = node ? *node : parent;
  for (const auto& [k, v] : labels) {
    const std::string entry = absl::StrCat(field, "[", k, "]");
    r.ErrorIf(ValidateQualifiedName(k), at, entry);
    if (check_values) r.ErrorIf(ValidateLabelValue(v), at, entry);
  }
}

// A port number field, 1..65535.
std::optional<uint16_t> ParsePortNumber(Reporter& r, const YAML::Node& n, std::string_view field) {
  int64_t value = 0;
  if (!n.IsScalar() || !absl::SimpleAtoi(n.Scalar(), &value) || value < 1 || value > 65535) {
    r.Error(n, field, absl::StrCat(TypeName(n), " is not a port number (1 to 65535)"));
    return std::nullopt;
  }
  return static_cast<uint16_t>(value);
}

std::optional<IpAddress> ParseIp(Reporter& r, const YAML::Node& n, std::string_view field) {
  if (!n.IsScalar()) {
    r.Error(n, field, absl::StrCat("must be an IP address, not ", TypeName(n)));
    return std::nullopt;
  }
  absl::StatusOr<IpAddress> ip = IpAddress::Parse(n.Scalar());
  if (!ip.ok()) {
    r.Error(n, field, std::string(ip.status().message()));
    return std::nullopt;
  }
  return *ip;
}

struct Metadata {
  std::string name;
  std::string namespace_name = "default";
  std::string uid;
  std::map<std::string, std::string> labels;
  std::map<std::string, std::string> annotations;
};

enum class NameRule { kDns1123Label, kDns1123Subdomain };

Metadata ParseMetadata(Reporter& r, const YAML::Node& doc, NameRule rule, bool namespaced) {
  Metadata m;
  auto meta = Get(doc, "metadata");
  if (!meta) {
    r.Error(doc, "metadata.name", "is required");
    return m;
  }
  if (!meta->IsMap()) {
    r.Error(*meta, "metadata", absl::StrCat("must be a map, not ", TypeName(*meta)));
    return m;
  }
  std::optional<std::string> name = GetString(r, *meta, "name", "metadata");
  if (name) {
    m.name = *name;
    const YAML::Node at = *Get(*meta, "name");
    r.ErrorIf(rule == NameRule::kDns1123Label ? ValidateDns1123Label(m.name)
                                              : ValidateDns1123Subdomain(m.name),
              at, "metadata.name");
  } else if (!Get(*meta, "name")) {
    r.Error(*meta, "metadata.name", "is required");
  }
  if (namespaced) {
    if (auto ns = GetString(r, *meta, "namespace", "metadata")) {
      m.namespace_name = *ns;
      r.ErrorIf(ValidateDns1123Label(m.namespace_name), *Get(*meta, "namespace"),
                "metadata.namespace");
    }
  }
  if (auto uid = GetString(r, *meta, "uid", "metadata")) m.uid = *uid;
  m.labels = GetStringMap(r, *meta, "labels", "metadata");
  ValidateLabels(r, *meta, "metadata.labels", m.labels, /*check_values=*/true);
  m.annotations = GetStringMap(r, *meta, "annotations", "metadata");
  ValidateLabels(r, *meta, "metadata.annotations", m.annotations, /*check_values=*/false);
  return m;
}

// A sub-map such as spec or status. Absent: nullopt. Not a map: an error, and nullopt.
std::optional<YAML::Node> GetMap(Reporter& r, const YAML::Node& parent, std::string_view key,
                                 std::string_view path) {
  auto v = Get(parent, key);
  if (!v) return std::nullopt;
  if (!v->IsMap()) {
    r.Error(*v, Join(path, key), absl::StrCat("must be a map, not ", TypeName(*v)));
    return std::nullopt;
  }
  return v;
}

std::optional<YAML::Node> GetList(Reporter& r, const YAML::Node& parent, std::string_view key,
                                  std::string_view path) {
  auto v = Get(parent, key);
  if (!v) return std::nullopt;
  if (!v->IsSequence()) {
    r.Error(*v, Join(path, key), absl::StrCat("must be a list, not ", TypeName(*v)));
    return std::nullopt;
  }
  return v;
}

// Reads the MeshConfig fields of node (a map) into mesh. path prefixes field names in errors.
void ParseMeshFields(Reporter& r, const YAML::Node& node, std::string_view path,
                     state::MeshConfig* mesh) {
  if (!node.IsDefined() || node.IsNull()) return;
  if (!node.IsMap()) {
    r.Error(node, path,
            absl::StrCat("a MeshConfig must be a map of fields (e.g. trustDomain: cluster.local), "
                         "not ",
                         TypeName(node)));
    return;
  }
  for (auto it = node.begin(); it != node.end(); ++it) {
    if (!it->first.IsScalar()) {
      r.Error(it->first, path, "keys must be strings");
      continue;
    }
    const std::string& key = it->first.Scalar();
    const std::string field = Join(path, key);
    if (key == "trustDomain" || key == "rootNamespace") {
      if (it->second.IsNull()) continue;
      if (!it->second.IsScalar()) {
        r.Error(it->second, field, absl::StrCat("must be a string, not ", TypeName(it->second)));
        continue;
      }
      const std::string& value = it->second.Scalar();
      if (key == "trustDomain") {
        absl::Status s = ValidateTrustDomain(value);
        r.ErrorIf(s, it->second, field);
        if (s.ok()) mesh->trust_domain = value;
      } else {
        absl::Status s = ValidateDns1123Label(value);
        r.ErrorIf(s, it->second, field);
        if (s.ok()) mesh->root_namespace = value;
      }
    } else if (!KnownMeshFields().contains(key)) {
      r.Warning(it->first, field, "unknown MeshConfig field; ignored (check its spelling)");
    }
  }
}

// Parses the documents of one file into out.
class FileParser {
 public:
  FileParser(std::string_view file, ParsedFile* out) : file_(file), out_(out) {}

  // Loads all documents; false (and one error) when the text is not YAML.
  bool Load(std::string_view content, std::vector<YAML::Node>* docs) {
    try {
      *docs = YAML::LoadAll(std::string(content));
      return true;
    } catch (const YAML::Exception& e) {
      ConfigError err{std::string(file_), "", "", absl::StrCat("not valid YAML: ", e.msg)};
      if (!e.mark.is_null()) {
        err.line = e.mark.line + 1;
        err.column = e.mark.column + 1;
      }
      out_->errors.push_back(std::move(err));
      out_->unparseable = true;
      return false;
    }
  }

  // A Kubernetes object or list. where ("document 2", "document 1, items[3]") names it when it
  // has no name. Typed lists (PodList) give their items a default apiVersion and kind.
  void ParseObject(const YAML::Node& doc, const std::string& where,
                   std::string_view default_api_version = "", std::string_view default_kind = "") {
    try {
      ParseObjectOrThrow(doc, where, default_api_version, default_kind);
    } catch (const YAML::Exception& e) {
      // Should not happen (all access is checked), but yaml-cpp must never take the agent down.
      Reporter r(file_, where, &out_->errors);
      r.Error(doc, "", absl::StrCat("cannot read this object: ", e.what()));
    }
  }

  // The MeshConfig document of a mesh file.
  void ParseMeshDocument(const YAML::Node& doc) {
    try {
      Reporter r(file_, kMeshConfigId, &out_->errors);
      state::MeshConfig mesh;
      ParseMeshFields(r, doc, "", &mesh);
      Finish(r, kMeshConfigId, mesh);
    } catch (const YAML::Exception& e) {
      Reporter r(file_, kMeshConfigId, &out_->errors);
      r.Error(doc, "", absl::StrCat("cannot read the MeshConfig: ", e.what()));
      out_->rejected_ids.push_back(kMeshConfigId);
    }
  }

  void Error(const YAML::Node& at, std::string object, std::string message) {
    Reporter r(file_, std::move(object), &out_->errors);
    r.Error(at, "", std::move(message));
  }

 private:
  // "Pod default/web" (namespaced) or "Namespace prod"; "Pod (document 2)" when unnamed.
  struct Identity {
    std::string display;
    std::string id;  // empty when the object cannot be identified
  };
  static Identity Identify(std::string_view kind, const YAML::Node& doc, const std::string& where,
                           bool namespaced) {
    const YAML::Node meta = Get(doc, "metadata").value_or(YAML::Node());
    const std::string name = PeekString(meta, "name");
    if (name.empty()) return {absl::StrCat(ToAbsl(kind), " (", where, ")"), ""};
    std::string ns = PeekString(meta, "namespace");
    if (namespaced && ns.empty()) ns = "default";
    std::string display = ns.empty() ? absl::StrCat(ToAbsl(kind), " ", name)
                                     : absl::StrCat(ToAbsl(kind), " ", ns, "/", name);
    return {display, display};
  }

  void Finish(const Reporter& r, const std::string& id, ConfigObject object) {
    if (r.errors() > 0) {
      if (!id.empty()) out_->rejected_ids.push_back(id);
      return;
    }
    out_->objects.push_back({id, std::move(object)});
  }

  void ParseObjectOrThrow(const YAML::Node& doc, const std::string& where,
                          std::string_view default_api_version, std::string_view default_kind) {
    if (!doc.IsDefined() || doc.IsNull()) return;  // an empty document, e.g. a trailing ---
    if (!doc.IsMap()) {
      Error(doc, where,
            absl::StrCat("expected a Kubernetes object (a map with apiVersion, kind and "
                         "metadata), found ",
                         TypeName(doc)));
      return;
    }
    std::string api_version = PeekString(doc, "apiVersion");
    std::string kind = PeekString(doc, "kind");
    if (api_version.empty()) api_version = default_api_version;
    if (kind.empty()) kind = default_kind;
    if (api_version.empty() || kind.empty()) {
      Reporter r(file_, kind.empty() ? where : Identify(kind, doc, where, false).display,
                 &out_->errors);
      r.Error(doc, api_version.empty() ? "apiVersion" : "kind",
              "is required (every document needs apiVersion and kind, e.g. apiVersion: v1, "
              "kind: Pod)");
      return;
    }
    if (api_version == "v1") {
      if (kind == "List" || kind == "PodList" || kind == "NamespaceList" || kind == "ServiceList" ||
          kind == "ConfigMapList") {
        ParseList(doc, where, kind);
        return;
      }
      if (kind == "Pod") return ParsePod(doc, where);
      if (kind == "Namespace") return ParseNamespace(doc, where);
      if (kind == "Service") return ParseService(doc, where);
      if (kind == "ConfigMap") return ParseConfigMap(doc, where);
    }
    const bool security =
        api_version == "security.istio.io/v1" || api_version == "security.istio.io/v1beta1";
    if (security && kind == "PeerAuthentication") return ParsePeerAuthentication(doc, where);
    const bool namespaced =
        !PeekString(Get(doc, "metadata").value_or(YAML::Node()), "namespace").empty();
    Reporter r(file_, Identify(kind, doc, where, namespaced).display, &out_->errors);
    if (security && (kind == "AuthorizationPolicy" || kind == "RequestAuthentication")) {
      r.Warning(doc, "",
                absl::StrCat("kind ", kind, " (apiVersion ", api_version,
                             ") is not supported yet; ignored"));
      return;
    }
    r.Warning(doc, "",
              absl::StrCat("kind ", kind, " (apiVersion ", api_version,
                           ") is not supported by this source; ignored"));
  }

  void ParseList(const YAML::Node& doc, const std::string& where, const std::string& kind) {
    Reporter r(file_, absl::StrCat(kind, " (", where, ")"), &out_->errors);
    const std::optional<YAML::Node> found = GetList(r, doc, "items", "");
    if (!found) return;
    const YAML::Node items = *found;
    const std::string item_kind = kind == "List" ? "" : kind.substr(0, kind.size() - 4);
    for (size_t i = 0; i < items.size(); ++i) {
      ParseObject(items[i], absl::StrCat(where, ", items[", i, "]"), item_kind.empty() ? "" : "v1",
                  item_kind);
    }
  }

  void ParsePod(const YAML::Node& doc, const std::string& where) {
    const Identity who = Identify("Pod", doc, where, true);
    Reporter r(file_, who.display, &out_->errors);
    Metadata m = ParseMetadata(r, doc, NameRule::kDns1123Subdomain, /*namespaced=*/true);
    state::Pod pod;
    pod.name = std::move(m.name);
    pod.namespace_name = std::move(m.namespace_name);
    pod.uid = std::move(m.uid);
    pod.labels = std::move(m.labels);
    pod.annotations = std::move(m.annotations);
    pod.source_file = std::string(file_);
    if (auto it = pod.annotations.find(std::string(state::kNetnsAnnotation));
        it != pod.annotations.end()) {
      pod.netns_path = it->second;
      const YAML::Node meta = Get(doc, "metadata").value_or(doc);
      const YAML::Node annotations = Get(meta, "annotations").value_or(meta);
      r.ErrorIf(ValidateNetnsPath(pod.netns_path),
                Get(annotations, state::kNetnsAnnotation).value_or(annotations),
                absl::StrCat("metadata.annotations[", ToAbsl(state::kNetnsAnnotation), "]"));
    }

    if (auto spec = GetMap(r, doc, "spec", "")) {
      std::string_view sa_key = "serviceAccountName";
      std::optional<std::string> sa = GetString(r, *spec, sa_key, "spec");
      if (!sa && !Get(*spec, sa_key)) {
        sa_key = "serviceAccount";  // deprecated spelling, still written by older tools
        sa = GetString(r, *spec, sa_key, "spec");
      }
      if (sa && !sa->empty()) {
        pod.service_account = *sa;
        r.ErrorIf(ValidateDns1123Subdomain(*sa), *Get(*spec, sa_key), Join("spec", sa_key));
      }
      if (auto node = GetString(r, *spec, "nodeName", "spec"); node && !node->empty()) {
        pod.node_name = *node;
        r.ErrorIf(ValidateDns1123Subdomain(*node), *Get(*spec, "nodeName"), "spec.nodeName");
      }
    }

    if (auto status = GetMap(r, doc, "status", "")) {
      if (auto found = GetList(r, *status, "podIPs", "status")) {
        const YAML::Node ips = *found;
        for (size_t i = 0; i < ips.size(); ++i) {
          const YAML::Node entry = ips[i];
          const std::string field = absl::StrCat("status.podIPs[", i, "]");
          if (!entry.IsMap()) {
            r.Error(entry, field,
                    absl::StrCat("must be a map with an ip field, not ", TypeName(entry)));
            continue;
          }
          auto ip_node = Get(entry, "ip");
          if (!ip_node) {
            r.Error(entry, field + ".ip", "is required");
            continue;
          }
          if (auto ip = ParseIp(r, *ip_node, field + ".ip")) pod.ips.push_back(*ip);
        }
      }
      if (pod.ips.empty()) {
        if (auto ip_node = Get(*status, "podIP")) {
          if (auto ip = ParseIp(r, *ip_node, "status.podIP")) pod.ips.push_back(*ip);
        }
      }
    }
    Finish(r, who.id, std::move(pod));
  }

  void ParseNamespace(const YAML::Node& doc, const std::string& where) {
    const Identity who = Identify("Namespace", doc, where, false);
    Reporter r(file_, who.display, &out_->errors);
    Metadata m = ParseMetadata(r, doc, NameRule::kDns1123Label, /*namespaced=*/false);
    state::Namespace ns;
    ns.name = std::move(m.name);
    ns.labels = std::move(m.labels);
    ns.annotations = std::move(m.annotations);
    ns.source_file = std::string(file_);
    Finish(r, who.id, std::move(ns));
  }

  void ParseService(const YAML::Node& doc, const std::string& where) {
    const Identity who = Identify("Service", doc, where, true);
    Reporter r(file_, who.display, &out_->errors);
    Metadata m = ParseMetadata(r, doc, NameRule::kDns1123Label, /*namespaced=*/true);
    state::Service svc;
    svc.name = std::move(m.name);
    svc.namespace_name = std::move(m.namespace_name);
    svc.source_file = std::string(file_);
    if (auto spec = GetMap(r, doc, "spec", "")) {
      ParseClusterIps(r, *spec, &svc);
      svc.selector = GetStringMap(r, *spec, "selector", "spec");
      ValidateLabels(r, *spec, "spec.selector", svc.selector, /*check_values=*/true);
      if (auto found = GetList(r, *spec, "ports", "spec")) {
        const YAML::Node ports = *found;
        for (size_t i = 0; i < ports.size(); ++i) {
          if (auto port = ParseServicePort(r, ports[i], absl::StrCat("spec.ports[", i, "]"))) {
            svc.ports.push_back(std::move(*port));
          }
        }
      }
    }
    Finish(r, who.id, std::move(svc));
  }

  // spec.clusterIPs, else spec.clusterIP. "None" (headless) and "" give no address.
  static void ParseClusterIps(Reporter& r, const YAML::Node& spec, state::Service* svc) {
    if (auto found = GetList(r, spec, "clusterIPs", "spec"); found && found->size() > 0) {
      const YAML::Node list = *found;
      for (size_t i = 0; i < list.size(); ++i) {
        const YAML::Node n = list[i];
        const std::string field = absl::StrCat("spec.clusterIPs[", i, "]");
        if (n.IsScalar() && n.Scalar() == "None") {
          if (list.size() > 1) r.Error(n, field, "'None' (headless) must be the only entry");
          continue;
        }
        if (auto ip = ParseIp(r, n, field)) svc->cluster_ips.push_back(*ip);
      }
      return;
    }
    if (auto n = Get(spec, "clusterIP")) {
      if (n->IsScalar() && (n->Scalar() == "None" || n->Scalar().empty())) return;
      if (auto ip = ParseIp(r, *n, "spec.clusterIP")) svc->cluster_ips.push_back(*ip);
    }
  }

  static std::optional<state::ServicePort> ParseServicePort(Reporter& r, const YAML::Node& n,
                                                            const std::string& field) {
    if (!n.IsMap()) {
      r.Error(n, field, absl::StrCat("must be a map with a port field, not ", TypeName(n)));
      return std::nullopt;
    }
    const int errors_before = r.errors();
    state::ServicePort port;
    if (auto name = GetString(r, n, "name", field); name && !name->empty()) {
      port.name = *name;
      r.ErrorIf(ValidateDns1123Label(*name), *Get(n, "name"), field + ".name");
    }
    if (auto number = Get(n, "port")) {
      if (auto p = ParsePortNumber(r, *number, field + ".port")) port.port = *p;
    } else {
      r.Error(n, field + ".port", "is required");
    }
    if (auto protocol = GetString(r, n, "protocol", field)) {
      if (*protocol == "TCP" || *protocol == "UDP" || *protocol == "SCTP") {
        port.protocol = *protocol;
      } else {
        r.Error(*Get(n, "protocol"), field + ".protocol",
                absl::StrCat("'", *protocol, "' is not a protocol: use TCP, UDP or SCTP"));
      }
    }
    if (auto target = Get(n, "targetPort")) {
      const std::string target_field = field + ".targetPort";
      int64_t number = 0;
      if (!target->IsScalar()) {
        r.Error(*target, target_field,
                absl::StrCat("must be a port number or name, not ", TypeName(*target)));
      } else if (absl::SimpleAtoi(target->Scalar(), &number)) {
        if (auto p = ParsePortNumber(r, *target, target_field)) port.target_port = absl::StrCat(*p);
      } else {
        port.target_port = target->Scalar();
        r.ErrorIf(ValidatePortName(port.target_port), *target, target_field);
      }
    } else if (port.port != 0) {
      port.target_port = absl::StrCat(port.port);  // Kubernetes' default: the service port
    }
    if (r.errors() > errors_before) return std::nullopt;
    return port;
  }

  // The ConfigMap `istio`, where Istio keeps the MeshConfig YAML in data.mesh.
  void ParseConfigMap(const YAML::Node& doc, const std::string& where) {
    const Identity who = Identify("ConfigMap", doc, where, true);
    Reporter r(file_, who.display, &out_->errors);
    const YAML::Node meta = Get(doc, "metadata").value_or(YAML::Node());
    if (PeekString(meta, "name") != "istio") {
      r.Warning(doc, "",
                "only the ConfigMap named 'istio' (Istio's mesh configuration) is read; this one "
                "is ignored");
      return;
    }
    ParseMetadata(r, doc, NameRule::kDns1123Subdomain, /*namespaced=*/true);
    state::MeshConfig mesh;
    if (auto data = GetMap(r, doc, "data", "")) {
      if (auto text = Get(*data, "mesh")) {
        if (!text->IsScalar()) {
          r.Error(*text, "data.mesh",
                  absl::StrCat("must be a string holding MeshConfig YAML, not ", TypeName(*text)));
        } else {
          ParseEmbeddedMesh(r, *text, &mesh);
        }
      }
    }
    Finish(r, kMeshConfigId, mesh);
  }

  static void ParseEmbeddedMesh(Reporter& r, const YAML::Node& text, state::MeshConfig* mesh) {
    YAML::Node node;
    try {
      node = YAML::Load(text.Scalar());
    } catch (const YAML::Exception& e) {
      r.Error(text, "data.mesh",
              absl::StrCat("not valid YAML: ", e.msg, " (line ", e.mark.line + 1, ", column ",
                           e.mark.column + 1, " of the embedded text)"));
      return;
    }
    const YAML::Mark mark = text.Mark();
    r.set_fixed_line(mark.is_null() ? 0 : mark.line + 1);
    ParseMeshFields(r, node, "data.mesh", mesh);
    r.set_fixed_line(0);
  }

  // PeerAuthentication, validated as istiod's ValidatePeerAuthentication and the CRD schema do.
  void ParsePeerAuthentication(const YAML::Node& doc, const std::string& where) {
    const Identity who = Identify("PeerAuthentication", doc, where, true);
    Reporter r(file_, who.display, &out_->errors);
    Metadata m = ParseMetadata(r, doc, NameRule::kDns1123Subdomain, /*namespaced=*/true);
    authz::PeerAuthentication pa;
    pa.name = std::move(m.name);
    pa.namespace_name = std::move(m.namespace_name);
    pa.source_file = std::string(file_);
    pa.creation_time = ParseCreationTimestamp(r, doc);
    if (auto spec = GetMap(r, doc, "spec", "")) ParsePeerAuthenticationSpec(r, *spec, &pa);
    Finish(r, who.id, std::move(pa));
  }

  // Reports every key of map not in known as an unknown field: the CRD's schema has no other
  // fields, and a misspelt one (`mtl:`, `portLevelMTLS:`) silently weakens a security policy.
  static void RejectUnknownFields(Reporter& r, const YAML::Node& map, std::string_view path,
                                  std::initializer_list<std::string_view> known,
                                  std::string_view hint) {
    for (auto it = map.begin(); it != map.end(); ++it) {
      if (!it->first.IsScalar()) {
        r.Error(it->first, path, "keys must be strings");
        continue;
      }
      const std::string& key = it->first.Scalar();
      if (std::find(known.begin(), known.end(), key) == known.end()) {
        r.Error(it->first, Join(path, key), absl::StrCat("unknown field; ", ToAbsl(hint)));
      }
    }
  }

  // metadata.creationTimestamp (RFC 3339). Absent: InfinitePast, as Go's zero time in istiod.
  static absl::Time ParseCreationTimestamp(Reporter& r, const YAML::Node& doc) {
    const YAML::Node meta = Get(doc, "metadata").value_or(YAML::Node());
    std::optional<std::string> text = GetString(r, meta, "creationTimestamp", "metadata");
    if (!text) return absl::InfinitePast();
    absl::Time t;
    std::string err;
    if (!absl::ParseTime(absl::RFC3339_full, *text, &t, &err)) {
      r.Error(*Get(meta, "creationTimestamp"), "metadata.creationTimestamp",
              absl::StrCat("'", *text, "' is not an RFC 3339 time such as 2024-05-01T12:00:00Z"));
      return absl::InfinitePast();
    }
    return t;
  }

  // A PeerAuthentication.MutualTLS map ({mode: STRICT}) at path; UNSET when mode is absent.
  static authz::MtlsMode ParseMutualTls(Reporter& r, const YAML::Node& map,
                                        const std::string& path) {
    RejectUnknownFields(r, map, path, {"mode"}, "the only field here is mode");
    std::optional<std::string> name = GetString(r, map, "mode", path);
    if (!name) return authz::MtlsMode::kUnset;
    std::optional<authz::MtlsMode> mode = authz::ParseMtlsMode(*name);
    if (!mode) {
      r.Error(
          *Get(map, "mode"), path + ".mode",
          absl::StrCat("'", *name, "' is not a mode: use UNSET, STRICT, PERMISSIVE or DISABLE"));
      return authz::MtlsMode::kUnset;
    }
    return *mode;
  }

  static void ParsePeerAuthenticationSpec(Reporter& r, const YAML::Node& spec,
                                          authz::PeerAuthentication* pa) {
    RejectUnknownFields(r, spec, "spec", {"selector", "mtls", "portLevelMtls"},
                        "PeerAuthentication's spec has selector, mtls and portLevelMtls");
    if (auto selector = GetMap(r, spec, "selector", "spec")) {
      pa->has_selector = true;
      RejectUnknownFields(r, *selector, "spec.selector", {"matchLabels"},
                          "a workload selector has only matchLabels");
      pa->selector = GetStringMap(r, *selector, "matchLabels", "spec.selector");
      const YAML::Node at = Get(*selector, "matchLabels").value_or(*selector);
      for (const auto& [key, value] : pa->selector) {
        const std::string field = absl::StrCat("spec.selector.matchLabels[", key, "]");
        // istiod's validateWorkloadSelector: no empty keys, no wildcards.
        if (key.empty()) r.Error(at, field, "label keys must not be empty");
        if (absl::StrContains(key, "*") || absl::StrContains(value, "*")) {
          r.Error(at, field,
                  absl::StrCat("wildcards are not supported in selectors ('", key, "=", value,
                               "'): labels match exactly"));
        }
      }
      if (pa->selector.empty()) {
        r.Warning(*selector, "spec.selector",
                  "has no matchLabels, so the policy applies to the whole namespace as if it had "
                  "no selector (as in Istio)");
      }
    }
    if (auto mtls = GetMap(r, spec, "mtls", "spec"))
      pa->mode = ParseMutualTls(r, *mtls, "spec.mtls");
    if (auto ports = GetMap(r, spec, "portLevelMtls", "spec")) {
      if (ports->size() == 0) {
        r.Error(*ports, "spec.portLevelMtls",
                "is empty: list at least one port (e.g. 8080: {mode: DISABLE}) or remove it");
      }
      for (auto it = ports->begin(); it != ports->end(); ++it) {
        const std::string field = absl::StrCat(
            "spec.portLevelMtls[", it->first.IsScalar() ? it->first.Scalar() : "?", "]");
        std::optional<uint16_t> port = ParsePortNumber(r, it->first, field);
        if (!it->second.IsMap()) {
          // A null value has no useful position of its own: point at its key.
          r.Error(it->second.IsNull() ? it->first : it->second, field,
                  it->second.IsNull()
                      ? std::string("must not be empty: give a mode, e.g. {mode: DISABLE}")
                      : absl::StrCat("must be a map with a mode (e.g. {mode: DISABLE}), not ",
                                     TypeName(it->second)));
          continue;
        }
        authz::MtlsMode mode = ParseMutualTls(r, it->second, field);
        if (port && !pa->port_level.emplace(*port, mode).second) {
          r.Error(it->first, field, absl::StrCat("port ", *port, " is listed twice"));
        }
      }
      // istiod: "mesh/namespace peer authentication cannot have port level mTLS"; the reference:
      // port-level settings "only apply when a workload selector is specified".
      if (!pa->IsWorkloadLevel()) {
        r.Error(*ports, "spec.portLevelMtls",
                "requires a workload selector with matchLabels (spec.selector.matchLabels): "
                "istiod rejects portLevelMtls in mesh-wide and namespace-wide policies");
      }
    }
  }

  std::string_view file_;
  ParsedFile* out_;
};

}  // namespace

bool IsMeshFileName(std::string_view file_name) {
  return file_name == "mesh.yaml" || file_name == "mesh.yml";
}

ParsedFile ParseKubeYaml(std::string_view file_name, std::string_view content) {
  ParsedFile out;
  FileParser parser(file_name, &out);
  std::vector<YAML::Node> docs;
  if (!parser.Load(content, &docs)) return out;
  for (size_t i = 0; i < docs.size(); ++i) {
    parser.ParseObject(docs[i], absl::StrCat("document ", i + 1));
  }
  return out;
}

ParsedFile ParseMeshYaml(std::string_view file_name, std::string_view content) {
  ParsedFile out;
  FileParser parser(file_name, &out);
  std::vector<YAML::Node> docs;
  if (!parser.Load(content, &docs)) return out;
  bool have_mesh = false;
  for (size_t i = 0; i < docs.size(); ++i) {
    const YAML::Node& doc = docs[i];
    const std::string where = absl::StrCat("document ", i + 1);
    if (!doc.IsDefined() || doc.IsNull()) continue;
    // A Kubernetes object (typically the ConfigMap `istio`) is welcome in a mesh file too.
    if (Get(doc, "apiVersion") && Get(doc, "kind")) {
      parser.ParseObject(doc, where);
    } else if (!have_mesh) {
      parser.ParseMeshDocument(doc);
      have_mesh = true;
    } else {
      parser.Error(doc, absl::StrCat(kMeshConfigId, " (", where, ")"),
                   "a mesh file holds one MeshConfig document; this one is ignored");
    }
  }
  return out;
}

ParsedFile ParseConfigFile(std::string_view file_name, std::string_view content) {
  return IsMeshFileName(file_name) ? ParseMeshYaml(file_name, content)
                                   : ParseKubeYaml(file_name, content);
}

}  // namespace ambit::config
