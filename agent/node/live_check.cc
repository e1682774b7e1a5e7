#include "agent/node/live_check.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "agent/admin/explain.h"
#include "agent/authn/authenticator.h"
#include "agent/authn/signature.h"
#include "agent/common/ip_address.h"
#include "agent/common/status.h"
#include "agent/mesh/model.h"
#include "agent/node/ext_authz_check.h"

namespace ambit::node {
namespace {

namespace pb = ::ambit::admin::v1;

// Envoy's answers a waypoint gives.
constexpr char kRbacDenied[] = "RBAC: access denied";
constexpr int kHttpOk = 200;
constexpr int kHttpForbidden = 403;
constexpr int kHttpBadRequest = 400;
// The waypoint could not open its upstream connection (the destination's tunnel refused it).
constexpr int kHttpUpstreamFailed = 503;

std::string Indent(const std::string& text) {
  std::string out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    absl::StrAppend(&out, "  ", line, "\n");
  }
  return out;
}

std::string Principal(const std::string& principal) {
  return principal.empty() ? std::string("a plaintext client") : principal;
}

std::optional<IpAddress> SameFamily(const std::vector<IpAddress>& ips, bool v4) {
  for (const IpAddress& ip : ips) {
    if (ip.is_v4() == v4) return ip;
  }
  if (!ips.empty()) return ips.front();
  return std::nullopt;
}

std::string Find(const std::map<std::string, std::string>& map, const std::string& key) {
  auto it = map.find(key);
  return it == map.end() ? std::string() : it->second;
}

// Where a connection from FROM to TO:PORT ends up (MeshSnapshot::Resolve).
struct Destination {
  const state::Service* service = nullptr;  // TO was a service
  const state::Pod* pod = nullptr;          // the endpoint evaluated
  std::optional<IpAddress> dialled_ip;      // what FROM connects to
  uint16_t dialled_port = 0;
  uint16_t pod_port = 0;
  std::string waypoint;              // the Gateway key the connection goes through; "" none
  bool waypoint_of_service = false;  // the service's binding (else the pod's)
  std::string endpoint_note;
};

// The outcome of one hop, as the response's CheckHop and the overall decision take it.
struct HopResult {
  bool allowed = true;
  std::string decision;  // allow, deny, ext_authz (L4 only)
  std::string policy;
  std::string reason;
};

class LiveChecker final : public admin::CheckEvaluator {
 public:
  LiveChecker(LiveCheckConfig config, std::unique_ptr<authn::Authenticator> authenticator,
              std::string authn_error)
      : config_(std::move(config)),
        authenticator_(std::move(authenticator)),
        authn_error_(std::move(authn_error)) {}

