// `ambitctl policy check`: the offline authorization checker (issue 5, "Explain it"). It loads a
// config directory the way ambitd does (config::DirectoryLoader), builds the same authz::Engine
// the node tunnel and waypoints use, and explains the decision for one request described in YAML.
// No running agent is needed.

#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/admin/explain.h"
#include "agent/authn/authenticator.h"
#include "agent/authn/signature.h"
#include "agent/authz/engine.h"
#include "agent/authz/peer_authentication.h"
#include "agent/authz/request.h"
#include "agent/cli/commands.h"
#include "agent/common/status.h"
#include "agent/config/directory_loader.h"
#include "agent/config/kube_yaml.h"
#include "agent/config/load_result.h"

namespace ambit::cli {
namespace {

// What the request file describes.
struct CheckInput {
  authz::Workload target;
  authz::Request request;
};

// Reads the request file and collects every problem with it, each naming the field and line.
class RequestParser {
 public:
  explicit RequestParser(std::string file) : file_(std::move(file)) {}

  absl::StatusOr<CheckInput> Parse(const std::string& content) {
    YAML::Node doc;
    try {
      doc = YAML::Load(content);
    } catch (const YAML::Exception& e) {
      std::string hint;
      // yaml-cpp (like YAML 1.1 parsers) stops at a '?' inside an unquoted value in {...}
      // style, which an unquoted query string such as `path: /get?x=1` runs into.
      if (!e.mark.is_null() && Char(content, e.mark.line, e.mark.column) == '?') {
        hint = "; quote values that contain '?', e.g. path: \"/get?x=1\"";
      }
      return absl::InvalidArgumentError(absl::StrCat(file_, ":", e.mark.line + 1, ":",
                                                     e.mark.column + 1, ": ",
                                                     config::YamlParseError(e), hint));
    }
    CheckInput in;
    try {
      ParseDocument(doc, &in);
    } catch (const YAML::Exception& e) {
      Error(doc, "", absl::StrCat("cannot read this request: ", e.what()));
    }
    if (!errors_.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad request file:\n  ", absl::StrJoin(errors_, "\n  ")));
    }
    return in;
  }

 private:
  // The character at a 0-based line and column of text, or '\0'.
  static char Char(const std::string& text, int line, int column) {
    size_t pos = 0;
    for (int l = 0; l < line; ++l) {
      pos = text.find('\n', pos);
      if (pos == std::string::npos) return '\0';
      ++pos;
    }
    pos += static_cast<size_t>(column);
    return pos < text.size() ? text[pos] : '\0';
  }

  void Error(const YAML::Node& at, const std::string& field, const std::string& message) {
    std::string where = file_;
    if (at.IsDefined() && !at.Mark().is_null()) absl::StrAppend(&where, ":", at.Mark().line + 1);
    errors_.push_back(field.empty() ? absl::StrCat(where, ": ", message)
                                    : absl::StrCat(where, ": field ", field, ": ", message));
  }

  // The value of key in map; nullopt when absent or null.
  static std::optional<YAML::Node> Get(const YAML::Node& map, const std::string& key) {
    if (!map.IsMap()) return std::nullopt;
    for (auto it = map.begin(); it != map.end(); ++it) {
      if (it->first.IsScalar() && it->first.Scalar() == key) {
        if (it->second.IsNull()) return std::nullopt;
        return it->second;
      }
    }
    return std::nullopt;
  }

  void Known(const YAML::Node& map, const std::string& path, const std::set<std::string>& known) {
    if (!map.IsMap()) return;
    for (auto it = map.begin(); it != map.end(); ++it) {
      const std::string key = it->first.IsScalar() ? it->first.Scalar() : "?";
      if (!known.contains(key)) {
        Error(it->first, path.empty() ? key : absl::StrCat(path, ".", key),
              absl::StrCat("unknown field; expected one of: ", absl::StrJoin(known, ", ")));
      }
    }
  }

  std::optional<YAML::Node> Map(const YAML::Node& parent, const std::string& key,
                                const std::string& path) {
    auto v = Get(parent, key);
    if (!v) return std::nullopt;
    if (!v->IsMap()) {
      Error(*v, path, absl::StrCat("must be a map, not ", config::YamlTypeName(*v)));
      return std::nullopt;
    }
    return v;
  }

  std::optional<std::string> String(const YAML::Node& parent, const std::string& key,
                                    const std::string& path) {
    auto v = Get(parent, key);
    if (!v) return std::nullopt;
    if (!v->IsScalar()) {
      Error(*v, path, absl::StrCat("must be a string, not ", config::YamlTypeName(*v)));
      return std::nullopt;
    }
    return v->Scalar();
  }

