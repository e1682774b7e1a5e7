#pragma once

// SPIFFE IDs (github.com/spiffe/spiffe, standards/SPIFFE-ID.md) and Istio's
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> form of them.
//
// Parsing is strict: an ID is accepted only if it satisfies every MUST of the specification, and a
// rejected ID gets an InvalidArgument status naming the first problem and its byte position.
// Everything here is a pure function over values: thread-safe.

#include <cstddef>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ambit::identity {

// Istio's default trust domain, used when mesh config names none.
inline constexpr absl::string_view kDefaultTrustDomain = "cluster.local";

// Limits of SPIFFE-ID.md section 2.3 (the whole ID) and RFC 3986 (the host, i.e. trust domain).
inline constexpr size_t kMaxSpiffeIdLength = 2048;
inline constexpr size_t kMaxTrustDomainLength = 255;

struct SpiffeId {
  std::string trust_domain;  // e.g. "cluster.local"
  std::string path;          // "" or "/a/b": segments, each preceded by '/'

  // "spiffe://" + trust_domain + path.
  std::string ToString() const;

  friend bool operator==(const SpiffeId&, const SpiffeId&) = default;
};

// Parses and validates `text` as a SPIFFE ID. On failure: InvalidArgument whose message says what
// is wrong and where, e.g. "trust domain contains invalid character 'A' at position 9: only
// lowercase letters, digits, '.', '-' and '_' are allowed". Positions are 0-based byte offsets.
absl::StatusOr<SpiffeId> ParseSpiffeId(absl::string_view text);

// Validates a bare trust domain name (as found in mesh config), with the rules ParseSpiffeId
// applies to the authority. Positions in the message are offsets into `trust_domain`.
absl::Status ValidateTrustDomain(absl::string_view trust_domain);

struct IstioIdentity {
  std::string trust_domain;
  std::string namespace_name;
  std::string service_account;

  friend bool operator==(const IstioIdentity&, const IstioIdentity&) = default;
};

// The namespace and service account of an ID of Istio's form spiffe://<td>/ns/<ns>/sa/<sa>;
// nullopt for any other path shape (no path, extra segments, other keys, empty values).
std::optional<IstioIdentity> AsIstioIdentity(const SpiffeId& id);

// "spiffe://<td>/ns/<ns>/sa/<sa>". Does not validate; pass the result through ParseSpiffeId when
// the parts come from untrusted input.
std::string IstioSpiffeId(absl::string_view td, absl::string_view ns, absl::string_view sa);

}  // namespace ambit::identity