  absl::StatusOr<pb::CheckResponse> Check(const pb::CheckRequest& req) const override {
    const state::ClusterState& cluster = *config_.state;
    auto from_it = cluster.pods.find(req.from());
    if (from_it == cluster.pods.end()) {
      return absl::NotFoundError(
          absl::StrCat("no pod ", req.from(), " in the configuration (FROM is namespace/pod)"));
    }
    const state::Pod& from = from_it->second;
    if (req.port() < 1 || req.port() > 65535) {
      return absl::InvalidArgumentError(absl::StrCat(req.port(), " is not a port (1 to 65535)"));
    }
    AMBIT_ASSIGN_OR_RETURN(Destination dest, Resolve(from, req));
    const std::string from_identity = Identity(from);

    pb::CheckResponse resp;
    resp.set_destination(dest.pod->Key());
    if (auto ip = SameFamily(dest.pod->ips, !dest.dialled_ip || dest.dialled_ip->is_v4())) {
      resp.set_destination_ip(ip->ToString());
    }
    if (dest.service != nullptr) resp.set_service(dest.service->Key());
    resp.set_endpoint_note(dest.endpoint_note);
    resp.set_source_principal(from_identity);
    resp.set_waypoint(dest.waypoint);

    std::string route = absl::StrCat("route:    ", from.Key(), " -> ");
    if (dest.service != nullptr) absl::StrAppend(&route, "service ", dest.service->Key(), " ");
    absl::StrAppend(&route, dest.dialled_ip ? dest.dialled_ip->ToString() : "?", ":",
                    dest.dialled_port);
    if (!dest.waypoint.empty()) absl::StrAppend(&route, " -> waypoint ", dest.waypoint);
    absl::StrAppend(&route, " -> ", dest.pod->Key(), " port ", dest.pod_port, "\n");

    std::string hops_text;
    std::optional<HopResult> waypoint_hop;
    // Through the waypoint, the destination's tunnel sees the waypoint's pod.
    std::string tunnel_principal = from_identity;
    std::optional<IpAddress> tunnel_source_ip =
        SameFamily(from.ips, !dest.dialled_ip || dest.dialled_ip->is_v4());
    if (!dest.waypoint.empty()) {
      const state::Pod* wp = FirstInstance(dest.waypoint);
      if (wp == nullptr) {
        HopResult h{
            false, "deny", absl::StrCat("waypoint ", dest.waypoint),
            absl::StrCat("denied: ", dest.service ? dest.service->Key() : dest.pod->Key(),
                         " uses waypoint ", dest.waypoint, ", which has no pod (",
                         WhyNoPod(dest.waypoint), "); the node tunnel refuses the connection")};
        AddHop(&resp, "waypoint", dest.waypoint, h, from_identity);
        AddHop(&resp, "tunnel", dest.pod->Key(), {false, "not_reached", "", ""}, "");
        Finish(&resp, h, /*http_status=*/0);
        resp.set_mtls_mode(std::string(authz::MtlsModeName(MtlsAt(*dest.pod, dest.pod_port).mode)));
        resp.set_trace(absl::StrCat(Header(h, 0, dest.waypoint), route,
                                    "endpoint: ", dest.endpoint_note, "\n\nhop 1: waypoint ",
                                    dest.waypoint, ": ", h.reason,
                                    "\nhop 2: the destination's tunnel: not "
                                    "reached\n"));
        return resp;
      }
      const std::string wp_identity = Identity(*wp);
      std::string text;
      int http_status = 0;
      HopResult h = WaypointHop(req, from, from_identity, dest, *wp, &resp, &http_status, &text);
      hops_text = absl::StrCat("\nhop 1: waypoint ", dest.waypoint, " (pod ", wp->Key(), ", ",
                               Principal(wp_identity), "), L7\n", Indent(text));
      AddHop(&resp, "waypoint", dest.waypoint, h, from_identity);
      resp.set_http_status(http_status);
      waypoint_hop = h;
      if (!h.allowed) {
        AddHop(&resp, "tunnel", dest.pod->Key(), {false, "not_reached", "", ""}, "");
        Finish(&resp, h, http_status);
        resp.set_mtls_mode(std::string(authz::MtlsModeName(MtlsAt(*dest.pod, dest.pod_port).mode)));
        absl::StrAppend(&hops_text, "\nhop 2: the destination's tunnel: not reached\n");
        resp.set_trace(absl::StrCat(Header(h, http_status, dest.waypoint), route,
                                    "endpoint: ", dest.endpoint_note, "\n", hops_text));
        return resp;
      }
      tunnel_principal = wp_identity;
      tunnel_source_ip = SameFamily(wp->ips, !dest.dialled_ip || dest.dialled_ip->is_v4());
    }

    // The destination's tunnel: the bypass check, then its L4 policy.
    authz::Workload target;
    target.namespace_name = dest.pod->namespace_name;
    target.labels = dest.pod->labels;
    authz::Request request;
    request.layer = authz::Layer::kL4;
    request.source_principal = tunnel_principal;
    request.source_ip = tunnel_source_ip;
    if (!resp.destination_ip().empty()) {
      if (auto ip = IpAddress::Parse(resp.destination_ip()); ip.ok()) request.destination_ip = *ip;
    }
    request.destination_port = dest.pod_port;
    const authz::PeerAuthnDecision mtls = MtlsAt(*dest.pod, dest.pod_port);
    resp.set_mtls_mode(std::string(authz::MtlsModeName(mtls.mode)));
    std::string bypass_note;
    std::optional<HopResult> bypass = BypassCheck(*dest.pod, tunnel_principal, &bypass_note);
    HopResult tunnel;
    std::string l4_text;
    const authz::Decision d = config_.engine->Explain(target, request);
    const admin::DecisionSummary s = admin::Summarize(d, mtls, request);
    if (bypass.has_value()) {
      tunnel = *bypass;
    } else {
      tunnel = {s.decision == "allow", s.decision, s.policy, s.reason};
    }
    l4_text = admin::ExplainText(*config_.engine, target, request, d, mtls);
    AddHop(&resp, "tunnel", dest.pod->Key(), tunnel, tunnel_principal);

    const bool simple = dest.waypoint.empty() && !bypass.has_value() && bypass_note.empty();
    if (simple) {
      // One hop at L4: the answer is the tunnel's, as `policy check` prints it.
      resp.set_decision(s.decision);
      resp.set_provider(s.provider);
      resp.set_after_ext_authz_allow(s.after_ext_authz_allow);
      resp.set_policy(s.policy);
      resp.set_reason(s.reason);
      std::string trace = l4_text;
      if (dest.service != nullptr) {
        absl::StrAppend(&trace, "\n", route, "endpoint: ", dest.endpoint_note, "\n");
      }
      if (req.http()) absl::StrAppend(&trace, HttpNotEvaluated(dest, from_identity));
      resp.set_trace(trace);
      return resp;
    }

    const int http_status = waypoint_hop ? (tunnel.allowed ? kHttpOk : kHttpUpstreamFailed) : 0;
    if (waypoint_hop) resp.set_http_status(http_status);
    HopResult overall = tunnel;
    if (waypoint_hop && tunnel.allowed) {
      overall.policy = waypoint_hop->policy.empty() ? tunnel.policy : waypoint_hop->policy;
      overall.reason =
          absl::StrCat("waypoint: ", waypoint_hop->reason, "; tunnel: ", tunnel.reason);
    }
    Finish(&resp, overall, http_status);
    if (!bypass.has_value() && tunnel.decision == "ext_authz") {
      resp.set_provider(s.provider);
      resp.set_after_ext_authz_allow(s.after_ext_authz_allow);
    }
    const int n = waypoint_hop ? 2 : 1;
    absl::StrAppend(&hops_text, "\nhop ", n, ": the tunnel of ", dest.pod->Key(), ", L4, from ",
                    Principal(tunnel_principal), waypoint_hop ? " (the waypoint's identity)" : "",
                    "\n  ", bypass_note, "\n");
    if (bypass.has_value()) {
      absl::StrAppend(&hops_text, "  decision: deny (bypass refused before AuthorizationPolicy)\n");
    } else {
      absl::StrAppend(&hops_text, Indent(l4_text));
    }
    std::string trace = absl::StrCat(Header(overall, http_status, dest.waypoint), route,
                                     "endpoint: ", dest.endpoint_note, "\n", hops_text);
    if (req.http() && !waypoint_hop) absl::StrAppend(&trace, HttpNotEvaluated(dest, from_identity));
    resp.set_trace(trace);
    return resp;
  }

