#include "agent/node/ext_authz_providers.h"

#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "agent/mesh/wire.h"

namespace ambit::node {
namespace {

// RFC 7230 token characters (a header name).
bool IsToken(absl::string_view name) {
  if (name.empty()) return false;
  for (char c : name) {
    if (absl::ascii_isalnum(static_cast<unsigned char>(c))) continue;
    if (absl::string_view("!#$%&'*+-.^_`|~").find(c) != absl::string_view::npos) continue;
    return false;
  }
  return true;
}

bool HasCrLfNul(absl::string_view value) {
  return value.find_first_of(absl::string_view("\r\n\0", 3)) != absl::string_view::npos;
}

// Lower-cases `names`, or says which one is no header name.
absl::Status HeaderNames(absl::string_view field, const std::vector<std::string>& in,
                         std::vector<std::string>* out) {
  for (size_t i = 0; i < in.size(); ++i) {
    if (!IsToken(in[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, "[", i, "]: '", in[i], "' is not an HTTP header name"));
    }
    out->push_back(absl::AsciiStrToLower(in[i]));
  }
  return absl::OkStatus();
}

// The settings of `p` the waypoint uses, with Istio's defaults; an error names the field it
// cannot use.
absl::Status FillSettings(const state::ExtensionProvider& p, authz::ExtAuthzProvider* out) {
  if (p.timeout.has_value()) {
    const absl::Duration t = absl::Trunc(*p.timeout, absl::Nanoseconds(1));
    if (t <= absl::ZeroDuration() || t >= mesh::kExtAuthzTimeoutLimit) {
      return absl::InvalidArgumentError(absl::StrCat("timeout: ", absl::FormatDuration(*p.timeout),
                                                     " is not longer than 0s and shorter "
                                                     "than 2^32 s"));
    }
    out->timeout = t;
  }
  out->fail_open = p.fail_open;
  if (p.status_on_error.has_value()) {
    if (*p.status_on_error < 100 || *p.status_on_error > 599) {
      return absl::InvalidArgumentError(
          absl::StrCat("statusOnError: ", *p.status_on_error, " is not an HTTP status"));
    }
    out->status_on_error = *p.status_on_error;
  }
  if (p.include_request_body_in_check.has_value()) {
    const state::ExtAuthzRequestBody& b = *p.include_request_body_in_check;
    if (b.max_request_bytes > mesh::kMaxExtAuthzRequestBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "includeRequestBodyInCheck.maxRequestBytes: ", b.max_request_bytes, " is over ",
          mesh::kMaxExtAuthzRequestBytes, " (8 MiB, the most a waypoint buffers for a check)"));
    }
    out->include_request_body =
        authz::ExtAuthzBodyOptions{b.max_request_bytes, b.allow_partial_message, b.pack_as_bytes};
  }
  if (HasCrLfNul(p.path_prefix)) {
    return absl::InvalidArgumentError("pathPrefix: holds CR, LF or NUL");
  }
  out->path_prefix = p.path_prefix;
  if (auto s = HeaderNames("includeRequestHeadersInCheck", p.include_request_headers_in_check,
                           &out->include_request_headers);
      !s.ok()) {
    return s;
  }
  std::set<std::string> added;
  for (const auto& [name, value] : p.include_additional_headers_in_check) {
    if (!IsToken(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("includeAdditionalHeadersInCheck: '", name, "' is not an HTTP header name"));
    }
    if (HasCrLfNul(value)) {
      return absl::InvalidArgumentError(absl::StrCat("includeAdditionalHeadersInCheck.", name,
                                                     ": the value holds CR, LF or NUL"));
    }
    std::string lower = absl::AsciiStrToLower(name);
    if (!added.insert(lower).second) {
      return absl::InvalidArgumentError(absl::StrCat("includeAdditionalHeadersInCheck: '", name,
                                                     "' is named twice (names are case-blind)"));
    }
    out->include_additional_headers.emplace_back(std::move(lower), value);
  }
  if (auto s = HeaderNames("headersToUpstreamOnAllow", p.headers_to_upstream_on_allow,
                           &out->headers_to_upstream_on_allow);
      !s.ok()) {
    return s;
  }
  if (auto s = HeaderNames("headersToDownstreamOnDeny", p.headers_to_downstream_on_deny,
                           &out->headers_to_downstream_on_deny);
      !s.ok()) {
    return s;
  }
  return HeaderNames("headersToDownstreamOnAllow", p.headers_to_downstream_on_allow,
                     &out->headers_to_downstream_on_allow);
}

}  // namespace

