#include "agent/node/strict_readiness.h"

#include <yaml-cpp/yaml.h>

#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace ambit::node {
namespace {

namespace pb = ::ambit::admin::v1;

// The labels a suggested policy selects a pod by: `app` (and `version` with it) when the pod has
// one, as the pods of one Deployment share them; else every label but the ReplicaSet's hash,
// which changes with each rollout.
std::map<std::string, std::string> SelectorOf(const state::Pod& pod) {
  std::map<std::string, std::string> out;
  if (auto app = pod.labels.find("app"); app != pod.labels.end()) {
    out.insert(*app);
    return out;
  }
  for (const auto& [k, v] : pod.labels) {
    if (k != "pod-template-hash") out.emplace(k, v);
  }
  return out;
}

std::string PolicyYaml(const std::string& name, const std::string& namespace_name,
                       const std::map<std::string, std::string>& selector,
                       const std::set<uint32_t>& permissive_ports) {
  YAML::Emitter e;
  e << YAML::BeginMap;
  e << YAML::Key << "apiVersion" << YAML::Value << "security.istio.io/v1";
  e << YAML::Key << "kind" << YAML::Value << "PeerAuthentication";
  e << YAML::Key << "metadata" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "name" << YAML::Value << name;
  e << YAML::Key << "namespace" << YAML::Value << namespace_name;
  e << YAML::EndMap;
  e << YAML::Key << "spec" << YAML::Value << YAML::BeginMap;
  if (!selector.empty()) {
    e << YAML::Key << "selector" << YAML::Value << YAML::BeginMap;
    e << YAML::Key << "matchLabels" << YAML::Value << YAML::BeginMap;
    // Quoted: a label value such as "true" or "1" must stay a string.
    for (const auto& [k, v] : selector) {
      e << YAML::Key << k << YAML::Value << YAML::DoubleQuoted << v;
    }
    e << YAML::EndMap << YAML::EndMap;
  }
  e << YAML::Key << "mtls" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "mode" << YAML::Value << "STRICT" << YAML::EndMap;
  if (!permissive_ports.empty()) {
    e << YAML::Key << "portLevelMtls" << YAML::Value << YAML::BeginMap;
    for (uint32_t port : permissive_ports) {
      e << YAML::Key << port << YAML::Value << YAML::BeginMap;
      e << YAML::Key << "mode" << YAML::Value << "PERMISSIVE" << YAML::EndMap;
    }
    e << YAML::EndMap;
  }
  e << YAML::EndMap << YAML::EndMap;
  return absl::StrCat(e.c_str(), "\n");
}

pb::Timestamp At(int64_t unix_ms) {
  pb::Timestamp t;
  t.set_unix_seconds(unix_ms / 1000);
  return t;
}

}  // namespace

std::string SuggestPeerAuthentication(const state::ClusterState& cluster,
                                      const std::string& namespace_name, const std::string& pod,
                                      const pb::StrictReadinessResponse& answer) {
  std::vector<std::string> docs;
  if (pod.empty()) docs.push_back(PolicyYaml("default", namespace_name, {}, {}));
  // One workload-level policy per selector: pods of one Deployment share it and their ports.
  std::map<std::map<std::string, std::string>, std::pair<std::string, std::set<uint32_t>>> byapp;
  for (const auto& w : answer.workloads()) {
    auto it = cluster.pods.find(absl::StrCat(w.namespace_(), "/", w.name()));
    if (it == cluster.pods.end()) continue;
    std::set<uint32_t> ports;
    for (const auto& p : w.ports()) {
      if (p.would_refuse()) ports.insert(p.port());
    }
    // A single pod asked for gets its own STRICT policy even when nothing needs plaintext.
    if (ports.empty() && pod.empty()) continue;
    auto selector = SelectorOf(it->second);
    if (selector.empty()) continue;  // nothing to select it by; see the note
    auto& [name, all] = byapp[selector];
    if (name.empty()) {
      auto app = selector.find("app");
      name = absl::StrCat(app != selector.end() ? app->second : w.name(), "-strict");
    }
    all.insert(ports.begin(), ports.end());
  }
  for (const auto& [selector, np] : byapp) {
    docs.push_back(PolicyYaml(np.first, namespace_name, selector, np.second));
  }
  if (docs.empty() && !pod.empty()) {
    // A pod without labels cannot be selected; the namespace-wide policy is the closest.
    docs.push_back(PolicyYaml("default", namespace_name, {}, {}));
  }
  std::string out;
  for (size_t i = 0; i < docs.size(); ++i) absl::StrAppend(&out, i ? "---\n" : "", docs[i]);
  return out;
}