 private:
  std::string Identity(const state::Pod& pod) const {
    // Only a pod the mesh captures connects with its SVID: one that names its netns, or that
    // Istio's label puts in the mesh (the API server's and istiod's pods, found by IP).
    const bool captured = !pod.netns_path.empty() || state::InMesh(pod, *config_.state);
    return captured ? state::SpiffeId(config_.state->mesh, pod) : std::string();
  }

  authz::PeerAuthnDecision MtlsAt(const state::Pod& pod, uint16_t port) const {
    return authz::ResolveMtlsMode(config_.peer_authns, config_.state->mesh.root_namespace,
                                  pod.namespace_name, pod.labels, port);
  }

  bool IsInstanceOf(const state::Pod& pod, const std::string& waypoint) const {
    return Find(config_.waypoints->instance_of, pod.Key()) == waypoint;
  }

  const state::Pod* FirstInstance(const std::string& waypoint) const {
    auto it = config_.waypoints->instances.find(waypoint);
    if (it == config_.waypoints->instances.end()) return nullptr;
    for (const std::string& key : it->second) {
      auto pod = config_.state->pods.find(key);
      if (pod != config_.state->pods.end() && !pod->second.ips.empty()) return &pod->second;
    }
    return nullptr;
  }

  std::string WhyNoPod(const std::string& waypoint) const {
    auto gw = config_.state->gateways.find(waypoint);
    if (gw == config_.state->gateways.end()) {
      return absl::StrCat("no Gateway ", waypoint, " in the configuration");
    }
    if (gw->second.gateway_class != state::kWaypointGatewayClass) {
      return absl::StrCat("Gateway ", waypoint, " is of class '", gw->second.gateway_class,
                          "', not ", state::kWaypointGatewayClass);
    }
    return absl::StrCat("no pod with an address in namespace ", gw->second.namespace_name,
                        " is labelled ", state::kGatewayNameLabel, "=", gw->second.name);
  }

