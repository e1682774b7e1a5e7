#include "agent/config/kube_yaml.h"

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "agent/authn/jose.h"
#include "agent/authn/model.h"
#include "agent/authz/compile.h"
#include "agent/config/lint.h"
#include "agent/config/validation.h"
#include "agent/config/yaml_limits.h"
#include "agent/state/waypoint.h"
#include "agent/state/workload_meta.h"

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
      "verifyCertificateAtClient",
  };
  return *kFields;
}

std::string Join(std::string_view path, std::string_view key) {
  return path.empty() ? std::string(key) : absl::StrCat(ToAbsl(path), ".", ToAbsl(key));
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
    r.Error(*v, Join(path, key), absl::StrCat("must be a string, not ", YamlTypeName(*v)));
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
    r.Error(*v, field, absl::StrCat("must be a map of strings, not ", YamlTypeName(*v)));
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
              absl::StrCat("must be a string, not ", YamlTypeName(it->second)));
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
    r.Error(n, field, absl::StrCat(YamlTypeName(n), " is not a port number (1 to 65535)"));
    return std::nullopt;
  }
  return static_cast<uint16_t>(value);
}

std::optional<IpAddress> ParseIp(Reporter& r, const YAML::Node& n, std::string_view field) {
  if (!n.IsScalar()) {
    r.Error(n, field, absl::StrCat("must be an IP address, not ", YamlTypeName(n)));
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
    r.Error(*meta, "metadata", absl::StrCat("must be a map, not ", YamlTypeName(*meta)));
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
    r.Error(*v, Join(path, key), absl::StrCat("must be a map, not ", YamlTypeName(*v)));
    return std::nullopt;
  }
  return v;
}

std::optional<YAML::Node> GetList(Reporter& r, const YAML::Node& parent, std::string_view key,
                                  std::string_view path) {
  auto v = Get(parent, key);
  if (!v) return std::nullopt;
  if (!v->IsSequence()) {
    r.Error(*v, Join(path, key), absl::StrCat("must be a list, not ", YamlTypeName(*v)));
    return std::nullopt;
  }
  return v;
}

// Reports every key of map not in known as an unknown field: the CRD's schema has no other
// fields, and a misspelt one (`mtl:`, `notPrincipal:`) silently weakens a security policy.
void RejectUnknownFields(Reporter& r, const YAML::Node& map, std::string_view path,
                         std::initializer_list<std::string_view> known, std::string_view hint) {
  if (!map.IsMap()) return;
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

// A list of strings. Absent or null: empty. Unquoted numbers (`ports: [8080]`) are taken as
// their text, as a string field needs.
std::vector<std::string> GetStringList(Reporter& r, const YAML::Node& map, std::string_view key,
                                       std::string_view path) {
  std::vector<std::string> out;
  auto v = Get(map, key);
  if (!v) return out;
  const std::string field = Join(path, key);
  if (!v->IsSequence()) {
    r.Error(*v, field, absl::StrCat("must be a list of strings, not ", YamlTypeName(*v)));
    return out;
  }
  for (size_t i = 0; i < v->size(); ++i) {
    const YAML::Node item = (*v)[i];
    if (!item.IsScalar()) {
      r.Error(item.IsNull() ? *v : item, absl::StrCat(field, "[", i, "]"),
              absl::StrCat("must be a string, not ", YamlTypeName(item)));
      continue;
    }
    out.push_back(item.Scalar());
  }
  return out;
}

// A boolean field (true/false). Absent: nullopt.
std::optional<bool> GetBool(Reporter& r, const YAML::Node& map, std::string_view key,
                            std::string_view path) {
  auto v = Get(map, key);
  if (!v) return std::nullopt;
  if (v->IsScalar()) {
    const std::string& t = v->Scalar();
    if (t == "true" || t == "True" || t == "TRUE") return true;
    if (t == "false" || t == "False" || t == "FALSE") return false;
  }
  r.Error(*v, Join(path, key), absl::StrCat("must be true or false, not ", YamlTypeName(*v)));
  return std::nullopt;
}

// Istio's workload metadata of a pod (telemetry labels): the workload name from
// metadata.generateName and the controller among metadata.ownerReferences, the canonical service
// and revision from its labels. A malformed entry is a warning naming its field and is ignored:
// what only names the pod in metrics never takes it out of the mesh.
void FillWorkloadMeta(Reporter& r, const YAML::Node& doc, state::Pod* pod) {
  std::string generate_name;
  std::vector<state::OwnerReference> owners;
  const YAML::Node meta = Get(doc, "metadata").value_or(YAML::Node());
  auto scalar = [&](const YAML::Node& map, std::string_view key,
                    const std::string& path) -> std::string {
    auto v = Get(map, key);
    if (!v) return "";
    if (!v->IsScalar()) {
      r.Warning(*v, Join(path, key),
                absl::StrCat("must be a string, not ", YamlTypeName(*v), "; ignored"));
      return "";
    }
    return v->Scalar();
  };
  if (meta.IsMap()) {
    generate_name = scalar(meta, "generateName", "metadata");
    if (auto refs = Get(meta, "ownerReferences"); refs && !refs->IsSequence()) {
      r.Warning(*refs, "metadata.ownerReferences",
                absl::StrCat("must be a list, not ", YamlTypeName(*refs), "; ignored"));
    } else if (refs) {
      for (size_t i = 0; i < refs->size(); ++i) {
        const YAML::Node ref = (*refs)[i];
        const std::string path = absl::StrCat("metadata.ownerReferences[", i, "]");
        if (!ref.IsMap()) {
          r.Warning(ref, path, absl::StrCat("must be a map, not ", YamlTypeName(ref), "; ignored"));
          continue;
        }
        state::OwnerReference o{scalar(ref, "kind", path), scalar(ref, "name", path)};
        const std::string controller = scalar(ref, "controller", path);
        o.controller = controller == "true" || controller == "True" || controller == "TRUE";
        if (o.controller && (o.kind.empty() || o.name.empty())) {
          r.Warning(ref, absl::StrCat(path, o.kind.empty() ? ".kind" : ".name"),
                    "is required for a controller reference; the reference is ignored");
          continue;
        }
        owners.push_back(std::move(o));
      }
    }
  }
  pod->workload_name = state::WorkloadName(pod->name, generate_name, owners, pod->labels);
  pod->canonical_service = state::CanonicalService(pod->labels, pod->workload_name);
  pod->canonical_revision = state::CanonicalRevision(pod->labels);
}

// A protobuf Duration in its JSON form: decimal seconds with an "s" suffix ("10s", "0.25s").
std::optional<absl::Duration> GetDuration(Reporter& r, const YAML::Node& map, std::string_view key,
                                          std::string_view path) {
  auto v = Get(map, key);
  if (!v) return std::nullopt;
  auto bad = [&] {
    r.Error(*v, Join(path, key),
            absl::StrCat(YamlTypeName(*v),
                         " is not a duration: write seconds with an s suffix, e.g. 10s or 0.5s"));
    return std::nullopt;
  };
  if (!v->IsScalar()) return bad();
  std::string text = v->Scalar();
  if (text.size() < 2 || text.back() != 's') return bad();
  text.pop_back();
  bool dot = false;
  for (char c : text) {
    if (c == '.' && !dot) {
      dot = true;
    } else if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      return bad();
    }
  }
  double seconds = 0;
  if (text == "." || !absl::SimpleAtod(text, &seconds) || seconds > 315576000000.0) return bad();
  return absl::Seconds(seconds);
}