  std::optional<IpAddress> Ip(const YAML::Node& parent, const std::string& key,
                              const std::string& path) {
    auto text = String(parent, key, path);
    if (!text) return std::nullopt;
    absl::StatusOr<IpAddress> ip = IpAddress::Parse(*text);
    if (!ip.ok()) {
      Error(*Get(parent, key), path, absl::StrCat("'", *text, "' is not an IPv4 or IPv6 address"));
      return std::nullopt;
    }
    return *ip;
  }

  std::map<std::string, std::string> StringMap(const YAML::Node& parent, const std::string& key,
                                               const std::string& path) {
    std::map<std::string, std::string> out;
    auto v = Map(parent, key, path);
    if (!v) return out;
    for (auto it = v->begin(); it != v->end(); ++it) {
      const std::string k = it->first.IsScalar() ? it->first.Scalar() : "?";
      if (it->second.IsNull()) {
        out[k] = "";
      } else if (it->second.IsScalar()) {
        out[k] = it->second.Scalar();
      } else {
        Error(it->second, absl::StrCat(path, "[", k, "]"),
              absl::StrCat("must be a string, not ", config::YamlTypeName(it->second)));
      }
    }
    return out;
  }

  // A JWT claim: YAML's plain true/false/numbers/null keep their JSON type (so that, as in Istio,
  // they never match a string condition); quoted scalars are strings.
  static authz::ClaimValue Claim(const YAML::Node& n) {
    if (n.IsMap()) {
      authz::ClaimValue::Object members;
      for (auto it = n.begin(); it != n.end(); ++it) {
        members[it->first.IsScalar() ? it->first.Scalar() : "?"] = Claim(it->second);
      }
      return authz::ClaimValue::ObjectOf(std::move(members));
    }
    if (n.IsSequence()) {
      authz::ClaimValue::List items;
      for (size_t i = 0; i < n.size(); ++i) items.push_back(Claim(n[i]));
      return authz::ClaimValue::ListOf(std::move(items));
    }
    if (!n.IsScalar()) return authz::ClaimValue();
    const std::string& s = n.Scalar();
    if (n.Tag() == "!") return authz::ClaimValue::String(s);  // quoted
    if (s == "null" || s == "Null" || s == "NULL" || s == "~") return authz::ClaimValue();
    if (s == "true" || s == "True" || s == "TRUE") return authz::ClaimValue::Bool(true);
    if (s == "false" || s == "False" || s == "FALSE") return authz::ClaimValue::Bool(false);
    double number = 0;
    if (!s.empty() &&
        (absl::ascii_isdigit(static_cast<unsigned char>(s[0])) || s[0] == '-' || s[0] == '+' ||
         s[0] == '.') &&
        absl::SimpleAtod(s, &number)) {
      return authz::ClaimValue::Number(number);
    }
    return authz::ClaimValue::String(s);
  }