  std::vector<const state::Pod*> Endpoints(const state::Service& svc) const {
    std::vector<const state::Pod*> out;
    for (const auto& [key, pod] : config_.state->pods) {
      if (state::Selects(svc, pod) && !config_.state->HasIpConflict(key)) out.push_back(&pod);
    }
    return out;
  }

  absl::StatusOr<Destination> Resolve(const state::Pod& from, const pb::CheckRequest& req) const {
    const state::ClusterState& cluster = *config_.state;
    Destination dest;
    dest.dialled_port = static_cast<uint16_t>(req.port());
    if (auto ip = IpAddress::Parse(req.to()); ip.ok()) {
      dest.dialled_ip = *ip;
      dest.pod = cluster.FindPodByIp(*ip);
      if (dest.pod == nullptr) {
        for (const auto& [key, svc] : cluster.services) {
          if (std::find(svc.cluster_ips.begin(), svc.cluster_ips.end(), *ip) !=
              svc.cluster_ips.end()) {
            dest.service = &svc;
            break;
          }
        }
        if (dest.service == nullptr) {
          return absl::NotFoundError(absl::StrCat(
              "no pod or service has address ", req.to(),
              ": a destination outside the mesh is passed through as plain TCP, no policy "
              "applies"));
        }
      }
    } else if (auto it = cluster.pods.find(req.to()); it != cluster.pods.end()) {
      dest.pod = &it->second;
      if (!dest.pod->ips.empty()) dest.dialled_ip = dest.pod->ips.front();
    } else if (auto svc = cluster.services.find(req.to()); svc != cluster.services.end()) {
      dest.service = &svc->second;
      if (dest.service->cluster_ips.empty()) {
        return absl::FailedPreconditionError(
            absl::StrCat("service ", req.to(),
                         " has no cluster IP (headless): its clients connect to the pods; check "
                         "a pod instead"));
      }
      dest.dialled_ip = dest.service->cluster_ips.front();
    } else {
      return absl::NotFoundError(absl::StrCat("no pod or service ", req.to(),
                                              " in the configuration (TO is a pod IP, "
                                              "namespace/pod, a service's cluster IP or "
                                              "namespace/service)"));
    }
    const bool captured = !from.netns_path.empty();
    if (dest.service == nullptr) {
      dest.pod_port = dest.dialled_port;
      dest.endpoint_note = absl::StrCat(dest.pod->Key(), " (addressed directly)");
      const std::string wp = Find(config_.waypoints->workloads, dest.pod->Key());
      if (!wp.empty() && captured && !IsInstanceOf(from, wp)) dest.waypoint = wp;
      return dest;
    }
    const state::Service& svc = *dest.service;
    const state::ServicePort* port = nullptr;
    std::vector<std::string> tcp_ports;
    for (const auto& p : svc.ports) {
      if (absl::AsciiStrToUpper(p.protocol) != "TCP") continue;
      tcp_ports.push_back(absl::StrCat(p.port));
      if (p.port == dest.dialled_port) port = &p;
    }
    if (port == nullptr) {
      return absl::NotFoundError(absl::StrCat(
          "service ", svc.Key(), " has no TCP port ", req.port(),
          " (its TCP ports: ", tcp_ports.empty() ? "none" : absl::StrJoin(tcp_ports, ", "),
          "); PORT is the service port for a service"));
    }
    uint32_t target = 0;
    if (port->target_port.empty()) {
      target = port->port;
    } else if (!absl::SimpleAtoi(port->target_port, &target) || target < 1 || target > 65535) {
      return absl::FailedPreconditionError(absl::StrCat(
          "service ", svc.Key(), " port ", port->port, " has targetPort '", port->target_port,
          "', which ambit does not resolve (named container ports are not known): the "
          "connection is passed through to the cluster IP"));
    }
    dest.pod_port = static_cast<uint16_t>(target);
    std::vector<const state::Pod*> endpoints = Endpoints(svc);
    if (endpoints.empty()) {
      return absl::NotFoundError(
          absl::StrCat("service ", svc.Key(),
                       " has no endpoint (its selector picks no pod): the connection "
                       "goes to the cluster IP unchanged and nothing answers"));
    }
    dest.pod = endpoints.front();
    const std::string svc_wp = Find(config_.waypoints->services, svc.Key());
    const std::string pod_wp = Find(config_.waypoints->workloads, dest.pod->Key());
    if (!svc_wp.empty() && captured && !IsInstanceOf(from, svc_wp)) {
      dest.waypoint = svc_wp;
      dest.waypoint_of_service = true;
    } else if (!pod_wp.empty() && captured && !IsInstanceOf(from, pod_wp)) {
      // The tunnel sends service traffic for a bound endpoint through the endpoint's waypoint.
      dest.waypoint = pod_wp;
    }
    dest.endpoint_note = absl::StrCat(
        dest.pod->Key(), ", the first of ", endpoints.size(), " endpoint",
        endpoints.size() == 1 ? "" : "s", " of service ", svc.Key(), " (by name); ",
        dest.waypoint.empty()
            ? "the tunnel picks one per connection, and an endpoint with other labels may be "
              "under other policies"
            : "the choice does not change the decision: the waypoint's policies attach to its "
              "Gateway and the service, and every endpoint's tunnel accepts the waypoint alone");
    return dest;
  }