// The HTTP status codes of Envoy's envoy.type.v3.StatusCode, which istiod requires of
// statusOnError.
bool IsEnvoyStatusCode(int64_t code) {
  static constexpr int kCodes[] = {
      100, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308,
      400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421,
      422, 423, 424, 426, 428, 429, 431, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511};
  return std::find(std::begin(kCodes), std::end(kCodes), code) != std::end(kCodes);
}

// A hostname as istiod's ValidateFQDN takes it: dot-separated labels of letters, digits and '-'
// (1 to 63 characters, no leading or trailing '-'), at most 255 characters.
bool IsFqdn(std::string_view name) {
  if (name.empty() || name.size() > 255) return false;
  if (name.back() == '.') name.remove_suffix(1);
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('.', start);
    if (end == std::string_view::npos) end = name.size();
    std::string_view label = name.substr(start, end - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return false;
    }
    for (char c : label) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-') return false;
    }
    start = end + 1;
  }
  return true;
}

// extensionProviders[].envoyExtAuthz{Http,Grpc}.service: "[<namespace>/]<hostname>".
absl::Status ValidateProviderService(std::string_view service) {
  if (service.empty()) return absl::InvalidArgumentError("must not be empty");
  size_t slash = service.find('/');
  std::string_view host = service;
  if (slash != std::string_view::npos) {
    std::string_view ns = service.substr(0, slash);
    host = service.substr(slash + 1);
    if (ns != "*" && ns != "." && !ValidateDns1123Label(ns).ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", ToAbsl(service), "': the part before '/' must be a namespace (a DNS-1123 label)"));
    }
  }
  if (!IsFqdn(host) && !IpAddress::Parse(ToAbsl(host)).ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", ToAbsl(service),
                     "' is not [<namespace>/]<hostname>, e.g. ext-authz.foo.svc.cluster.local"));
  }
  return absl::OkStatus();
}

constexpr std::string_view kOtherProviderKinds[] = {
    "zipkin",      "lightstep",     "datadog",    "stackdriver",        "opencensus",
    "skywalking",  "opentelemetry", "prometheus", "envoyFileAccessLog", "envoyHttpAls",
    "envoyTcpAls", "envoyOtelAls",  "sds"};

void ParseExtAuthzProvider(Reporter& r, const YAML::Node& n, const std::string& path, bool http,
                           state::ExtensionProvider* p) {
  if (!n.IsMap()) {
    r.Error(n, path, absl::StrCat("must be a map with service and port, not ", YamlTypeName(n)));
    return;
  }
  if (http) {
    RejectUnknownFields(
        r, n, path,
        {"service", "port", "timeout", "pathPrefix", "failOpen", "clearRouteCache", "statusOnError",
         "includeHeadersInCheck", "includeRequestHeadersInCheck", "includeAdditionalHeadersInCheck",
         "includeRequestBodyInCheck", "headersToUpstreamOnAllow", "headersToDownstreamOnDeny",
         "headersToDownstreamOnAllow"},
        "see Istio's MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationHttpProvider");
  } else {
    RejectUnknownFields(
        r, n, path,
        {"service", "port", "timeout", "failOpen", "clearRouteCache", "statusOnError",
         "includeRequestBodyInCheck"},
        "see Istio's MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider");
  }
  if (auto service = GetString(r, n, "service", path)) {
    p->service = *service;
    r.ErrorIf(ValidateProviderService(*service), *Get(n, "service"), path + ".service");
  } else if (!Get(n, "service")) {
    r.Error(n, path + ".service", "is required, e.g. service: ext-authz.foo.svc.cluster.local");
  }
  if (auto port = Get(n, "port")) {
    if (auto number = ParsePortNumber(r, *port, path + ".port")) p->port = *number;
  } else {
    r.Error(n, path + ".port", "is required (1 to 65535)");
  }
  p->timeout = GetDuration(r, n, "timeout", path);
  p->fail_open = GetBool(r, n, "failOpen", path).value_or(false);
  p->clear_route_cache = GetBool(r, n, "clearRouteCache", path);
  if (auto status = GetString(r, n, "statusOnError", path)) {
    int64_t code = 0;
    if (!absl::SimpleAtoi(*status, &code) || !IsEnvoyStatusCode(code)) {
      r.Error(*Get(n, "statusOnError"), path + ".statusOnError",
              absl::StrCat("'", *status, "' is not an HTTP status code Envoy supports, e.g. 403"));
    } else {
      p->status_on_error = static_cast<uint32_t>(code);
    }
  }
  if (auto body = GetMap(r, n, "includeRequestBodyInCheck", path)) {
    const std::string body_path = path + ".includeRequestBodyInCheck";
    RejectUnknownFields(r, *body, body_path,
                        {"maxRequestBytes", "allowPartialMessage", "packAsBytes"},
                        "the fields are maxRequestBytes, allowPartialMessage and packAsBytes");
    state::ExtAuthzRequestBody b;
    if (auto max = Get(*body, "maxRequestBytes")) {
      uint32_t bytes = 0;
      if (!max->IsScalar() || !absl::SimpleAtoi(max->Scalar(), &bytes)) {
        r.Error(*max, body_path + ".maxRequestBytes",
                absl::StrCat(YamlTypeName(*max), " is not a number of bytes"));
      }
      b.max_request_bytes = bytes;
    }
    b.allow_partial_message = GetBool(r, *body, "allowPartialMessage", body_path).value_or(false);
    b.pack_as_bytes = GetBool(r, *body, "packAsBytes", body_path).value_or(false);
    p->include_request_body_in_check = b;
  }
  if (!http) return;
  if (auto prefix = GetString(r, n, "pathPrefix", path)) {
    p->path_prefix = *prefix;
    if (!prefix->empty() && prefix->front() != '/') {
      r.Error(*Get(n, "pathPrefix"), path + ".pathPrefix",
              absl::StrCat("'", *prefix, "' must begin with '/', e.g. /check"));
    }
  }
  p->include_request_headers_in_check = GetStringList(r, n, "includeHeadersInCheck", path);
  for (std::string& h : GetStringList(r, n, "includeRequestHeadersInCheck", path)) {
    p->include_request_headers_in_check.push_back(std::move(h));
  }
  p->include_additional_headers_in_check =
      GetStringMap(r, n, "includeAdditionalHeadersInCheck", path);
  p->headers_to_upstream_on_allow = GetStringList(r, n, "headersToUpstreamOnAllow", path);
  p->headers_to_downstream_on_deny = GetStringList(r, n, "headersToDownstreamOnDeny", path);
  p->headers_to_downstream_on_allow = GetStringList(r, n, "headersToDownstreamOnAllow", path);
}