  void ParseDocument(const YAML::Node& doc, CheckInput* in) {
    if (!doc.IsMap()) {
      Error(doc, "",
            absl::StrCat("expected a map with enforcement, target, source, destination (and for "
                         "L7 http, auth), found ",
                         config::YamlTypeName(doc)));
      return;
    }
    Known(doc, "", {"enforcement", "target", "source", "destination", "http", "auth"});
    authz::Request& req = in->request;
    req.layer = authz::Layer::kL4;
    if (auto e = String(doc, "enforcement", "enforcement")) {
      if (*e == "L4") {
        req.layer = authz::Layer::kL4;
      } else if (*e == "L7") {
        req.layer = authz::Layer::kL7;
      } else {
        Error(*Get(doc, "enforcement"), "enforcement",
              absl::StrCat("'", *e, "' is not L4 (the node tunnel) or L7 (an HTTP proxy)"));
      }
    }
    const bool l7 = req.layer == authz::Layer::kL7;

    if (auto target = Map(doc, "target", "target")) {
      Known(*target, "target", {"namespace", "labels", "waypoint"});
      auto ns = String(*target, "namespace", "target.namespace");
      if (!ns || ns->empty()) {
        Error(*target, "target.namespace", "is required: the destination workload's namespace");
      } else {
        in->target.namespace_name = *ns;
      }
      in->target.labels = StringMap(*target, "labels", "target.labels");
      if (auto w = Map(*target, "waypoint", "target.waypoint")) {
        Known(*w, "target.waypoint", {"name", "namespace", "services"});
        authz::WaypointRef ref;
        ref.name = String(*w, "name", "target.waypoint.name").value_or("");
        if (ref.name.empty()) Error(*w, "target.waypoint.name", "is required");
        ref.namespace_name = String(*w, "namespace", "target.waypoint.namespace")
                                 .value_or(in->target.namespace_name);
        if (auto services = Get(*w, "services")) {
          if (!services->IsSequence()) {
            Error(*services, "target.waypoint.services",
                  absl::StrCat("must be a list of {name, namespace}, not ",
                               config::YamlTypeName(*services)));
          } else {
            for (size_t i = 0; i < services->size(); ++i) {
              const std::string path = absl::StrCat("target.waypoint.services[", i, "]");
              const YAML::Node s = (*services)[i];
              if (!s.IsMap()) {
                Error(
                    s, path,
                    absl::StrCat("must be a map {name, namespace}, not ", config::YamlTypeName(s)));
                continue;
              }
              Known(s, path, {"name", "namespace"});
              authz::ServiceRef svc;
              svc.name = String(s, "name", path + ".name").value_or("");
              if (svc.name.empty()) Error(s, path + ".name", "is required");
              svc.namespace_name =
                  String(s, "namespace", path + ".namespace").value_or(in->target.namespace_name);
              ref.services.push_back(std::move(svc));
            }
          }
        }
        in->target.waypoint = std::move(ref);
      }
    } else {
      Error(doc, "target", "is required, e.g. target: {namespace: foo, labels: {app: httpbin}}");
    }

    if (auto source = Map(doc, "source", "source")) {
      Known(*source, "source", {"principal", "ip", "remoteIp"});
      if (auto p = String(*source, "principal", "source.principal")) {
        if (!absl::StartsWith(*p, "spiffe://") || p->size() == 9) {
          Error(*Get(*source, "principal"), "source.principal",
                absl::StrCat("'", *p,
                             "' is not a SPIFFE ID such as spiffe://cluster.local/ns/bar/sa/sleep "
                             "(leave it out or null for a plaintext client)"));
        } else {
          req.source_principal = *p;
        }
      }
      req.source_ip = Ip(*source, "ip", "source.ip");
      req.remote_ip = Ip(*source, "remoteIp", "source.remoteIp");
    }

    if (auto dest = Map(doc, "destination", "destination")) {
      Known(*dest, "destination", {"ip", "port", "sni"});
      req.destination_ip = Ip(*dest, "ip", "destination.ip");
      if (auto port = Get(*dest, "port")) {
        uint32_t number = 0;
        if (!port->IsScalar() || !absl::SimpleAtoi(port->Scalar(), &number) || number < 1 ||
            number > 65535) {
          Error(*port, "destination.port",
                absl::StrCat(config::YamlTypeName(*port), " is not a port number (1 to 65535)"));
        } else {
          req.destination_port = static_cast<uint16_t>(number);
        }
      } else {
        Error(*dest, "destination.port", "is required, e.g. destination: {port: 8080}");
      }
      req.sni = String(*dest, "sni", "destination.sni").value_or("");
    } else {
      Error(doc, "destination", "is required, e.g. destination: {ip: 198.18.1.7, port: 8080}");
    }

    if (auto http = Map(doc, "http", "http")) {
      if (!l7) {
        Error(*http, "http",
              "is only for enforcement: L7 (the node tunnel, L4, sees no HTTP); remove it or "
              "set enforcement: L7");
      }
      Known(*http, "http", {"host", "method", "path", "headers"});
      req.host = String(*http, "host", "http.host").value_or("");
      req.method = String(*http, "method", "http.method").value_or("");
      req.path = String(*http, "path", "http.path").value_or("");
      if (l7 && req.method.empty()) Error(*http, "http.method", "is required, e.g. GET");
      if (l7 && req.path.empty()) Error(*http, "http.path", "is required, e.g. /get");
      if (auto headers = Map(*http, "headers", "http.headers")) {
        for (auto it = headers->begin(); it != headers->end(); ++it) {
          const std::string name = it->first.IsScalar() ? it->first.Scalar() : "?";
          const std::string path = absl::StrCat("http.headers[", name, "]");
          if (it->second.IsScalar() || it->second.IsNull()) {
            req.headers.Add(name, it->second.IsNull() ? "" : it->second.Scalar());
          } else if (it->second.IsSequence()) {
            for (size_t i = 0; i < it->second.size(); ++i) {
              if (!it->second[i].IsScalar()) {
                Error(it->second[i], path, "a repeated header's values must be strings");
                continue;
              }
              req.headers.Add(name, it->second[i].Scalar());
            }
          } else {
            Error(it->second, path,
                  absl::StrCat("must be a string or a list of strings, not ",
                               config::YamlTypeName(it->second)));
          }
        }
      }
    } else if (l7) {
      Error(doc, "http", "is required for enforcement: L7, e.g. http: {method: GET, path: /}");
    }

    if (auto auth = Map(doc, "auth", "auth")) {
      if (!l7) {
        Error(*auth, "auth",
              "is only for enforcement: L7 (the node tunnel sees no JWT); remove it or set "
              "enforcement: L7");
      }
      Known(*auth, "auth", {"principal", "claims", "audiences", "presenter"});
      authz::JwtAuth jwt;
      jwt.principal = String(*auth, "principal", "auth.principal").value_or("");
      if (auto claims = Get(*auth, "claims")) {
        if (!claims->IsMap()) {
          Error(
              *claims, "auth.claims",
              absl::StrCat("must be a map (the JWT payload), not ", config::YamlTypeName(*claims)));
        } else {
          jwt.claims = Claim(*claims);
        }
      } else {
        jwt.claims = authz::ClaimValue::ObjectOf({});
      }
      if (auto aud = Get(*auth, "audiences")) {
        if (!aud->IsSequence()) {
          Error(*aud, "auth.audiences",
                absl::StrCat("must be a list of strings, not ", config::YamlTypeName(*aud)));
        } else {
          for (size_t i = 0; i < aud->size(); ++i) {
            if ((*aud)[i].IsScalar()) jwt.audiences.push_back((*aud)[i].Scalar());
          }
        }
      }
      if (auto presenter = String(*auth, "presenter", "auth.presenter")) jwt.presenter = *presenter;
      const authz::ClaimValue* iss = jwt.claims.Find("iss");
      const authz::ClaimValue* sub = jwt.claims.Find("sub");
      const bool claims_name_it = iss != nullptr && iss->AsString() != nullptr && sub != nullptr &&
                                  sub->AsString() != nullptr;
      if (jwt.principal.empty() && !claims_name_it) {
        Error(*auth, "auth.principal",
              "is required unless claims has iss and sub, e.g. "
              "principal: https://issuer.example.com/user-1");
      }
      req.auth = std::move(jwt);
    }
  }