  // RequestAuthentication, then AuthorizationPolicy, at the waypoint.
  HopResult WaypointHop(const pb::CheckRequest& req, const state::Pod& from,
                        const std::string& from_identity, const Destination& dest,
                        const state::Pod& wp, pb::CheckResponse* resp, int* http_status,
                        std::string* text) const {
    const size_t slash = dest.waypoint.find('/');
    authz::WaypointRef ref;
    ref.namespace_name = dest.waypoint.substr(0, slash);
    ref.name = dest.waypoint.substr(slash + 1);
    if (dest.waypoint_of_service) {
      ref.services.push_back({dest.service->name, dest.service->namespace_name});
    }
    authz::Workload target;
    target.namespace_name =
        dest.service != nullptr ? dest.service->namespace_name : dest.pod->namespace_name;
    target.labels = dest.pod->labels;
    target.waypoint = ref;

    authz::Request request;
    request.layer = authz::Layer::kL7;
    request.source_principal = from_identity;
    request.source_ip = SameFamily(from.ips, !dest.dialled_ip || dest.dialled_ip->is_v4());
    request.destination_ip = dest.dialled_ip;
    request.destination_port = dest.dialled_port;
    request.method = req.method().empty() ? "GET" : req.method();
    request.path = req.path().empty() ? "/" : req.path();
    for (const auto& h : req.headers()) {
      const std::string name = absl::AsciiStrToLower(h.name());
      if (name == "host" || name == ":authority") {
        request.host = h.value();
        continue;
      }
      request.headers.Add(name, h.value());
    }
    if (request.host.empty()) {
      request.host = dest.service != nullptr && dest.waypoint_of_service
                         ? absl::StrCat(dest.service->name, ".", dest.service->namespace_name,
                                        ".svc.cluster.local")
                         : absl::StrCat(dest.dialled_ip ? dest.dialled_ip->ToString() : "", ":",
                                        dest.dialled_port);
    }
    absl::StrAppend(text, "request: ", request.method, " ", request.host, request.path,
                    req.http() ? "" : " (no --method/--path given: GET /)", ", from ",
                    Principal(from_identity), "\n");

    const absl::Time now =
        req.now_unix_seconds() > 0 ? absl::FromUnixSeconds(req.now_unix_seconds()) : absl::Now();
    if (authenticator_ == nullptr) {
      // The same configuration would give the waypoint no JWT filter: fail closed.
      *http_status = 401;
      absl::StrAppend(
          text, "authentication: the RequestAuthentications cannot be used: ", authn_error_, "\n");
      auto* a = resp->mutable_authn();
      a->set_result("reject");
      a->set_status(401);
      a->set_reason(authn_error_);
      return {false, "deny", "", absl::StrCat("RequestAuthentication: ", authn_error_)};
    }
    const authn::AuthnResult r = authenticator_->Authenticate(target, request, now);
    absl::StrAppend(text, admin::AuthnText(r));
    for (const authn::TokenCheck& c : r.checks) {
      if (c.status == authn::JwtStatus::kJwksFetchFail) {
        absl::StrAppend(text,
                        "  note: ambitd does not fetch jwksUri key sets for a check; the "
                        "waypoint does, so its answer may differ\n");
        break;
      }
    }
    auto* a = resp->mutable_authn();
    a->set_result(r.allowed ? "allow" : "reject");
    a->set_status(r.allowed ? 0 : r.http_status);
    a->set_reason(r.reason);
    if (r.auth.has_value()) a->set_principal(r.auth->principal);
    for (const auto& p : r.policies) a->add_policies(p);
    const authn::TokenCheck* deciding = admin::DecidingTokenCheck(r);
    if (deciding != nullptr) {
      a->set_rule(absl::StrCat(deciding->policy.empty() ? "no rule" : deciding->policy,
                               deciding->policy.empty() ? "" : " jwtRules[",
                               deciding->policy.empty() ? "" : absl::StrCat(deciding->rule, "]"),
                               " (", deciding->location.ToString(), ")"));
    }
    if (!r.allowed) {
      *http_status = r.http_status;
      absl::StrAppend(text, "AuthorizationPolicy: not evaluated (the request is rejected first)\n");
      return {false, "deny", deciding != nullptr ? deciding->policy : "",
              absl::StrCat("RequestAuthentication rejects the request: HTTP ", r.http_status, " \"",
                           r.body, "\": ", r.reason)};
    }
    if (r.auth.has_value()) request.auth = r.auth;
    const authz::Decision d = config_.engine->Explain(target, request);
    const authz::PeerAuthnDecision mtls = MtlsAt(wp, dest.dialled_port);
    absl::StrAppend(text, "authorization (AuthorizationPolicy):\n",
                    Indent(admin::ExplainText(*config_.engine, target, request, d, mtls)));
    if (d.reason == authz::DecisionReason::kExtAuthzRequired) {
      return ExtAuthzHop(req, request, dest, d, resp, http_status, text);
    }
    if (d.reason == authz::DecisionReason::kBadRequest) {
      *http_status = kHttpBadRequest;
      absl::StrAppend(text, "result: HTTP 400 \"Bad Request\"\n");
      return {false, "deny", d.policy, d.explanation};
    }
    if (!d.allowed) {
      *http_status = kHttpForbidden;
      absl::StrAppend(
          text, "result: HTTP 403 \"", kRbacDenied, "\"",
          d.policy.empty() ? "" : absl::StrCat(" (policy ", d.policy),
          d.policy.empty() || d.rule_index < 0 ? "" : absl::StrCat(", rule ", d.rule_index),
          d.policy.empty() ? "" : ")", "\n");
      return {false, "deny", d.policy, absl::StrCat("HTTP 403 ", kRbacDenied, ": ", d.explanation)};
    }
    *http_status = kHttpOk;
    absl::StrAppend(text, "result: forwarded to ", dest.pod->Key(), "\n");
    return {true, "allow", d.policy, d.explanation};
  }