// MeshConfig.extensionProviders, validated as istiod's validateExtensionProvider does: unique,
// non-empty names, exactly one provider kind each, and for the ext_authz kinds a service, a port,
// a known statusOnError and a pathPrefix starting with '/'.
void ParseExtensionProviders(Reporter& r, const YAML::Node& list, const std::string& field,
                             state::MeshConfig* mesh) {
  if (!list.IsSequence()) {
    r.Error(list, field, absl::StrCat("must be a list of providers, not ", YamlTypeName(list)));
    return;
  }
  std::set<std::string> names;
  for (size_t i = 0; i < list.size(); ++i) {
    const YAML::Node n = list[i];
    const std::string path = absl::StrCat(field, "[", i, "]");
    if (!n.IsMap()) {
      r.Error(n.IsNull() ? list : n, path,
              absl::StrCat("must be a map with a name and a provider kind, not ", YamlTypeName(n)));
      continue;
    }
    state::ExtensionProvider p;
    std::vector<std::string> kinds;
    bool unknown = false;
    for (auto it = n.begin(); it != n.end(); ++it) {
      if (!it->first.IsScalar()) {
        r.Error(it->first, path, "keys must be strings");
        continue;
      }
      const std::string& key = it->first.Scalar();
      if (key == "name") continue;
      const bool known = key == "envoyExtAuthzHttp" || key == "envoyExtAuthzGrpc" ||
                         std::find(std::begin(kOtherProviderKinds), std::end(kOtherProviderKinds),
                                   key) != std::end(kOtherProviderKinds);
      if (!known) {
        r.Error(it->first, Join(path, key),
                "unknown field; an extension provider has a name and one provider kind such as "
                "envoyExtAuthzHttp or envoyExtAuthzGrpc");
        unknown = true;
        continue;
      }
      kinds.push_back(key);
    }
    if (auto name = GetString(r, n, "name", path); name && !name->empty()) {
      p.name = *name;
      if (!names.insert(*name).second) {
        r.Error(*Get(n, "name"), path + ".name",
                absl::StrCat("'", *name, "' names another provider too; names must be unique"));
      }
    } else {
      r.Error(n, path + ".name", "is required and must not be empty");
    }
    if (kinds.empty()) {
      if (unknown) continue;
      r.Error(n, path,
              "sets no provider kind: add one, e.g. envoyExtAuthzHttp: {service: ..., port: ...}");
      continue;
    }
    if (kinds.size() > 1) {
      r.Error(n, path,
              absl::StrCat("sets ", kinds.size(), " provider kinds (", kinds[0], ", ", kinds[1],
                           "); a provider has exactly one"));
      continue;
    }
    p.kind_name = kinds[0];
    if (kinds[0] == "envoyExtAuthzHttp" || kinds[0] == "envoyExtAuthzGrpc") {
      const bool http = kinds[0] == "envoyExtAuthzHttp";
      p.kind = http ? state::ExtensionProvider::Kind::kEnvoyExtAuthzHttp
                    : state::ExtensionProvider::Kind::kEnvoyExtAuthzGrpc;
      auto node = Get(n, kinds[0]);
      if (!node) {
        r.Error(n, Join(path, kinds[0]), "must not be empty: give at least service and port");
        continue;
      }
      ParseExtAuthzProvider(r, *node, Join(path, kinds[0]), http, &p);
    }
    mesh->extension_providers.push_back(std::move(p));
  }
}

// Every policy principal is expanded once per trust domain of the bundle, so the list is
// bounded; a migration has a handful.
constexpr size_t kMaxTrustDomainAliases = 32;

// meshConfig.trustDomainAliases (`list`): a bad alias is reported with its index, which rejects
// the MeshConfig (the last good one stays).
void ParseTrustDomainAliases(Reporter& r, const YAML::Node& list, const std::string& field,
                             state::MeshConfig* mesh) {
  if (!list.IsSequence()) {
    r.Error(list, field, absl::StrCat("must be a list of trust domains, not ", YamlTypeName(list)));
    return;
  }
  if (list.size() > kMaxTrustDomainAliases) {
    r.Error(list, field,
            absl::StrCat("has ", list.size(), " aliases; at most ", kMaxTrustDomainAliases,
                         " are supported"));
    return;
  }
  for (size_t i = 0; i < list.size(); ++i) {
    const YAML::Node item = list[i];
    const std::string item_field = absl::StrCat(field, "[", i, "]");
    if (!item.IsScalar()) {
      r.Error(item.IsNull() ? list : item, item_field,
              absl::StrCat("must be a string, not ", YamlTypeName(item)));
      continue;
    }
    const std::string& alias = item.Scalar();
    absl::Status s = ValidateTrustDomain(alias);
    r.ErrorIf(s, item, item_field);
    if (!s.ok()) continue;
    auto& aliases = mesh->trust_domain_aliases;
    if (std::find(aliases.begin(), aliases.end(), alias) == aliases.end()) {
      aliases.push_back(alias);
    }
  }
}

// Reads the MeshConfig fields of node (a map) into mesh. path prefixes field names in errors.
void ParseMeshFields(Reporter& r, const YAML::Node& node, std::string_view path,
                     state::MeshConfig* mesh) {
  if (!node.IsDefined() || node.IsNull()) return;
  if (!node.IsMap()) {
    r.Error(node, path,
            absl::StrCat("a MeshConfig must be a map of fields (e.g. trustDomain: cluster.local), "
                         "not ",
                         YamlTypeName(node)));
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
        r.Error(it->second, field,
                absl::StrCat("must be a string, not ", YamlTypeName(it->second)));
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
    } else if (key == "trustDomainAliases") {
      if (!it->second.IsNull()) ParseTrustDomainAliases(r, it->second, field, mesh);
    } else if (key == "extensionProviders") {
      if (!it->second.IsNull()) ParseExtensionProviders(r, it->second, field, mesh);
    } else if (key == "pathNormalization") {
      if (it->second.IsNull()) continue;
      if (!it->second.IsMap()) {
        r.Error(it->second, field,
                absl::StrCat("must be a map such as {normalization: MERGE_SLASHES}, not ",
                             YamlTypeName(it->second)));
        continue;
      }
      RejectUnknownFields(r, it->second, field, {"normalization"},
                          "the only field here is normalization");
      if (auto n = GetString(r, it->second, "normalization", field)) {
        if (*n == "DEFAULT" || *n == "NONE" || *n == "BASE" || *n == "MERGE_SLASHES" ||
            *n == "DECODE_AND_MERGE_SLASHES") {
          mesh->path_normalization = *n == "DEFAULT" ? "" : *n;
        } else {
          r.Error(*Get(it->second, "normalization"), field + ".normalization",
                  absl::StrCat("'", *n,
                               "' is not a normalization: use DEFAULT, NONE, BASE, MERGE_SLASHES "
                               "or DECODE_AND_MERGE_SLASHES"));
        }
      }
    } else if (!KnownMeshFields().contains(key)) {
      r.Warning(it->first, field, "unknown MeshConfig field; ignored (check its spelling)");
    }
  }
}

