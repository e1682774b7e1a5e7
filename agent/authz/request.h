#pragma once

// What the enforcement point knows about one connection (L4, the node tunnel) or one HTTP request
// (L7, a waypoint or other HTTP proxy). Plain value types, filled by the caller; the engine only
// reads them. Thread-compatible.

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "agent/common/ip_address.h"

namespace ambit::authz {

// Where the decision is made. At L4 HTTP attributes are unknown and rules are reduced the way
// ztunnel reduces them (see engine.h).
enum class Layer { kL4, kL7 };

// "L4" or "L7".
absl::string_view LayerName(Layer layer);

// A JSON value as found in JWT claims: null, string, number, bool, list or object (nested).
class ClaimValue {
 public:
  enum class Kind { kNull, kString, kNumber, kBool, kList, kObject };
  using List = std::vector<ClaimValue>;
  using Object = std::map<std::string, ClaimValue>;

  ClaimValue() = default;
  static ClaimValue String(std::string value);
  static ClaimValue Number(double value);
  static ClaimValue Bool(bool value);
  static ClaimValue ListOf(List values);
  static ClaimValue ObjectOf(Object members);

  Kind kind() const { return kind_; }
  // Null when the value is not of that kind.
  const std::string* AsString() const;
  const double* AsNumber() const;
  const List* AsList() const;
  const Object* AsObject() const;
  // The member `key` of an object; null when this is not an object or has no such member.
  const ClaimValue* Find(absl::string_view key) const;
  // Compact JSON, for explanations and JWT claim headers. Whole numbers print exactly (an `exp`
  // of 1800003600 stays 1800003600), others with 17 significant digits.
  std::string ToString() const;

  friend bool operator==(const ClaimValue&, const ClaimValue&) = default;

 private:
  Kind kind_ = Kind::kNull;
  std::string string_;
  double number_ = 0;
  bool bool_ = false;
  List list_;
  Object object_;
};

// `name` in ASCII lower case: `name` itself when it already is (header names mostly are), else
// a lower-cased copy kept in `*storage`.
absl::string_view AsciiLowerView(absl::string_view name, std::string* storage);

// HTTP request headers. Names are case-insensitive (stored in lower case); a repeated header is
// merged into one value joined by "," as Istio does before authorization.
class HeaderMap {
 public:
  HeaderMap() = default;
  HeaderMap(std::initializer_list<std::pair<std::string, std::string>> headers);

  void Add(absl::string_view name, absl::string_view value);
  // Null when absent.
  const std::string* Find(absl::string_view name) const;
  using Entries = std::map<std::string, std::string, std::less<>>;
  const Entries& entries() const { return headers_; }

  friend bool operator==(const HeaderMap&, const HeaderMap&) = default;

 private:
  Entries headers_;  // names lower-cased
};

// spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
struct SpiffeId {
  std::string trust_domain;
  std::string namespace_name;
  std::string service_account;
};

// Nullopt unless `uri` has exactly that shape.
std::optional<SpiffeId> ParseSpiffeId(absl::string_view uri);

// The authenticated JWT of a request (after RequestAuthentication validated it).
struct JwtAuth {
  // "<iss>/<sub>". The `iss` and `sub` claims take precedence when present as strings; otherwise
  // this is split at its last "/".
  std::string principal;
  std::vector<std::string> audiences;    // empty: taken from the `aud` claim (string or list)
  std::optional<std::string> presenter;  // nullopt: taken from the `azp` claim
  ClaimValue claims;                     // the payload, normally an object

  friend bool operator==(const JwtAuth&, const JwtAuth&) = default;
};

struct Request {
  Layer layer = Layer::kL4;

  // The peer's SPIFFE ID from mTLS/HBONE, e.g. spiffe://cluster.local/ns/bar/sa/sleep. Empty for
  // plaintext: principals/namespaces/serviceAccounts then never match and their not* forms do.
  std::string source_principal;
  std::optional<IpAddress> source_ip;
  std::optional<IpAddress> remote_ip;  // X-Forwarded-For / PROXY client; nullopt: source_ip
  std::optional<IpAddress> destination_ip;
  uint16_t destination_port = 0;
  std::string sni;  // empty: none

  // L7 only.
  std::string method;
  std::string path;  // as received, query included; normalized by the engine
  std::string host;  // :authority / Host
  HeaderMap headers;
  std::optional<JwtAuth> auth;  // nullopt: no (valid) JWT

  // Derived from source_principal; empty when it is not spiffe://<td>/ns/<ns>/sa/<sa>.
  std::string SourceNamespace() const;
  std::string SourceServiceAccount() const;
};

}  // namespace ambit::authz
