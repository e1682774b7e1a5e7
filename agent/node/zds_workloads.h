#pragma once

// The pods a CNI side handed over through ZDS (agent/zds/), with their network namespaces, and
// how they change the configuration the enrollment pass works from. A ZDS workload is matched to
// the configuration's pod by namespace/name; the pod then names the handed namespace (a marker
// in its netns_path that Agent::OpenNetns resolves to the registry's descriptor), which comes
// before the ambit.dev/netns annotation and the search by IP (enroll::NetnsFinder). The node's
// own namespace is still refused, by the guard in OpenNetns.
//
// Thread-safety: none; the agent's control thread owns it.

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "agent/common/ip_address.h"
#include "agent/common/unique_fd.h"
#include "agent/state/model.h"
#include "agent/zds/session.h"

namespace ambit::node {

struct ZdsWorkload {
  std::string uid;
  zds::Source source = zds::Source::kAmbitCni;
  std::string namespace_name, name, service_account;
  UniqueFd netns;
  uint64_t netns_cookie = 0;
  // The namespace's own addresses (RTM_GETADDR at the add): the pod's until its object has some.
  std::vector<IpAddress> addresses;
  // Bumped when an add of the same uid hands another namespace: the pod is enrolled again.
  uint64_t generation = 0;

  std::string Key() const { return namespace_name + "/" + name; }
  // What the pod's netns_path says while this workload holds it.
  std::string Marker() const;
};

// "ZDS from ambit-cni", "ZDS from istio-cni": how `ambitctl workloads` says the netns was found.
std::string ZdsNetnsSource(zds::Source source);

class ZdsWorkloads {
 public:
  // Workloads held at once (each holds a netns descriptor). Kubernetes runs at most 110 pods on
  // a node by default and few clusters raise it past 250; beyond this an add is refused.
  static constexpr size_t kMaxWorkloads = 512;

  // Adds or replaces (same uid) a workload. RESOURCE_EXHAUSTED beyond kMaxWorkloads.
  absl::Status Add(ZdsWorkload w);
  // Removes a workload, closing its descriptor; its pod is not enrolled through anything else
  // until the configuration drops it or a new add names it. False for an unknown uid.
  bool Remove(const std::string& uid);

  const ZdsWorkload* ByUid(const std::string& uid) const;
  // The workload behind a netns_path marker, or nullptr.
  const ZdsWorkload* ByMarker(const std::string& netns_path) const;
  std::set<std::string> UidsOf(zds::Source source) const;
  size_t size() const { return by_uid_.size(); }

  // The configuration with the workloads applied: a matched pod that counts as in the mesh (any
  // pod from istio-cni, which sends only ambient pods; a pod from ambit-cni when InMesh) names
  // its workload's namespace, takes the namespace's addresses while it has none of its own, and
  // is placed on `node_name` when it names no node. A removed workload's pod is out of the mesh
  // until a new add. Also forgets workloads whose pod was seen and is gone from `config` (their
  // uids are returned, descriptors closed).
  state::ClusterState Apply(const state::ClusterState& config, const std::string& node_name,
                            std::vector<std::string>* gone);
  // The same, applied to `state` in place (no copy of a large cluster's pods): before a pod is
  // changed, the configuration's version of it goes into *originals (by namespace/name), which
  // Restore puts back.
  void ApplyInPlace(state::ClusterState* state, const std::string& node_name,
                    std::vector<std::string>* gone, std::map<std::string, state::Pod>* originals);
  // Undoes ApplyInPlace: the configuration's versions of the changed pods go back into `state`;
  // *originals is emptied.
  static void Restore(state::ClusterState* state, std::map<std::string, state::Pod>* originals);

 private:
  std::map<std::string, ZdsWorkload> by_uid_;
  std::map<std::string, std::string> uid_by_key_;  // the latest add for namespace/name
  std::set<std::string> seen_;                     // uids whose pod the configuration had
  // Pods whose workload was removed (namespace/name), oldest first, bounded.
  std::deque<std::string> removed_;
};

}  // namespace ambit::node