  std::string file_;
  std::vector<std::string> errors_;
};

absl::StatusOr<std::string> ReadRequestFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("request file ", path, " is a directory; give a YAML file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot read request file ", path, ": ", std::strerror(errno)));
  }
  // A request is a few lines; the cap keeps a wrong path (a device, a huge log) harmless.
  constexpr size_t kMaxRequestSize = 1 << 20;
  std::string content;
  char buf[8192];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    content.append(buf, static_cast<size_t>(in.gcount()));
    if (content.size() > kMaxRequestSize) {
      return absl::InvalidArgumentError(
          absl::StrCat("request file ", path, " is larger than 1 MiB; is it the right file?"));
    }
  }
  return content;
}

}  // namespace

Value DecisionSummaryValue(const admin::DecisionSummary& s) {
  const bool ext = s.decision == "ext_authz" && !s.provider.empty();
  return Value::Object({
      {"decision", s.decision},
      {"provider", ext ? Value(s.provider) : Value()},
      {"afterExtAuthzAllow", ext ? Value(s.after_ext_authz_allow) : Value()},
      {"policy", s.policy.empty() ? Value() : Value(s.policy)},
      {"reason", s.reason},
      {"mtls", Value::Object({{"mode", s.mtls_mode},
                              {"plaintext", s.mtls_mode == "STRICT" ? "reject" : "accept"},
                              {"refusedPlaintextSource", s.refused_by_strict}})},
  });
}

absl::StatusOr<absl::Time> NowFlag(Context& ctx) {
  std::optional<std::string> text = ctx.flag("now");
  if (!text || text->empty()) return absl::Now();
  int64_t seconds = 0;
  if (!absl::SimpleAtoi(*text, &seconds) || seconds < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--now '", *text, "' is not a time in UNIX seconds, e.g. --now 1800000000"));
  }
  return absl::FromUnixSeconds(seconds);
}