  // A CUSTOM policy at the waypoint: ask the running waypoint's provider (unless told not to) and
  // fold its answer in.
  HopResult ExtAuthzHop(const pb::CheckRequest& req, const authz::Request& request,
                        const Destination& dest, const authz::Decision& d, pb::CheckResponse* resp,
                        int* http_status, std::string* text) const {
    const std::string provider = d.ext_authz ? d.ext_authz->provider : std::string("?");
    resp->set_provider(provider);
    if (d.ext_authz) {
      resp->set_after_ext_authz_allow(d.ext_authz->if_allowed.allowed ? "allow" : "deny");
    }
    std::string not_asked;
    absl::StatusOr<supervisor::ExtAuthzProbeAnswer> answer =
        absl::UnknownError("the provider was not asked");
    if (req.no_ext_authz()) {
      not_asked = "--no-ext-authz";
    } else if (!config_.ext_authz_prober) {
      not_asked = "this agent has no waypoint data plane to ask";
    } else {
      supervisor::ExtAuthzProbeQuery query;
      query.waypoint = dest.waypoint;
      query.provider = provider;
      query.method = request.method;
      query.path = request.path;
      query.host = request.host;
      for (const auto& h : req.headers()) {
        const std::string name = absl::AsciiStrToLower(h.name());
        if (name == "host" || name == ":authority") continue;
        query.headers.emplace_back(name, h.value());
      }
      if (request.source_ip) query.source_address = request.source_ip->ToString();
      query.source_principal = request.source_principal;
      if (dest.dialled_ip) {
        query.destination_address = SocketAddress{*dest.dialled_ip, dest.dialled_port}.ToString();
      }
      answer = config_.ext_authz_prober(query);
    }
    const ExtAuthzCheck c = FoldExtAuthzAnswer(d, answer, not_asked, resp->mutable_ext_authz());
    absl::StrAppend(text, c.text);
    if (!c.determined) {
      *http_status = 0;
      absl::StrAppend(text, "result: undetermined\n");
      return {false, "undetermined", d.policy,
              absl::StrCat("CUSTOM policy ", d.policy, " hands the request to provider \"",
                           provider, "\", which was not asked (", resp->ext_authz().not_asked(),
                           "): the decision is the provider's")};
    }
    if (c.http_status != 0) {
      *http_status = c.http_status;
      absl::StrAppend(text, "result: HTTP ", c.http_status,
                      c.body.empty() ? "" : absl::StrCat(" \"", c.body, "\""), "\n");
      return {false, "deny", c.decision.policy,
              absl::StrCat("HTTP ", c.http_status, ": ", c.decision.explanation)};
    }
    *http_status = kHttpOk;
    absl::StrAppend(text, "result: forwarded to ", dest.pod->Key(), "\n");
    return {true, "allow", c.decision.policy, c.decision.explanation};
  }

