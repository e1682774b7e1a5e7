#pragma once

// The parsed form of a policy, shared by compile.cc and engine.cc. Not part of the public API.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "agent/authz/model.h"
#include "agent/common/ip_address.h"

namespace ambit::authz::internal {

// A request attribute a field or condition tests.
enum class Attr {
  kSourcePrincipal,       // principals, source.principal
  kSourceNamespace,       // namespaces, source.namespace
  kSourceServiceAccount,  // serviceAccounts, source.serviceAccount
  kSourceTrustDomain,     // trustDomains, source.trustDomain
  kSourceIp,              // ipBlocks, source.ip
  kRemoteIp,              // remoteIpBlocks, remote.ip
  kDestinationIp,         // destination.ip
  kDestinationPort,       // ports, destination.port
  kSni,                   // connection.sni
  kRequestPrincipal,      // requestPrincipals, request.auth.principal
  kRequestAudiences,      // request.auth.audiences
  kRequestPresenter,      // request.auth.presenter
  kRequestClaim,          // request.auth.claims[a][b]
  kRequestHeader,         // request.headers[name]
  kHost,                  // hosts
  kMethod,                // methods
  kPath,                  // paths
};

// The attributes the node tunnel evaluates. Everything else is an HTTP attribute for the L4
// reduction: istiod's ambient conversion also treats remoteIpBlocks, remote.ip and connection.sni
// that way, and so do we.
bool IsL4Attr(Attr attr);

// Exact "abc", prefix "abc*", suffix "*abc", presence "*".
struct StringPattern {
  enum class Kind { kExact, kPrefix, kSuffix, kPresence };
  Kind kind = Kind::kExact;
  std::string text;

  static StringPattern Parse(absl::string_view value);
  // Presence means a non-empty value.
  bool Matches(absl::string_view value, bool ignore_case = false) const;
};

// An Envoy URI template: {*} is one non-empty segment, {**} any remainder (slashes included).
struct PathTemplate {
  struct Token {
    enum class Kind { kLiteral, kSegmentGlob, kTextGlob };
    Kind kind = Kind::kLiteral;
    std::string text;
  };
  std::vector<Token> tokens;

  bool Matches(absl::string_view path) const;
};

struct PathPattern {
  bool is_template = false;
  PathTemplate path_template;
  StringPattern pattern;
};

// requestPrincipals "<iss>/<sub>", split at the last '/', each half its own match.
struct RequestPrincipalPattern {
  StringPattern iss;
  StringPattern sub;
};

struct ServiceAccountPattern {
  std::string namespace_name;
  std::string name;
};

// One field of a source/operation, or the values/notValues of a condition.
struct Field {
  Attr attr = Attr::kSourcePrincipal;
  bool negated = false;
  std::string name;                     // as written: "namespaces", "notPorts", "values", ...
  std::string label;                    // the attribute: "source.namespace", "request.headers[x]"
  std::string header;                   // kRequestHeader: lower-case name
  std::vector<std::string> claim_path;  // kRequestClaim
  std::vector<std::string> raw;         // the values as written
  std::vector<StringPattern> strings;
  std::vector<Cidr> cidrs;
  std::vector<uint16_t> ports;
  std::vector<PathPattern> paths;
  std::vector<RequestPrincipalPattern> request_principals;
  std::vector<ServiceAccountPattern> service_accounts;
};

// One from[] entry, one to[] entry or one when[] condition: all its fields must match.
struct Clause {
  std::string path;  // "from[1]", "to[0]", "when[2]"
  std::vector<Field> fields;
  bool has_l4_field = false;
  std::vector<std::string> http_fields;  // "methods", "request.headers[x-token]", ...
};

struct CompiledRule {
  std::vector<Clause> from;  // one must match (if any)
  std::vector<Clause> to;    // one must match (if any)
  std::vector<Clause> when;  // all must match
  bool uses_http = false;
  std::vector<std::string> http_fields;  // "to[0].methods", "when[1] request.headers[x]"
};

struct CompiledPolicyData {
  Policy policy;
  std::vector<CompiledRule> rules;  // empty: the policy never matches
};

}  // namespace ambit::authz::internal
