#include "agent/node/policy_diff.h"

#include <map>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "agent/admin/policy_diff_limits.h"
#include "agent/authz/engine.h"
#include "agent/authz/peer_authentication.h"
#include "agent/config/kube_yaml.h"
#include "agent/config/lint.h"
#include "agent/config/load_result.h"

namespace ambit::node {
namespace {

namespace pb = ::ambit::admin::v1;

// At most this many flipped workloads are listed (the count says how many there are).
constexpr int kMaxFlippedListed = 1000;

absl::StatusOr<std::unique_ptr<authz::Engine>> EngineOf(const config::SecurityConfig& security,
                                                        const state::MeshConfig& mesh) {
  return authz::Engine::Create(security.CompiledAuthorizationPolicies(),
                               config::AuthzEngineOptions(mesh));
}

// The ALLOW policies (not dry-run) that apply to the pod at the node: with any, what no ALLOW
// rule matches is denied (default-deny).
std::vector<std::string> AllowPolicies(const authz::Engine& engine, const state::Pod& pod) {
  authz::Workload target;
  target.namespace_name = pod.namespace_name;
  target.labels = pod.labels;
  authz::Request probe;
  probe.layer = authz::Layer::kL4;
  std::vector<std::string> out;
  for (const auto& t : engine.Explain(target, probe).trace) {
    if (t.action == authz::Action::kAllow && !t.dry_run) out.push_back(t.policy);
  }
  return out;
}

void Finding(pb::PolicyDiffResponse* out, const std::string& object, const std::string& file,
             const char* kind, std::string message) {
  auto* f = out->add_findings();
  f->set_policy(object);
  f->set_file(file);
  f->set_kind(kind);
  f->set_message(std::move(message));
}

// Rules that can never match at the node: HTTP fields the node cannot see (the engine's load
// warnings), then what config::Lint says of the policies (sources no known workload has,
// spiffe:// written in principals, namespaces nothing lives in).
void Lint(const config::SecurityConfig& next, const authz::Engine& engine,
          const state::ClusterState& cluster, pb::PolicyDiffResponse* out) {
  std::map<std::string, std::vector<std::string>> warnings;  // by policy key
  for (const auto& w : engine.LoadWarnings()) {
    warnings[std::string(w.substr(0, w.find(": ")))].push_back(w);
  }
  for (const auto& [key, p] : next.authorization_policies) {
    // Bound to a waypoint (targetRefs): the waypoint sees HTTP, so HTTP fields are fine.
    if (!p.target_refs.empty()) continue;
    for (const auto& w : warnings[key]) {
      if (absl::StrContains(w, "cannot see HTTP attributes")) {
        Finding(out, absl::StrCat("AuthorizationPolicy ", key), p.source_file,
                "http-without-waypoint", w);
      }
    }
  }
  for (config::PolicyFinding& f : config::LintPolicyFindings(cluster, next)) {
    Finding(out, f.error.object, f.error.file, f.kind,
            absl::StrCat(f.error.field, ": ", f.error.message));
  }
}

}  // namespace

absl::StatusOr<pb::PolicyDiffResponse> PolicyDiff(const PolicyDiffInputs& in,
                                                  const ambit::dataplane::v1::StatsResponse& live,
                                                  const pb::PolicyDiffRequest& request) {
  // The admin API's bound, checked again here: a caller other than ambitctl may send anything
  // up to gRPC's own limit.
  if (request.files_size() > admin::kMaxPolicyDiffFiles) {
    return absl::InvalidArgumentError(absl::StrCat("policy diff takes at most ",
                                                   admin::kMaxPolicyDiffFiles, " files, not ",
                                                   request.files_size()));
  }
  size_t total = 0;
  for (const auto& f : request.files()) total += f.content().size() + f.name().size();
  if (total > admin::kMaxPolicyDiffBytes) {
    return absl::InvalidArgumentError(absl::StrCat("policy diff takes at most ",
                                                   admin::kMaxPolicyDiffBytes >> 20,
                                                   " MiB of files, not ", total, " bytes"));
  }
  const state::ClusterState& cluster = *in.cluster;
  pb::PolicyDiffResponse out;
  config::SecurityConfig next;
  std::set<std::string> names;
  for (const auto& f : request.files()) {
    if (f.name().empty() || f.name().size() > 255 || absl::StrContains(f.name(), "/") ||
        !names.insert(f.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat("file name \"", f.name().substr(0, 255),
                                                     "\" is empty, too long, a path or repeated"));
    }
    config::ParsedFile parsed = config::ParseKubeYaml(f.name(), f.content());
    for (const config::ConfigError& e : parsed.errors) {
      auto* p = out.add_problems();
      p->set_file(e.file);
      p->set_line(e.line);
      p->set_object(e.object);
      p->set_field(e.field);
      p->set_message(e.message);
      p->set_warning(e.warning);
      p->set_text(e.ToString());
    }
    for (auto& obj : parsed.objects) {
      if (auto* pa = std::get_if<authz::PeerAuthentication>(&obj.object)) {
        if (!next.peer_authentications.emplace(pa->Key(), *pa).second) {
          auto* p = out.add_problems();
          p->set_file(f.name());
          p->set_object(obj.id);
          p->set_message("defined twice in the directory; the first one counts");
          p->set_text(absl::StrCat(f.name(), ": ", obj.id, ": defined twice; the first counts"));
        }
      } else if (auto* ap = std::get_if<authz::Policy>(&obj.object)) {
        if (!next.authorization_policies.emplace(ap->Key(), *ap).second) {
          auto* p = out.add_problems();
          p->set_file(f.name());
          p->set_object(obj.id);
          p->set_message("defined twice in the directory; the first one counts");
          p->set_text(absl::StrCat(f.name(), ": ", obj.id, ": defined twice; the first counts"));
        }
      }
    }
  }
  out.set_authorization_policies(static_cast<int>(next.authorization_policies.size()));
  out.set_peer_authentications(static_cast<int>(next.peer_authentications.size()));
  auto before = EngineOf(in.current, cluster.mesh);
  if (!before.ok()) return before.status();
  auto after = EngineOf(next, cluster.mesh);
  if (!after.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the directory's policies do not build: ", after.status().message()));
  }
  const auto pa_before = in.current.PeerAuthenticationList();
  const auto pa_after = next.PeerAuthenticationList();

  // Live connections reaching local pods, each decided again as the data plane would.
  for (const auto& flow : live.flows()) {
    if (flow.direction() != "inbound") continue;
    auto pod = cluster.pods.find(flow.pod());
    auto src = SocketAddress::Parse(flow.source().address());
    auto dst = SocketAddress::Parse(flow.destination().address());
    if (pod == cluster.pods.end() || !src.ok() || !dst.ok()) continue;
    out.set_connections_checked(out.connections_checked() + 1);
    std::string reason;
    const bool plaintext = !flow.mtls();
    if (plaintext) {
      auto mode = authz::ResolveMtlsMode(pa_after, cluster.mesh.root_namespace,
                                         pod->second.namespace_name, pod->second.labels, dst->port);
      if (mode.mode == authz::MtlsMode::kStrict) {
        reason = absl::StrCat("plaintext refused: PeerAuthentication ",
                              mode.policy.empty() ? "(default)" : mode.policy,
                              " requires mTLS (STRICT) on port ", dst->port);
      }
    }
    if (reason.empty()) {
      authz::Workload target;
      target.namespace_name = pod->second.namespace_name;
      target.labels = pod->second.labels;
      authz::Request req;
      req.layer = authz::Layer::kL4;
      req.source_principal = flow.source().principal();
      req.source_ip = src->ip;
      req.destination_ip = dst->ip;
      req.destination_port = dst->port;
      authz::Decision d = (*after)->Evaluate(target, req);
      if (!d.allowed) {
        reason = d.explanation;
        // "no ALLOW matched" names no policy: say which ones apply, the ones to look at.
        if (d.policy.empty()) {
          const std::vector<std::string> allows = AllowPolicies(**after, pod->second);
          if (!allows.empty()) absl::StrAppend(&reason, " (", absl::StrJoin(allows, ", "), ")");
        }
      }
    }
    if (reason.empty()) continue;
    auto* c = out.add_closed();
    c->set_id(flow.id());
    c->set_pod(flow.pod());
    c->set_source(flow.source().address());
    c->set_source_identity(flow.source().principal());
    c->set_destination(flow.destination().address());
    c->set_mode(flow.mode());
    c->set_allowed_by(flow.policy());
    c->set_reason(reason);
  }

  // Pods whose default flips: any ALLOW policy applying makes a pod default-deny.
  int flipped = 0;
  for (const auto& [key, pod] : cluster.pods) {
    if (!state::InMesh(pod, cluster)) continue;
    const std::vector<std::string> was = AllowPolicies(**before, pod);
    const std::vector<std::string> will = AllowPolicies(**after, pod);
    if (was.empty() == will.empty()) continue;
    if (++flipped > kMaxFlippedListed) continue;
    auto* w = out.add_flipped();
    w->set_namespace_(pod.namespace_name);
    w->set_name(pod.name);
    w->set_before(was.empty() ? "default-allow" : "default-deny");
    w->set_after(will.empty() ? "default-allow" : "default-deny");
    for (const auto& p : will) w->add_allow_policies(p);
  }
  if (flipped > kMaxFlippedListed) {
    out.add_notes(
        absl::StrCat(flipped, " pods flip; the first ", kMaxFlippedListed, " are listed"));
  }
  Lint(next, **after, cluster, &out);
  out.add_notes(
      "the directory's AuthorizationPolicies and PeerAuthentications replace those in force; "
      "pods, namespaces and the mesh config stay the agent's; nothing is applied");
  out.add_notes(
      "connections are this node's data plane's (ambit-tunnel); waypoints decide their own");
  return out;
}

}  // namespace ambit::node