  // The waypoint check of the destination's tunnel (MeshSnapshot::Authorize): a pod bound to a
  // waypoint, or selected by a service bound to one, accepts only that waypoint's identities.
  // A denial, or nullopt; `note` says what was checked.
  std::optional<HopResult> BypassCheck(const state::Pod& pod, const std::string& principal,
                                       std::string* note) const {
    if (pod.netns_path.empty()) return std::nullopt;  // no tunnel of ours in front of it
    std::vector<std::string> bound;
    if (std::string w = Find(config_.waypoints->workloads, pod.Key()); !w.empty()) {
      bound.push_back(w);
    }
    for (const auto& [key, svc] : config_.state->services) {
      const std::string w = Find(config_.waypoints->services, key);
      if (w.empty() || !state::Selects(svc, pod) || config_.state->HasIpConflict(pod.Key())) {
        continue;
      }
      if (std::find(bound.begin(), bound.end(), w) == bound.end()) bound.push_back(w);
    }
    if (bound.empty()) return std::nullopt;
    if (config_.waypoints->bypass_allowed.contains(pod.Key())) {
      *note = absl::StrCat("waypoint check: ", pod.Key(), " is behind waypoint ",
                           absl::StrJoin(bound, ", "),
                           " but opts out of the bypass check (ambit.dev/allow-waypoint-bypass: "
                           "\"true\"): any identity may connect");
      return std::nullopt;
    }
    for (const std::string& w : bound) {
      bool ok = false;
      auto it = config_.waypoints->instances.find(w);
      if (it != config_.waypoints->instances.end() && !principal.empty()) {
        for (const std::string& key : it->second) {
          auto p = config_.state->pods.find(key);
          if (p != config_.state->pods.end() && Identity(p->second) == principal) ok = true;
        }
      }
      const bool no_pod = it == config_.waypoints->instances.end() || it->second.empty();
      if (ok) continue;
      const std::string reason = mesh::BypassRefusal(pod.Key(), w, no_pod, principal);
      *note = absl::StrCat("waypoint check: ", reason);
      return HopResult{false, "deny", absl::StrCat("waypoint ", w), reason};
    }
    *note = absl::StrCat("waypoint check: ", pod.Key(), " accepts only waypoint ",
                         absl::StrJoin(bound, ", "), " (bypass closed): ", principal,
                         " is its identity");
    return std::nullopt;
  }

