#include "agent/node/zds_workloads.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ambit::node {

std::string ZdsWorkload::Marker() const {
  return absl::StrCat("zds:", zds::SourceName(source), "/", uid, "#", generation);
}

std::string ZdsNetnsSource(zds::Source source) {
  return absl::StrCat("ZDS from ", zds::SourceName(source));
}

absl::Status ZdsWorkloads::Add(ZdsWorkload w) {
  auto it = by_uid_.find(w.uid);
  if (it == by_uid_.end() && by_uid_.size() >= kMaxWorkloads) {
    return absl::ResourceExhaustedError(absl::StrCat("the agent holds ", kMaxWorkloads,
                                                     " ZDS workloads already (the most it "
                                                     "takes); ",
                                                     w.uid, " refused"));
  }
  if (it != by_uid_.end()) {
    w.generation = it->second.netns_cookie == w.netns_cookie ? it->second.generation
                                                             : it->second.generation + 1;
    if (it->second.Key() != w.Key()) {
      if (auto k = uid_by_key_.find(it->second.Key());
          k != uid_by_key_.end() && k->second == w.uid) {
        uid_by_key_.erase(k);
      }
    }
  }
  const std::string key = w.Key();
  std::erase(removed_, key);
  uid_by_key_[key] = w.uid;
  by_uid_.insert_or_assign(w.uid, std::move(w));
  return absl::OkStatus();
}

bool ZdsWorkloads::Remove(const std::string& uid) {
  auto it = by_uid_.find(uid);
  if (it == by_uid_.end()) return false;
  const std::string key = it->second.Key();
  if (auto k = uid_by_key_.find(key); k != uid_by_key_.end() && k->second == uid) {
    uid_by_key_.erase(k);
    std::erase(removed_, key);
    removed_.push_back(key);
    if (removed_.size() > kMaxWorkloads) removed_.pop_front();
  }
  seen_.erase(uid);
  by_uid_.erase(it);
  return true;
}

const ZdsWorkload* ZdsWorkloads::ByUid(const std::string& uid) const {
  auto it = by_uid_.find(uid);
  return it == by_uid_.end() ? nullptr : &it->second;
}

const ZdsWorkload* ZdsWorkloads::ByMarker(const std::string& netns_path) const {
  if (!netns_path.starts_with("zds:")) return nullptr;
  for (const auto& [key, uid] : uid_by_key_) {
    const ZdsWorkload& w = by_uid_.at(uid);
    if (w.Marker() == netns_path) return &w;
  }
  return nullptr;
}

std::set<std::string> ZdsWorkloads::UidsOf(zds::Source source) const {
  std::set<std::string> out;
  for (const auto& [uid, w] : by_uid_) {
    if (w.source == source) out.insert(uid);
  }
  return out;
}

state::ClusterState ZdsWorkloads::Apply(const state::ClusterState& config,
                                        const std::string& node_name,
                                        std::vector<std::string>* gone) {
  state::ClusterState out = config;
  std::map<std::string, state::Pod> originals;
  ApplyInPlace(&out, node_name, gone, &originals);
  return out;
}

void ZdsWorkloads::ApplyInPlace(state::ClusterState* state, const std::string& node_name,
                                std::vector<std::string>* gone,
                                std::map<std::string, state::Pod>* originals) {
  for (auto it = by_uid_.begin(); it != by_uid_.end();) {
    const bool in_config = state->pods.contains(it->second.Key());
    if (in_config) seen_.insert(it->first);
    if (!in_config && seen_.contains(it->first)) {
      if (gone != nullptr) gone->push_back(it->first);
      const std::string uid = it->first;
      ++it;
      Remove(uid);
      continue;
    }
    ++it;
  }
  // A pod the configuration no longer has needs no mark of its removal.
  std::erase_if(removed_, [&](const std::string& key) { return !state->pods.contains(key); });
  // The configuration's version, kept before the first change to the pod.
  auto changing = [&](const std::string& key, state::Pod& pod) -> state::Pod& {
    originals->try_emplace(key, pod);
    return pod;
  };
  for (const std::string& key : removed_) {
    state::Pod& pod = changing(key, state->pods.at(key));
    pod.netns_path.clear();
    pod.labels[std::string(state::kDataplaneModeLabel)] = "none";
  }
  for (const auto& [key, uid] : uid_by_key_) {
    auto p = state->pods.find(key);
    if (p == state->pods.end()) continue;
    const ZdsWorkload& w = by_uid_.at(uid);
    state::Pod& pod = p->second;
    // Namespaces are never changed here, so InMesh sees the configuration's namespace labels.
    if (w.source != zds::Source::kIstioCni && !state::InMesh(pod, *state)) continue;
    if (!pod.node_name.empty() && pod.node_name != node_name) continue;
    changing(key, pod);
    pod.node_name = node_name;
    pod.netns_path = w.Marker();
    if (pod.ips.empty()) pod.ips = w.addresses;
  }
}

void ZdsWorkloads::Restore(state::ClusterState* state,
                           std::map<std::string, state::Pod>* originals) {
  for (auto& [key, pod] : *originals) state->pods.insert_or_assign(key, std::move(pod));
  originals->clear();
}

}  // namespace ambit::node