std::string ExcessiveAliasing() {
  return absl::StrCat("not loaded: its aliases expand to over ", kMaxAliasExpansion,
                      " nodes (a YAML alias bomb?); write the repeated parts out");
}

std::string RunawayYaml() {
  return "not loaded: the YAML parser does not come to an end on this text (malformed document "
         "markers or indentation near this position)";
}

// Parses the documents of one file into out.
class FileParser {
 public:
  FileParser(std::string_view file, ParsedFile* out) : file_(file), out_(out) {}

  // Loads all documents; false (and one error) when the text is not YAML.
  bool Load(std::string_view content, std::vector<YAML::Node>* docs) {
    if (AliasExpansion a = CheckAliasExpansion(content); a.excessive || a.runaway) {
      out_->errors.push_back({std::string(file_), "", "",
                              a.runaway ? RunawayYaml() : ExcessiveAliasing(), false, a.line,
                              a.column});
      out_->unparseable = true;
      return false;
    }
    try {
      *docs = YAML::LoadAll(std::string(content));
      return true;
    } catch (const YAML::Exception& e) {
      ConfigError err{std::string(file_), "", "", YamlParseError(e)};
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
                         YamlTypeName(doc)));
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
    if (security && kind == "AuthorizationPolicy") return ParseAuthorizationPolicy(doc, where);
    if (security && kind == "RequestAuthentication") return ParseRequestAuthentication(doc, where);
    if (IsGatewayApiVersion(api_version) && kind == "Gateway") return ParseGateway(doc, where);
    const bool namespaced =
        !PeekString(Get(doc, "metadata").value_or(YAML::Node()), "namespace").empty();
    Reporter r(file_, Identify(kind, doc, where, namespaced).display, &out_->errors);
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
    FillWorkloadMeta(r, doc, &pod);
    if (absl::Time created = ParseCreationTimestamp(r, doc); created != absl::InfinitePast()) {
      pod.creation_time = created;
    }
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
                    absl::StrCat("must be a map with an ip field, not ", YamlTypeName(entry)));
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
    // Only the annotations ambit reads later are kept (the netns one is netns_path now): a pod of
    // a real cluster carries many (kubectl's, Prometheus', the CNI's), and the agent holds one
    // pod for every peer of the cluster.
    // Kept too: what config::Lint will warn about (a misspelled ambit.dev/netns, ...).
    std::erase_if(pod.annotations, [](const auto& kv) {
      return kv.first != state::kWaypointBypassAnnotation &&
             !LintFlagsPodAnnotation(kv.first, kv.second);
    });
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
    svc.labels = std::move(m.labels);
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

  static bool IsGatewayApiVersion(std::string_view api_version) {
    return api_version == "gateway.networking.k8s.io/v1" ||
           api_version == "gateway.networking.k8s.io/v1beta1";
  }

  // A Gateway API Gateway: its class and labels decide whether and how it is a waypoint. The rest
  // of spec (listeners, addresses, infrastructure) belongs to whoever implements the class and
  // is not checked here.
  void ParseGateway(const YAML::Node& doc, const std::string& where) {
    const Identity who = Identify("Gateway", doc, where, true);
    Reporter r(file_, who.display, &out_->errors);
    Metadata m = ParseMetadata(r, doc, NameRule::kDns1123Subdomain, /*namespaced=*/true);
    state::Gateway gw;
    gw.name = std::move(m.name);
    gw.namespace_name = std::move(m.namespace_name);
    gw.labels = std::move(m.labels);
    gw.source_file = std::string(file_);
    if (auto spec = GetMap(r, doc, "spec", "")) {
      if (auto cls = GetString(r, *spec, "gatewayClassName", "spec")) {
        gw.gateway_class = *cls;
        if (cls->empty())
          r.Error(*Get(*spec, "gatewayClassName"), "spec.gatewayClassName", "is empty");
      } else if (!Get(*spec, "gatewayClassName")) {
        r.Error(*spec, "spec.gatewayClassName", "is required");
      }
    } else if (!Get(doc, "spec")) {
      r.Error(doc, "spec.gatewayClassName", "is required");
    }
    if (gw.gateway_class == state::kWaypointGatewayClass) {
      if (auto it = gw.labels.find(std::string(state::kWaypointForLabel));
          it != gw.labels.end() && !state::ParseWaypointTraffic(it->second)) {
        // A typo must not quietly become the default (service): who meant "all" would find
        // pod-addressed traffic skipping the waypoint.
        const YAML::Node meta = Get(doc, "metadata").value_or(doc);
        r.Error(Get(meta, "labels").value_or(meta),
                absl::StrCat("metadata.labels[", state::kWaypointForLabel, "]"),
                absl::StrCat("'", it->second,
                             "' is not a waypoint traffic type: use service, workload, all or "
                             "none"));
      }
    }
    Finish(r, who.id, std::move(gw));
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
      r.Error(n, field, absl::StrCat("must be a map with a port field, not ", YamlTypeName(n)));
      return std::nullopt;
    }
    const int errors_before = r.errors();
    state::ServicePort port;
    if (auto name = GetString(r, n, "name", field); name && !name->empty()) {
      port.name = *name;
      r.ErrorIf(ValidateDns1123Label(*name), *Get(n, "name"), field + ".name");
    }
    if (auto app = GetString(r, n, "appProtocol", field); app && !app->empty()) {
      port.app_protocol = *app;
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
                absl::StrCat("must be a port number or name, not ", YamlTypeName(*target)));
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
          r.Error(
              *text, "data.mesh",
              absl::StrCat("must be a string holding MeshConfig YAML, not ", YamlTypeName(*text)));
        } else {
          ParseEmbeddedMesh(r, *text, &mesh);
        }
      }
    }
    Finish(r, kMeshConfigId, mesh);
  }

  static void ParseEmbeddedMesh(Reporter& r, const YAML::Node& text, state::MeshConfig* mesh) {
    YAML::Node node;
    if (AliasExpansion a = CheckAliasExpansion(text.Scalar()); a.excessive || a.runaway) {
      r.Error(text, "data.mesh", a.runaway ? RunawayYaml() : ExcessiveAliasing());
      return;
    }
    try {
      node = YAML::Load(text.Scalar());
    } catch (const YAML::Exception& e) {
      r.Error(text, "data.mesh",
              absl::StrCat(YamlParseError(e), " (line ", e.mark.line + 1, ", column ",
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
                                     YamlTypeName(it->second)));
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

  // AuthorizationPolicy, validated as istiod's ValidateAuthorizationPolicy (and the CRD schema)
  // does: unknown fields, the dry-run annotation, selector/targetRef/targetRefs exclusivity,
  // target references, DENY and CUSTOM without rules, provider only with CUSTOM, the source and
  // condition fields CUSTOM does not support; then authz::Compile for CIDRs, ports, empty values,
  // path templates and condition keys. Whether a CUSTOM policy's provider exists is only known
  // once the mesh config is merged: DirectoryLoader checks it.
  void ParseAuthorizationPolicy(const YAML::Node& doc, const std::string& where) {
    const Identity who = Identify("AuthorizationPolicy", doc, where, true);
    Reporter r(file_, who.display, &out_->errors);
    Metadata m = ParseMetadata(r, doc, NameRule::kDns1123Subdomain, /*namespaced=*/true);
    authz::Policy p;
    p.name = std::move(m.name);
    p.namespace_name = std::move(m.namespace_name);
    p.source_file = std::string(file_);
    bool single_target_ref = false;
    std::optional<YAML::Node> spec = GetMap(r, doc, "spec", "");
    if (spec) ParseAuthorizationPolicySpec(r, *spec, &p, &single_target_ref);

    const std::string dry_run_key(authz::kDryRunAnnotation);
    if (auto it = m.annotations.find(dry_run_key); it != m.annotations.end()) {
      const YAML::Node meta = Get(doc, "metadata").value_or(doc);
      const YAML::Node annotations = Get(meta, "annotations").value_or(meta);
      const YAML::Node at = Get(annotations, dry_run_key).value_or(annotations);
      const std::string field = absl::StrCat("metadata.annotations[", dry_run_key, "]");
      // istiod: strconv.ParseBool, and only for ALLOW and DENY.
      static constexpr std::string_view kTrue[] = {"1", "t", "T", "TRUE", "true", "True"};
      static constexpr std::string_view kFalse[] = {"0", "f", "F", "FALSE", "false", "False"};
      const std::string& v = it->second;
      if (std::find(std::begin(kTrue), std::end(kTrue), v) != std::end(kTrue)) {
        p.dry_run = true;
      } else if (std::find(std::begin(kFalse), std::end(kFalse), v) == std::end(kFalse)) {
        r.Error(at, field, absl::StrCat("'", v, "' is not a boolean: use \"true\" or \"false\""));
      }
      if (p.action != authz::Action::kAllow && p.action != authz::Action::kDeny) {
        r.Error(at, field,
                absl::StrCat("dry run is only supported for ALLOW and DENY policies, not ",
                             authz::ActionName(p.action), " (as in istiod)"));
      }
    }

    if (r.errors() == 0) {
      absl::StatusOr<authz::CompiledPolicy> compiled = authz::Compile(p);
      if (!compiled.ok()) ReportCompileError(r, doc, compiled.status(), single_target_ref);
    }
    Finish(r, who.id, std::move(p));
  }

  // Compile's messages start with a field path relative to spec ("rules[0].to[0].operation.
  // ports[1]: ..."); report it as a path in the document, at the line of that field.
  static void ReportCompileError(Reporter& r, const YAML::Node& doc, const absl::Status& status,
                                 bool single_target_ref) {
    const std::string message(status.message());
    size_t colon = message.find(": ");
    if (colon == std::string::npos) {
      r.Error(doc, "spec", message);
      return;
    }
    std::string path = message.substr(0, colon);
    if (single_target_ref && absl::StartsWith(path, "targetRefs[0]")) {
      path = absl::StrCat("targetRef", path.substr(std::string("targetRefs[0]").size()));
    }
    if (path != "spec" && !absl::StartsWith(path, "spec.") && !absl::StartsWith(path, "metadata")) {
      path = absl::StrCat("spec.", path);
    }
    r.Error(FindByPath(doc, path), path, message.substr(colon + 2));
  }

  // The node a field path ("spec.rules[0].from[1].source.ipBlocks[2]",
  // "spec.selector.matchLabels[app.kubernetes.io/name]") names, or the deepest one that exists.
  static YAML::Node FindByPath(const YAML::Node& doc, std::string_view path) {
    YAML::Node at = doc;
    size_t i = 0;
    while (i < path.size()) {
      std::string key;
      bool bracket = path[i] == '[';
      if (bracket) {
        size_t close = path.find(']', i);
        if (close == std::string_view::npos) break;
        key = std::string(path.substr(i + 1, close - i - 1));
        i = close + 1;
      } else {
        size_t end = path.find_first_of(".[", i);
        if (end == std::string_view::npos) end = path.size();
        key = std::string(path.substr(i, end - i));
        i = end;
      }
      if (i < path.size() && path[i] == '.') ++i;
      YAML::Node next;
      size_t index = 0;
      if (bracket && at.IsSequence() && absl::SimpleAtoi(key, &index) && index < at.size()) {
        next = at[index];
      } else if (auto v = Get(at, key)) {
        next = *v;
      } else {
        break;
      }
      at = next;
    }
    return at;
  }

  static void ParseAuthorizationPolicySpec(Reporter& r, const YAML::Node& spec, authz::Policy* p,
                                           bool* single_target_ref) {
    RejectUnknownFields(r, spec, "spec",
                        {"selector", "targetRef", "targetRefs", "action", "provider", "rules"},
                        "AuthorizationPolicy's spec has selector, targetRef, targetRefs, action, "
                        "provider and rules");
    if (auto action = GetString(r, spec, "action", "spec")) {
      static constexpr struct {
        const char* name;
        authz::Action action;
      } kActions[] = {{"ALLOW", authz::Action::kAllow},
                      {"DENY", authz::Action::kDeny},
                      {"AUDIT", authz::Action::kAudit},
                      {"CUSTOM", authz::Action::kCustom}};
      bool found = false;
      for (const auto& a : kActions) {
        if (*action == a.name) {
          p->action = a.action;
          found = true;
        }
      }
      if (!found) {
        r.Error(*Get(spec, "action"), "spec.action",
                absl::StrCat("'", *action, "' is not an action: use ALLOW, DENY, AUDIT or CUSTOM"));
      }
    }
    const bool custom = p->action == authz::Action::kCustom;

    std::optional<YAML::Node> selector = GetMap(r, spec, "selector", "spec");
    if (selector) {
      RejectUnknownFields(r, *selector, "spec.selector", {"matchLabels"},
                          "a workload selector has only matchLabels");
      p->selector = GetStringMap(r, *selector, "matchLabels", "spec.selector");
      if (p->selector->empty()) {
        r.Warning(*selector, "spec.selector",
                  "has no matchLabels, so the policy applies to every workload in the namespace "
                  "(istiod warns: workload selector specified without labels)");
      }
    }
    std::optional<YAML::Node> single = GetMap(r, spec, "targetRef", "spec");
    std::optional<YAML::Node> list = GetList(r, spec, "targetRefs", "spec");
    if (list && list->size() == 0) list.reset();
    if (single) {
      *single_target_ref = true;
      p->target_refs.push_back(ParseTargetRef(r, *single, "spec.targetRef"));
    }
    if (list) {
      for (size_t i = 0; i < list->size(); ++i) {
        p->target_refs.push_back(
            ParseTargetRef(r, (*list)[i], absl::StrCat("spec.targetRefs[", i, "]")));
      }
    }
    const int attachments = (selector ? 1 : 0) + (single ? 1 : 0) + (list ? 1 : 0);
    if (attachments > 1) {
      r.Error(spec, "spec",
              "only one of selector, targetRef and targetRefs may be set (as in istiod): a policy "
              "attaches either to workloads by label or to a Gateway/Service by reference");
    }

    std::optional<YAML::Node> provider = GetMap(r, spec, "provider", "spec");
    if (provider) {
      RejectUnknownFields(r, *provider, "spec.provider", {"name"},
                          "the only field here is name (an extensionProviders entry)");
      if (auto name = GetString(r, *provider, "name", "spec.provider")) p->provider = *name;
      if (!custom) {
        r.Error(
            *provider, "spec.provider",
            absl::StrCat("is only allowed with action CUSTOM, not ", authz::ActionName(p->action)));
      }
    }

    if (auto rules = GetList(r, spec, "rules", "spec"); rules && rules->size() > 0) {
      p->rules.emplace();
      for (size_t i = 0; i < rules->size(); ++i) {
        p->rules->push_back(
            ParseRule(r, (*rules)[i], *rules, absl::StrCat("spec.rules[", i, "]"), custom));
      }
    }
    if (!p->rules.has_value() &&
        (p->action == authz::Action::kDeny || p->action == authz::Action::kCustom)) {
      r.Error(Get(spec, "rules").value_or(spec), "spec.rules",
              absl::StrCat(authz::ActionName(p->action),
                           " without rules never matches, so istiod rejects it: add `rules: "
                           "[{}]` to match every request"));
    }
  }

  static authz::TargetRef ParseTargetRef(Reporter& r, const YAML::Node& n,
                                         const std::string& path) {
    authz::TargetRef ref;
    if (!n.IsMap()) {
      r.Error(n, path, absl::StrCat("must be a map with kind and name, not ", YamlTypeName(n)));
      return ref;
    }
    RejectUnknownFields(r, n, path, {"group", "kind", "name", "namespace"},
                        "a target reference has group, kind, name and namespace");
    ref.group = GetString(r, n, "group", path).value_or("");
    ref.kind = GetString(r, n, "kind", path).value_or("");
    ref.name = GetString(r, n, "name", path).value_or("");
    if (auto ns = GetString(r, n, "namespace", path); ns && !ns->empty()) {
      r.Error(*Get(n, "namespace"), path + ".namespace",
              "must not be set: cross-namespace references are not supported (as in istiod)");
    }
    return ref;
  }

  static authz::Rule ParseRule(Reporter& r, const YAML::Node& n, const YAML::Node& list,
                               const std::string& path, bool custom) {
    authz::Rule rule;
    if (!n.IsMap()) {
      r.Error(n.IsNull() ? list : n, path,
              absl::StrCat("must be a map of from, to and when (`{}` matches every request), not ",
                           YamlTypeName(n)));
      return rule;
    }
    RejectUnknownFields(r, n, path, {"from", "to", "when"}, "a rule has from, to and when");
    if (auto from = GetList(r, n, "from", path)) {
      if (from->size() == 0) {
        r.Error(*from, path + ".from",
                "must not be empty (as in istiod): remove it to match any source");
      }
      for (size_t j = 0; j < from->size(); ++j) {
        const std::string entry = absl::StrCat(path, ".from[", j, "]");
        const YAML::Node e = (*from)[j];
        if (!e.IsMap()) {
          r.Error(e.IsNull() ? *from : e, entry,
                  absl::StrCat("must be a map with a source, not ", YamlTypeName(e)));
          continue;
        }
        RejectUnknownFields(r, e, entry, {"source"}, "a from entry has only source");
        auto source = GetMap(r, e, "source", entry);
        if (!source) {
          r.Error(e, entry + ".source", "is required");
          continue;
        }
        rule.from.push_back(ParseSource(r, *source, entry + ".source", custom));
      }
    }
    if (auto to = GetList(r, n, "to", path)) {
      if (to->size() == 0) {
        r.Error(*to, path + ".to",
                "must not be empty (as in istiod): remove it to match any operation");
      }
      for (size_t j = 0; j < to->size(); ++j) {
        const std::string entry = absl::StrCat(path, ".to[", j, "]");
        const YAML::Node e = (*to)[j];
        if (!e.IsMap()) {
          r.Error(e.IsNull() ? *to : e, entry,
                  absl::StrCat("must be a map with an operation, not ", YamlTypeName(e)));
          continue;
        }
        RejectUnknownFields(r, e, entry, {"operation"}, "a to entry has only operation");
        auto op = GetMap(r, e, "operation", entry);
        if (!op) {
          r.Error(e, entry + ".operation", "is required");
          continue;
        }
        rule.to.push_back(ParseOperation(r, *op, entry + ".operation"));
      }
    }
    if (auto when = GetList(r, n, "when", path)) {
      for (size_t k = 0; k < when->size(); ++k) {
        const std::string entry = absl::StrCat(path, ".when[", k, "]");
        const YAML::Node e = (*when)[k];
        if (!e.IsMap()) {
          r.Error(e.IsNull() ? *when : e, entry,
                  absl::StrCat("must be a map with key and values or notValues, not ",
                               YamlTypeName(e)));
          continue;
        }
        RejectUnknownFields(r, e, entry, {"key", "values", "notValues"},
                            "a condition has key, values and notValues");
        authz::Condition c;
        c.key = GetString(r, e, "key", entry).value_or("");
        c.values = GetStringList(r, e, "values", entry);
        c.not_values = GetStringList(r, e, "notValues", entry);
        // istiod: CUSTOM does not support conditions on the peer or JWT identity.
        if (custom && (c.key == "source.namespace" || c.key == "source.serviceAccount" ||
                       c.key == "source.trustDomain" || c.key == "source.principal" ||
                       absl::StartsWith(c.key, "request.auth."))) {
          r.Error(*Get(e, "key"), entry + ".key",
                  absl::StrCat("'", c.key, "' is not supported with action CUSTOM (as in istiod)"));
        }
        rule.when.push_back(std::move(c));
      }
    }
    return rule;
  }

  static authz::Source ParseSource(Reporter& r, const YAML::Node& n, const std::string& path,
                                   bool custom) {
    RejectUnknownFields(
        r, n, path,
        {"principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces",
         "notNamespaces", "serviceAccounts", "notServiceAccounts", "ipBlocks", "notIpBlocks",
         "remoteIpBlocks", "notRemoteIpBlocks", "trustDomains", "notTrustDomains"},
        "see the Source fields of Istio's AuthorizationPolicy reference");
    authz::Source s;
    const struct {
      const char* name;
      std::vector<std::string>* values;
      bool custom_ok;
    } kFields[] = {
        {"principals", &s.principals, false},
        {"notPrincipals", &s.not_principals, false},
        {"requestPrincipals", &s.request_principals, false},
        {"notRequestPrincipals", &s.not_request_principals, false},
        {"namespaces", &s.namespaces, false},
        {"notNamespaces", &s.not_namespaces, false},
        {"serviceAccounts", &s.service_accounts, false},
        {"notServiceAccounts", &s.not_service_accounts, false},
        {"ipBlocks", &s.ip_blocks, true},
        {"notIpBlocks", &s.not_ip_blocks, true},
        {"remoteIpBlocks", &s.remote_ip_blocks, true},
        {"notRemoteIpBlocks", &s.not_remote_ip_blocks, true},
        {"trustDomains", &s.trust_domains, false},
        {"notTrustDomains", &s.not_trust_domains, false},
    };
    for (const auto& f : kFields) {
      *f.values = GetStringList(r, n, f.name, path);
      if (custom && !f.custom_ok && !f.values->empty()) {
        r.Error(*Get(n, f.name), Join(path, f.name),
                "is not supported with action CUSTOM (as in istiod): the external authorizer "
                "sees the identity itself");
      }
    }
    return s;
  }

  static authz::Operation ParseOperation(Reporter& r, const YAML::Node& n,
                                         const std::string& path) {
    RejectUnknownFields(
        r, n, path,
        {"hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"},
        "see the Operation fields of Istio's AuthorizationPolicy reference");
    authz::Operation o;
    o.hosts = GetStringList(r, n, "hosts", path);
    o.not_hosts = GetStringList(r, n, "notHosts", path);
    o.ports = GetStringList(r, n, "ports", path);
    o.not_ports = GetStringList(r, n, "notPorts", path);
    o.methods = GetStringList(r, n, "methods", path);
    o.not_methods = GetStringList(r, n, "notMethods", path);
    o.paths = GetStringList(r, n, "paths", path);
    o.not_paths = GetStringList(r, n, "notPaths", path);
    return o;
  }

  // RequestAuthentication, validated as istiod's ValidateRequestAuthentication (and the CRD
  // schema): unknown fields, selector/targetRef/targetRefs exclusivity and target kinds, and per
  // jwtRule: issuer required, non-empty audiences and locations, an http(s) jwksUri, jwks that
  // parses as a JWKS with a usable key (authn::ParseJwks), not both jwks and jwksUri, valid
  // header names for the outputs, a positive timeout.
  void ParseRequestAuthentication(const YAML::Node& doc, const std::string& where) {
    const Identity who = Identify("RequestAuthentication", doc, where, true);
    Reporter r(file_, who.display, &out_->errors);
    Metadata m = ParseMetadata(r, doc, NameRule::kDns1123Subdomain, /*namespaced=*/true);
    authn::RequestAuthentication ra;
    ra.name = std::move(m.name);
    ra.namespace_name = std::move(m.namespace_name);
    ra.source_file = std::string(file_);
    if (auto spec = GetMap(r, doc, "spec", "")) {
      RejectUnknownFields(r, *spec, "spec", {"selector", "targetRef", "targetRefs", "jwtRules"},
                          "RequestAuthentication's spec has selector, targetRef, targetRefs and "
                          "jwtRules");
      std::optional<YAML::Node> selector = GetMap(r, *spec, "selector", "spec");
      if (selector) {
        RejectUnknownFields(r, *selector, "spec.selector", {"matchLabels"},
                            "a workload selector has only matchLabels");
        ra.selector = GetStringMap(r, *selector, "matchLabels", "spec.selector");
        const YAML::Node at = Get(*selector, "matchLabels").value_or(*selector);
        for (const auto& [key, value] : *ra.selector) {
          const std::string field = absl::StrCat("spec.selector.matchLabels[", key, "]");
          if (key.empty()) r.Error(at, field, "label keys must not be empty");
          if (absl::StrContains(key, "*") || absl::StrContains(value, "*")) {
            r.Error(at, field, "wildcards are not supported in selectors: labels match exactly");
          }
        }
      }
      std::optional<YAML::Node> single = GetMap(r, *spec, "targetRef", "spec");
      std::optional<YAML::Node> list = GetList(r, *spec, "targetRefs", "spec");
      if (list && list->size() == 0) list.reset();
      if (single) {
        ra.target_refs.push_back(ParseTargetRef(r, *single, "spec.targetRef"));
        CheckAuthnTargetRef(r, *single, ra.target_refs.back(), "spec.targetRef");
      }
      if (list) {
        for (size_t i = 0; i < list->size(); ++i) {
          const std::string path = absl::StrCat("spec.targetRefs[", i, "]");
          ra.target_refs.push_back(ParseTargetRef(r, (*list)[i], path));
          CheckAuthnTargetRef(r, (*list)[i], ra.target_refs.back(), path);
        }
      }
      if ((selector ? 1 : 0) + (single ? 1 : 0) + (list ? 1 : 0) > 1) {
        r.Error(*spec, "spec",
                "only one of selector, targetRef and targetRefs may be set (as in istiod)");
      }
      if (auto rules = GetList(r, *spec, "jwtRules", "spec")) {
        for (size_t i = 0; i < rules->size(); ++i) {
          ra.jwt_rules.push_back(
              ParseJwtRule(r, (*rules)[i], *rules, absl::StrCat("spec.jwtRules[", i, "]")));
        }
      }
    }
    Finish(r, who.id, std::move(ra));
  }

  static void CheckAuthnTargetRef(Reporter& r, const YAML::Node& n, const authz::TargetRef& ref,
                                  const std::string& path) {
    for (const authn::TargetRefProblem& p : authn::TargetRefProblems(ref)) {
      r.Error(n, p.field.empty() ? path : absl::StrCat(path, ".", p.field), p.message);
    }
  }

  // An HTTP header name as istiod's ValidateStrictHTTPHeaderName takes it: an RFC 7230 token.
  static bool IsHeaderName(std::string_view name) {
    if (name.empty()) return false;
    for (char c : name) {
      const bool ok = absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
                      std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
      if (!ok) return false;
    }
    return true;
  }

  static authn::JwtRule ParseJwtRule(Reporter& r, const YAML::Node& n, const YAML::Node& list,
                                     const std::string& path) {
    authn::JwtRule rule;
    if (!n.IsMap()) {
      r.Error(n.IsNull() ? list : n, path,
              absl::StrCat("must be a map with at least an issuer, not ", YamlTypeName(n)));
      return rule;
    }
    RejectUnknownFields(r, n, path,
                        {"issuer", "audiences", "jwksUri", "jwks", "fromHeaders", "fromParams",
                         "fromCookies", "outputPayloadToHeader", "forwardOriginalToken",
                         "outputClaimToHeaders", "timeout", "spaceDelimitedClaims"},
                        "see the JWTRule fields of Istio's RequestAuthentication reference");
    if (auto issuer = GetString(r, n, "issuer", path)) {
      rule.issuer = *issuer;
      const bool bad = std::any_of(issuer->begin(), issuer->end(), [](char c) {
        return static_cast<unsigned char>(c) <= ' ' || c == 0x7f;
      });
      if (issuer->empty()) {
        r.Error(*Get(n, "issuer"), path + ".issuer", "must not be empty");
      } else if (bad) {
        r.Error(*Get(n, "issuer"), path + ".issuer",
                absl::StrCat("'", *issuer,
                             "' contains whitespace or control characters; a token's "
                             "iss could never equal it"));
      }
    } else if (!Get(n, "issuer")) {
      r.Error(n, path + ".issuer", "is required (istiod: issuer must be set)");
    }
    rule.audiences = GetStringList(r, n, "audiences", path);
    for (size_t i = 0; i < rule.audiences.size(); ++i) {
      if (rule.audiences[i].empty()) {
        r.Error(*Get(n, "audiences"), absl::StrCat(path, ".audiences[", i, "]"),
                "must not be empty");
      }
    }
    const std::optional<std::string> uri = GetString(r, n, "jwksUri", path);
    const std::optional<std::string> jwks = GetString(r, n, "jwks", path);
    if (uri && !uri->empty()) {
      rule.jwks_uri = *uri;
      const bool https = absl::StartsWith(*uri, "https://");
      const bool http = absl::StartsWith(*uri, "http://");
      const std::string_view rest = std::string_view(*uri).substr(https ? 8 : (http ? 7 : 0));
      if (!https && !http) {
        r.Error(*Get(n, "jwksUri"), path + ".jwksUri",
                absl::StrCat("'", *uri, "' is not an http:// or https:// URL"));
      } else if (rest.empty() || rest[0] == '/' || rest.find_first_of(" \t\r\n") != rest.npos) {
        r.Error(*Get(n, "jwksUri"), path + ".jwksUri",
                absl::StrCat("'", *uri, "' has no host or contains whitespace"));
      }
    }
    if (jwks && !jwks->empty()) {
      rule.jwks = *jwks;
      absl::StatusOr<authn::Jwks> keys = authn::ParseJwks(*jwks);
      if (!keys.ok()) {
        r.Error(*Get(n, "jwks"), path + ".jwks", std::string(keys.status().message()));
      } else {
        for (const std::string& skipped : keys->skipped) {
          r.Warning(*Get(n, "jwks"), path + ".jwks",
                    absl::StrCat(skipped, "; that key is not used"));
        }
      }
    }
    if (!rule.jwks.empty() && !rule.jwks_uri.empty()) {
      r.Error(n, path, "set jwks or jwksUri, not both");
    }
    if (auto headers = GetList(r, n, "fromHeaders", path)) {
      for (size_t i = 0; i < headers->size(); ++i) {
        const std::string entry = absl::StrCat(path, ".fromHeaders[", i, "]");
        const YAML::Node h = (*headers)[i];
        if (!h.IsMap()) {
          r.Error(h.IsNull() ? *headers : h, entry,
                  absl::StrCat("must be a map {name, prefix}, not ", YamlTypeName(h)));
          continue;
        }
        RejectUnknownFields(r, h, entry, {"name", "prefix"},
                            "a header location has name and prefix");
        authn::HeaderLocation loc;
        loc.name = GetString(r, h, "name", entry).value_or("");
        loc.prefix = GetString(r, h, "prefix", entry).value_or("");
        if (loc.name.empty()) {
          r.Error(h, entry + ".name", "is required (the header carrying the token)");
        } else if (!IsHeaderName(loc.name)) {
          r.Error(*Get(h, "name"), entry + ".name",
                  absl::StrCat("'", loc.name, "' is not a valid HTTP header name"));
        }
        rule.from_headers.push_back(std::move(loc));
      }
    }
    rule.from_params = GetStringList(r, n, "fromParams", path);
    for (size_t i = 0; i < rule.from_params.size(); ++i) {
      if (rule.from_params[i].empty()) {
        r.Error(*Get(n, "fromParams"), absl::StrCat(path, ".fromParams[", i, "]"),
                "must not be empty");
      }
    }
    rule.from_cookies = GetStringList(r, n, "fromCookies", path);
    for (size_t i = 0; i < rule.from_cookies.size(); ++i) {
      if (rule.from_cookies[i].empty()) {
        r.Error(*Get(n, "fromCookies"), absl::StrCat(path, ".fromCookies[", i, "]"),
                "must not be empty");
      }
    }
    if (auto header = GetString(r, n, "outputPayloadToHeader", path); header && !header->empty()) {
      rule.output_payload_to_header = *header;
      if (!IsHeaderName(*header)) {
        r.Error(*Get(n, "outputPayloadToHeader"), path + ".outputPayloadToHeader",
                absl::StrCat("'", *header, "' is not a valid HTTP header name"));
      }
    }
    rule.forward_original_token = GetBool(r, n, "forwardOriginalToken", path).value_or(false);
    if (auto outputs = GetList(r, n, "outputClaimToHeaders", path)) {
      for (size_t i = 0; i < outputs->size(); ++i) {
        const std::string entry = absl::StrCat(path, ".outputClaimToHeaders[", i, "]");
        const YAML::Node o = (*outputs)[i];
        if (!o.IsMap()) {
          r.Error(o.IsNull() ? *outputs : o, entry,
                  absl::StrCat("must be a map {header, claim}, not ", YamlTypeName(o)));
          continue;
        }
        RejectUnknownFields(r, o, entry, {"header", "claim"}, "an output has header and claim");
        authn::ClaimToHeader c;
        c.header = GetString(r, o, "header", entry).value_or("");
        c.claim = GetString(r, o, "claim", entry).value_or("");
        if (c.header.empty() || c.claim.empty()) {
          r.Error(o, entry, "header and claim must both be non-empty (as in istiod)");
        } else if (!IsHeaderName(c.header)) {
          r.Error(*Get(o, "header"), entry + ".header",
                  absl::StrCat("'", c.header, "' is not a valid HTTP header name"));
        }
        rule.output_claim_to_headers.push_back(std::move(c));
      }
    }
    if (auto timeout = GetDuration(r, n, "timeout", path)) {
      // Whole nanoseconds, as the control channel carries it (a decimal fraction of a second
      // can convert to a quarter of one).
      const absl::Duration whole = absl::Trunc(*timeout, absl::Nanoseconds(1));
      if (whole <= absl::ZeroDuration()) {
        r.Error(*Get(n, "timeout"), path + ".timeout", "must be longer than 0s");
      } else if (whole >= authn::kJwksFetchTimeoutLimit) {
        r.Error(*Get(n, "timeout"), path + ".timeout",
                absl::StrCat("must be shorter than ",
                             absl::ToInt64Seconds(authn::kJwksFetchTimeoutLimit),
                             "s (2^32 s, Envoy's limit)"));
      } else {
        rule.timeout = whole;
      }
    }
    rule.space_delimited_claims = GetStringList(r, n, "spaceDelimitedClaims", path);
    return rule;
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

std::string YamlParseError(const YAML::Exception& e) {
  if (const auto* deep = dynamic_cast<const YAML::DeepRecursion*>(&e)) {
    return absl::StrCat("nesting too deep: maps and lists reach ", deep->depth(),
                        " levels here, the parser takes at most ", deep->depth() - 1,
                        " (a Kubernetes or Istio object needs a few dozen at most)");
  }
  return absl::StrCat("not valid YAML: ", e.msg);
}

std::string YamlTypeName(const YAML::Node& n) {
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

}  // namespace ambit::config