absl::StatusOr<pb::StrictReadinessResponse> StrictReadiness(
    const StrictReadinessInputs& in, const ambit::dataplane::v1::StatsResponse& stats,
    const pb::StrictReadinessRequest& request) {
  const state::ClusterState& cluster = *in.cluster;
  const std::string& ns = request.namespace_();
  if (!request.name().empty()) {
    const std::string key = absl::StrCat(ns, "/", request.name());
    auto it = cluster.pods.find(key);
    if (it == cluster.pods.end()) {
      return absl::NotFoundError(absl::StrCat("pod ", key, " is not in the configuration"));
    }
    if (!in.enrolled.contains(key)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "pod ", key, " is not served by this node (", in.node_name, ") but by node \"",
          it->second.node_name, "\": ask the agent of that node, which sees its clients"));
    }
  }
  // Plaintext clients by pod, then port.
  std::map<std::string,
           std::map<uint32_t, std::vector<const ambit::dataplane::v1::PlaintextClient*>>>
      seen;
  for (const auto& c : stats.plaintext_clients()) seen[c.pod()][c.port()].push_back(&c);

  pb::StrictReadinessResponse out;
  for (const std::string& key : in.enrolled) {
    auto it = cluster.pods.find(key);
    if (it == cluster.pods.end()) continue;
    const state::Pod& pod = it->second;
    if (pod.namespace_name != ns || (!request.name().empty() && pod.name != request.name())) {
      continue;
    }
    auto* w = out.add_workloads();
    w->set_namespace_(pod.namespace_name);
    w->set_name(pod.name);
    auto mode = authz::ResolveMtlsMode(in.peer_authns, cluster.mesh.root_namespace,
                                       pod.namespace_name, pod.labels, 0);
    w->set_mtls_mode(std::string(authz::MtlsModeName(mode.mode)));
    w->set_mtls_policy(mode.policy);
    auto s = seen.find(key);
    if (s == seen.end()) continue;
    for (const auto& [port, clients] : s->second) {
      auto* p = w->add_ports();
      p->set_port(port);
      auto port_mode = authz::ResolveMtlsMode(in.peer_authns, cluster.mesh.root_namespace,
                                              pod.namespace_name, pod.labels, port);
      p->set_mtls_mode(std::string(authz::MtlsModeName(port_mode.mode)));
      for (const auto* c : clients) {
        auto* o = p->add_clients();
        o->set_address(c->source());
        o->set_workload(c->source_workload());
        o->set_connections(c->connections());
        o->set_refused(c->refused());
        *o->mutable_first_seen() = At(c->first_seen_unix_ms());
        *o->mutable_last_seen() = At(c->last_seen_unix_ms());
        // Delivered plaintext is what STRICT would refuse; refusals already happen.
        if (c->connections() > c->refused()) p->set_would_refuse(true);
      }
      if (p->would_refuse()) w->set_would_refuse(true);
    }
    if (w->would_refuse()) out.set_would_refuse(true);
  }
  out.set_suggested_peer_authentication(
      SuggestPeerAuthentication(cluster, ns, request.name(), out));
  out.add_notes(absl::StrCat(
      "clients seen by this node (", in.node_name,
      ") only: pods of the namespace on other nodes are answered by their own agents"));
  if (out.workloads().empty()) {
    out.add_notes(absl::StrCat("no pod of namespace ", ns, " is enrolled on this node"));
  }
  for (const auto& w : out.workloads()) {
    auto it = cluster.pods.find(absl::StrCat(w.namespace_(), "/", w.name()));
    if (w.would_refuse() && it != cluster.pods.end() && SelectorOf(it->second).empty()) {
      out.add_notes(absl::StrCat("pod ", it->first,
                                 " has no labels to select it by: its ports cannot be exempted "
                                 "(portLevelMtls needs a selector)"));
    }
  }
  return out;
}

}  // namespace ambit::node