  std::string HttpNotEvaluated(const Destination& dest, const std::string& from_identity) const {
    if (from_identity.empty()) {
      return "http:     L7 rules are not evaluated: FROM is not captured by the mesh, so its "
             "traffic reaches no waypoint\n";
    }
    return absl::StrCat("http:     L7 rules are not evaluated: no waypoint serves ",
                        dest.service != nullptr ? dest.service->Key() : dest.pod->Key(),
                        ", and the node tunnel cannot see HTTP\n");
  }

  static void AddHop(pb::CheckResponse* resp, const std::string& kind, const std::string& name,
                     const HopResult& h, const std::string& principal) {
    auto* hop = resp->add_hops();
    hop->set_kind(kind);
    hop->set_name(name);
    hop->set_decision(h.decision);
    hop->set_policy(h.policy);
    hop->set_reason(h.reason);
    hop->set_source_principal(principal);
  }

  static void Finish(pb::CheckResponse* resp, const HopResult& h, int http_status) {
    resp->set_decision(h.decision);
    resp->set_policy(h.policy);
    resp->set_reason(h.reason);
    if (http_status != 0) resp->set_http_status(http_status);
  }

  static std::string Header(const HopResult& h, int http_status, const std::string& waypoint) {
    std::string out = absl::StrCat("decision: ", h.decision);
    if (http_status != 0)
      absl::StrAppend(&out, " (HTTP ", http_status, " at waypoint ", waypoint, ")");
    absl::StrAppend(&out, "\npolicy:   ", h.policy.empty() ? "-" : h.policy,
                    "\nreason:   ", h.reason, "\n");
    return out;
  }

  const LiveCheckConfig config_;
  const std::unique_ptr<authn::Authenticator> authenticator_;
  const std::string authn_error_;
};

}  // namespace

std::shared_ptr<const admin::CheckEvaluator> NewCheckEvaluator(LiveCheckConfig config) {
  if (config.waypoints == nullptr) {
    config.waypoints =
        std::make_shared<const state::WaypointResolution>(state::ResolveWaypoints(*config.state));
  }
  absl::StatusOr<std::unique_ptr<authn::Authenticator>> authenticator =
      authn::Authenticator::Create(config.request_authns,
                                   {.root_namespace = config.state->mesh.root_namespace},
                                   &authn::CryptoSignatureVerifier(), /*remote=*/nullptr);
  std::string error;
  std::unique_ptr<authn::Authenticator> owned;
  if (authenticator.ok()) {
    owned = std::move(*authenticator);
  } else {
    error = std::string(authenticator.status().message());
  }
  return std::make_shared<const LiveChecker>(std::move(config), std::move(owned), std::move(error));
}

}  // namespace ambit::node