absl::StatusOr<std::string> ResolveProviderService(
    absl::string_view service, const std::map<std::string, state::Service>& services,
    absl::string_view cluster_domain) {
  absl::string_view ns_part;
  absl::string_view host = service;
  if (size_t slash = service.find('/'); slash != absl::string_view::npos) {
    ns_part = service.substr(0, slash);
    host = service.substr(slash + 1);
    if (ns_part == "*" || ns_part == ".") ns_part = {};  // any namespace
  }
  std::string lower = absl::AsciiStrToLower(host);
  absl::string_view h = lower;
  if (absl::EndsWith(h, ".")) h.remove_suffix(1);  // an absolute name
  const std::string fqdn_suffix = absl::StrCat(".svc.", cluster_domain);
  if (absl::EndsWith(h, fqdn_suffix)) {
    h.remove_suffix(fqdn_suffix.size());
  } else if (absl::EndsWith(h, ".svc")) {
    h.remove_suffix(4);
  }
  std::vector<absl::string_view> labels = absl::StrSplit(h, '.');
  std::string name, ns;
  if (labels.size() == 2) {
    name = std::string(labels[0]);
    ns = std::string(labels[1]);
    if (!ns_part.empty() && ns_part != ns) {
      return absl::NotFoundError(absl::StrCat("'", service, "' names namespace ", ns_part,
                                              " but hostname ", host, " is a Service of namespace ",
                                              ns, " (istiod finds no such service either)"));
    }
  } else if (labels.size() == 1 && !labels[0].empty()) {
    if (ns_part.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", service, "' is a bare name: write <name>.<namespace>.svc.",
                       cluster_domain, " or <namespace>/<name>"));
    }
    name = std::string(labels[0]);
    ns = std::string(ns_part);
  } else {
    return absl::NotFoundError(absl::StrCat("'", service,
                                            "' is not a Kubernetes Service hostname (<name>."
                                            "<namespace>.svc.",
                                            cluster_domain, ")"));
  }
  const std::string key = absl::StrCat(ns, "/", name);
  if (!services.contains(key)) {
    return absl::NotFoundError(
        absl::StrCat("'", service, "' names no Service (looked up ", key, ")"));
  }
  return key;
}

ExtAuthzProviders ConvertExtAuthzProviders(const state::ClusterState& state,
                                           absl::string_view cluster_domain) {
  ExtAuthzProviders out;
  std::set<std::string> names;
  for (const state::ExtensionProvider& p : state.mesh.extension_providers) {
    if (!p.IsExtAuthz()) continue;
    const std::string where = absl::StrCat("extensionProviders ", p.name.empty() ? "''" : p.name);
    // Without a name or a port no policy can name it or nothing can be dialled; the config
    // layer never lets one through, so this is a guard, not a case.
    if (p.name.empty() || p.port == 0 || HasCrLfNul(p.name) || !names.insert(p.name).second) {
      out.warnings.push_back(absl::StrCat(where, ": skipped (",
                                          p.name.empty()       ? "no name"
                                          : p.port == 0        ? "port 0"
                                          : HasCrLfNul(p.name) ? "the name holds CR, LF or NUL"
                                                               : "the name is listed twice",
                                          ")"));
      continue;
    }
    authz::ExtAuthzProvider e;
    e.name = p.name;
    e.kind = p.kind == state::ExtensionProvider::Kind::kEnvoyExtAuthzGrpc
                 ? authz::ExtAuthzProvider::Kind::kGrpc
                 : authz::ExtAuthzProvider::Kind::kHttp;
    e.service = HasCrLfNul(p.service) ? std::string() : p.service;
    e.port = p.port;
    absl::Status settings = FillSettings(p, &e);
    absl::StatusOr<std::string> key =
        ResolveProviderService(p.service, state.services, cluster_domain);
    if (!settings.ok()) {
      // Unusable as written: only what names and reaches it stays, and every check through it
      // is denied with this reason.
      authz::ExtAuthzProvider bare;
      bare.name = e.name;
      bare.kind = e.kind;
      bare.service = e.service;
      bare.port = e.port;
      bare.unresolved = std::string(settings.message());
      out.warnings.push_back(absl::StrCat(where, ": ", settings.message(),
                                          " (CUSTOM policies naming it deny every request)"));
      out.providers.push_back(std::move(bare));
      continue;
    }
    if (key.ok()) {
      e.service_key = *key;
    } else {
      e.unresolved = absl::StrCat("service ", key.status().message());
      out.warnings.push_back(absl::StrCat(where, ": service: ", key.status().message(),
                                          " (CUSTOM policies naming it deny every request)"));
    }
    out.providers.push_back(std::move(e));
  }
  return out;
}

}  // namespace ambit::node