namespace {

// A JWT claim as output: JSON types kept.
Value ClaimOutput(const authz::ClaimValue& c) {
  switch (c.kind()) {
    case authz::ClaimValue::Kind::kNull:
      return Value();
    case authz::ClaimValue::Kind::kString:
      return Value(*c.AsString());
    case authz::ClaimValue::Kind::kBool:
      return Value(c.ToString() == "true");
    case authz::ClaimValue::Kind::kNumber: {
      const double d = *c.AsNumber();
      if (d == static_cast<double>(static_cast<int64_t>(d)) && d < 9.0e15 && d > -9.0e15) {
        return Value(static_cast<int64_t>(d));
      }
      return Value(d);
    }
    case authz::ClaimValue::Kind::kList: {
      Value list = Value::MakeList();
      for (const authz::ClaimValue& item : *c.AsList()) list.Append(ClaimOutput(item));
      return list;
    }
    case authz::ClaimValue::Kind::kObject: {
      Value map = Value::MakeMap();
      for (const auto& [k, v] : *c.AsObject()) map.Set(k, ClaimOutput(v));
      return map;
    }
  }
  return Value();
}

Value AuthnValue(const authn::AuthnResult& r) {
  return Value::Object({
      {"result", r.allowed ? "allow" : "reject"},
      {"status", r.allowed ? Value() : Value(r.http_status)},
      {"reason", r.reason},
      {"principal", r.auth ? Value(r.auth->principal) : Value()},
      {"claims", r.auth ? ClaimOutput(r.auth->claims) : Value()},
  });
}

absl::Status RunCheck(Context& ctx) {
  std::optional<std::string> config_dir = ctx.flag("config");
  std::optional<std::string> request_file = ctx.flag("request");
  if (!config_dir || config_dir->empty() || !request_file || request_file->empty()) {
    ctx.err() << "ambitctl policy check: --config DIR and --request FILE are required (see "
                 "ambitctl policy check --help)\n";
    ctx.set_exit_code(kExitUsage);
    return absl::OkStatus();
  }
  struct stat st;
  if (::stat(config_dir->c_str(), &st) != 0) {
    return absl::NotFoundError(
        absl::StrCat("cannot read config directory ", *config_dir, ": ", std::strerror(errno)));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--config ", *config_dir, " is not a directory"));
  }

  AMBIT_ASSIGN_OR_RETURN(std::string content, ReadRequestFile(*request_file));
  AMBIT_ASSIGN_OR_RETURN(CheckInput in, RequestParser(*request_file).Parse(content));

  config::DirectoryLoader loader(*config_dir);
  config::LoadResult loaded = loader.Load();
  for (config::ConfigError e : loaded.errors) {
    // Problems in the config are reported, and the valid resources still apply (as in ambitd).
    const bool was_error = !e.warning;
    e.warning = false;
    ctx.err() << "warning: " << e.ToString() << (was_error && !e.object.empty() ? " (skipped)" : "")
              << "\n";
  }
  AMBIT_ASSIGN_OR_RETURN(std::unique_ptr<authz::Engine> engine, config::BuildAuthzEngine(loaded));

  const authz::PeerAuthnDecision mtls = authz::ResolveMtlsMode(
      loaded.security.PeerAuthenticationList(), loaded.state.mesh.root_namespace,
      in.target.namespace_name, in.target.labels, in.request.destination_port);

  // RequestAuthentication applies to an L7 request that carries its raw headers rather than a
  // pre-validated auth block. A jwksUri is never fetched offline: its tokens are rejected, as
  // while the key set is unavailable.
  std::optional<authn::AuthnResult> authn;
  if (in.request.layer == authz::Layer::kL7 && !in.request.auth.has_value()) {
    AMBIT_ASSIGN_OR_RETURN(absl::Time now, NowFlag(ctx));
    AMBIT_ASSIGN_OR_RETURN(
        std::unique_ptr<authn::Authenticator> authenticator,
        authn::Authenticator::Create(loaded.security.RequestAuthenticationList(),
                                     {.root_namespace = loaded.state.mesh.root_namespace},
                                     &authn::CryptoSignatureVerifier(), /*remote=*/nullptr));
    authn = authenticator->Authenticate(in.target, in.request, now);
    if (authn->allowed) in.request.auth = authn->auth;
  }
  const bool rejected = authn.has_value() && !authn->allowed;

  const authz::Decision d = engine->Explain(in.target, in.request);
  const admin::DecisionSummary summary = admin::Summarize(d, mtls, in.request);
  if (ctx.flag("exit-code").has_value() && (rejected || summary.decision == "deny")) {
    ctx.set_exit_code(kExitFailure);
  }
  if (ctx.output_format() == OutputFormat::kTable) {
    // The decision line comes first, as without RequestAuthentication.
    if (rejected) {
      ctx.out() << "decision: deny (RequestAuthentication rejects the request with HTTP "
                << authn->http_status << "; authorization policies are not evaluated)\n\n";
    } else {
      ctx.out() << admin::ExplainText(*engine, in.target, in.request, d, mtls);
    }
    if (authn && (!authn->policies.empty() || rejected))
      ctx.out() << "\n" << admin::AuthnText(*authn);
  } else {
    Value out = DecisionSummaryValue(summary);
    if (rejected) {
      out.Set("decision", "deny");
      out.Set("provider", Value());
      out.Set("afterExtAuthzAllow", Value());
      out.Set("policy", Value());
      out.Set("reason", absl::StrCat("RequestAuthentication: ", authn->reason));
    }
    out.Set("authn", authn ? AuthnValue(*authn) : Value());
    ctx.Print(out);
  }
  return absl::OkStatus();
}

Command CheckCommand() {
  return Command{
      .name = "check",
      .summary = "Explain the authorization decision for one request, offline",
      .description =
          "Loads the Istio resources in DIR (AuthorizationPolicy, PeerAuthentication, mesh.yaml)\n"
          "as ambitd does and evaluates the request described in FILE with the same engine, at\n"
          "L4 (the node tunnel) or L7 (a waypoint or other HTTP proxy). Prints the decision and a\n"
          "trace of every policy that applies and why it matched or not; -o json prints\n"
          "{decision, provider, afterExtAuthzAllow, policy, reason, mtls: {mode, plaintext},\n"
          "authn}. At L7 without an auth block, the RequestAuthentications in DIR are applied\n"
          "to the request's headers and query (Authorization: Bearer, access_token, cookies):\n"
          "authn: {result: allow|reject, status: 401|403|null, reason, principal, claims}; a\n"
          "rejected token gives decision deny. jwksUri is not fetched offline (its tokens are\n"
          "rejected).\n"
          "decision is allow, deny, or ext_authz when a CUSTOM policy hands the request to an\n"
          "external authorizer (afterExtAuthzAllow: the decision if it allows). Problems in DIR\n"
          "are printed as warnings and the valid resources still apply. A plaintext client of a\n"
          "STRICT port is denied (STRICT refuses it before any policy). Exits 0 for any decision\n"
          "(with --exit-code: 1 on deny), 1 when FILE or DIR cannot be used.\n"
          "\n"
          "FILE (YAML):\n"
          "  enforcement: L4            # L4 (default) = the node tunnel; L7 = an HTTP proxy\n"
          "  target: {namespace: foo, labels: {app: httpbin},\n"
          "           waypoint: {name: waypoint, services: [{name: httpbin}]}}  # optional, L7\n"
          "  source: {principal: spiffe://cluster.local/ns/bar/sa/sleep,        # absent: "
          "plaintext\n"
          "           ip: 198.18.0.5, remoteIp: 203.0.113.9}\n"
          "  destination: {ip: 198.18.1.7, port: 8080, sni: httpbin.foo}\n"
          "  http: {host: httpbin.foo, method: GET, path: \"/get?x=1\", headers: {x-token: "
          "admin}}\n"
          "  auth: {principal: https://issuer.example.com/user-1,                # L7 JWT, "
          "optional\n"
          "        # (or leave auth out and put the token in http.headers.authorization)\n"
          "         claims: {sub: user-1, groups: [admins]}, audiences: [api], presenter: web}",
      .examples =
          "ambitctl policy check --config /etc/ambit/config --request req.yaml\n"
          "ambitctl policy check --config ./cfg --request req.yaml -o json",
      .flags = {{"config", '\0', "DIR", "the config directory, as ambitd reads it (required)"},
                {"request", '\0', "FILE", "the request to check, YAML (required)"},
                {"now", '\0', "UNIX_SECONDS",
                 "the time JWT exp/nbf are checked against (default: now)"},
                {"exit-code", '\0', "",
                 "exit 1 when the decision is deny (undetermined ext_authz exits 0)"}},
      .run = RunCheck,
  };
}

}  // namespace

Command PolicyCommand() {
  return Command{
      .name = "policy",
      .summary = "Check Istio authorization policies",
      .description = "Work with Istio AuthorizationPolicy and PeerAuthentication resources.",
      .subcommands = {CheckCommand(), PolicyDiffCommand()},
  };
}

}  // namespace ambit::cli
