#pragma once

// The hook for CUSTOM policies. The engine never calls out: when a CUSTOM policy matches it returns
// a Decision with reason kExtAuthzRequired, the provider name and the verdict that applies if the
// provider allows (`ext_authz->if_allowed`). The enforcement point (the waypoint's authorization
// filter, agent/waypoint/authz_filter.h) asks the provider and folds the answer in with
// ResolveExtAuthz.

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/authz/engine.h"
#include "agent/authz/request.h"

namespace ambit::authz {

// MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationRequestBody.
struct ExtAuthzBodyOptions {
  uint32_t max_request_bytes = 0;      // maxRequestBytes: the most body bytes sent in a check
  bool allow_partial_message = false;  // allowPartialMessage: false answers 413 beyond the max
  bool pack_as_bytes = false;          // packAsBytes (gRPC): raw_body instead of body

  friend bool operator==(const ExtAuthzBodyOptions&, const ExtAuthzBodyOptions&) = default;
};

// One ext_authz extension provider (MeshConfig extensionProviders envoyExtAuthzHttp or
// envoyExtAuthzGrpc) as the waypoint uses it, with Istio's defaults filled in. The config layer
// parses and validates the YAML; ambitd resolves `service` to a Service of the snapshot.
struct ExtAuthzProvider {
  enum class Kind { kHttp, kGrpc };

  std::string name;
  Kind kind = Kind::kHttp;
  std::string service;  // as written: "[<namespace>/]<hostname>"
  // The Service `service` names, "namespace/name"; empty with `unresolved` saying why (then every
  // check fails closed with 403, whatever failOpen says: the configuration is wrong, not the
  // authorizer down).
  std::string service_key;
  std::string unresolved;
  uint16_t port = 0;
  absl::Duration timeout = absl::Seconds(600);  // Istio's default
  bool fail_open = false;
  uint32_t status_on_error = 403;  // statusOnError; Istio's default 403
  std::optional<ExtAuthzBodyOptions> include_request_body;
  // envoyExtAuthzHttp only. Header names are lower case.
  std::string path_prefix;
  std::vector<std::string> include_request_headers;  // allowed_headers: exact, pre*, *suf
  std::vector<std::pair<std::string, std::string>> include_additional_headers;  // headers_to_add
  std::vector<std::string> headers_to_upstream_on_allow;    // allowed_upstream_headers
  std::vector<std::string> headers_to_downstream_on_deny;   // allowed_client_headers
  std::vector<std::string> headers_to_downstream_on_allow;  // allowed_client_headers_on_success

  friend bool operator==(const ExtAuthzProvider&, const ExtAuthzProvider&) = default;
};

// Folds a provider's answer into a pending decision. A decision that does not need ext_authz is
// returned unchanged. Fails closed: a provider error denies (Istio's default failOpen: false).
Decision ResolveExtAuthz(Decision pending, const absl::StatusOr<bool>& provider_allowed);

}  // namespace ambit::authz
