// Agent's side of ZDS (docs/ARCHITECTURE.md#zds): the CNI side hands a pod's network namespace
// over; the pod is enrolled through it by the next enrollment pass, and the add is acked once the
// pod is captured (listeners and BPF entries in place) or with the reason it is not.

#include <errno.h>
#include <fcntl.h>

#include "absl/strings/str_cat.h"
#include "agent/common/log.h"
#include "agent/common/netns.h"
#include "agent/common/status.h"
#include "agent/node/agent.h"
#include "agent/node/ca_only.h"

namespace ambit::node {
namespace {
constexpr const char* kComponent = "zds";
}  // namespace

absl::Status Agent::StartZds() {
  const std::string listen = options_.resolved_zds_listen();
  if (!listen.empty()) {
    zds::ZdsServer::Options o;
    o.path = listen;
    AMBIT_ASSIGN_OR_RETURN(zds_server_,
                           zds::ZdsServer::Create(*loop_, std::move(o), *this, zds_stats_));
    AMBIT_LOG(kComponent, Info) << "ZDS: ambit-cni hands pods over at " << listen;
  }
  if (!options_.zds_connect.empty()) {
    zds::ZdsClient::Options o;
    o.path = options_.zds_connect;
    zds_client_ = zds::ZdsClient::Start(*loop_, std::move(o), *this, zds_stats_);
    AMBIT_LOG(kComponent, Info) << "ZDS: connecting to istio-cni at " << options_.zds_connect;
  }
  return absl::OkStatus();
}

void Agent::ApplyZds(state::ClusterState* state, std::map<std::string, state::Pod>* originals) {
  std::vector<std::string> gone;
  zds_.ApplyInPlace(state, options_.node_name, &gone, originals);
  for (const std::string& uid : gone) {
    AMBIT_LOG(kComponent, Info) << "ZDS workload " << uid << " dropped: its pod left the "
                                << "configuration";
    if (auto p = zds_pending_.find(uid); p != zds_pending_.end()) {
      zds::Answer answer = std::move(p->second.answer);
      zds_pending_.erase(p);
      answer(absl::StrCat("the pod of ", uid, " left the configuration before it was captured"));
    }
  }
}

const state::Pod* Agent::ConfigPod(const std::string& key) const {
  if (auto o = zds_originals_.find(key); o != zds_originals_.end()) return &o->second;
  auto p = state_->pods.find(key);
  return p == state_->pods.end() ? nullptr : &p->second;
}

void Agent::ZdsChanged() {
  // A copy of the pods on a ZDS event (a pod added to or removed from this node), never on a
  // configuration load.
  state::ClusterState next = *state_;
  std::map<std::string, state::Pod> originals = zds_originals_;
  ZdsWorkloads::Restore(&next, &originals);
  ApplyZds(&next, &originals);
  zds_originals_ = std::move(originals);
  // An add that hands the namespace a pod already has (a CNI side repeating itself) changes
  // nothing: no enrollment pass, no new configuration generation.
  if (next != *state_) {
    state_ = std::make_shared<const state::ClusterState>(std::move(next));
    entitlements_->Update(IdentitiesByNode(*state_));
    Reconcile();
  }
  ResolveZdsAcks();
}

void Agent::OnAdd(zds::Source source, zds::Request request, zds::Answer answer) {
  const std::string uid = request.uid;
  const std::string key = request.info.namespace_name + "/" + request.info.name;
  // The node's own namespace is never enrolled: refused here, at once, and again by the guard
  // in OpenNetns on the descriptor actually used.
  if (absl::Status s = node_netns_->Check(request.netns.get()); !s.ok()) {
    AMBIT_LOG(kComponent, Error) << zds::SourceName(source) << " add " << uid << " (pod " << key
                                 << ") refused: " << s.message();
    answer(absl::StrCat("pod ", key, " refused: ", s.message()));
    return;
  }
  ZdsWorkload w;
  w.uid = uid;
  w.source = source;
  w.namespace_name = request.info.namespace_name;
  w.name = request.info.name;
  w.service_account = request.info.service_account;
  auto cookie = NetnsCookie(request.netns.get());
  if (!cookie.ok()) {
    answer(absl::StrCat("pod ", key, ": ", cookie.status().message()));
    return;
  }
  w.netns_cookie = *cookie;
  // A pod being created has no addresses in its object yet (the CNI is assigning them now).
  auto addresses = netns_probe_->Addresses(request.netns.get());
  if (addresses.ok()) {
    w.addresses = *std::move(addresses);
  } else {
    AMBIT_LOG(kComponent, Warning)
        << "pod " << key << ": reading its namespace's addresses: " << addresses.status().message();
  }
  w.netns = std::move(request.netns);
  if (absl::Status s = zds_.Add(std::move(w)); !s.ok()) {
    AMBIT_LOG(kComponent, Error) << zds::SourceName(source) << " add " << uid << " (pod " << key
                                 << "): " << s.message();
    answer(std::string(s.message()));
    return;
  }
  AMBIT_LOG(kComponent, Info) << zds::SourceName(source) << " handed over pod " << key
                              << " uid=" << uid << " netns_cookie=" << *cookie;
  if (auto p = zds_pending_.find(uid); p != zds_pending_.end()) {
    zds::Answer older = std::move(p->second.answer);
    zds_pending_.erase(p);
    older(absl::StrCat("replaced by a newer add of ", uid));
  }
  zds_pending_[uid] = {std::move(answer), clock_->Now() + options_.zds_ack_timeout};
  // The deadline is checked by the loop's timer, so an unanswered add never waits past it.
  loop_->RunAfter(options_.zds_ack_timeout + absl::Milliseconds(1), [this] { ResolveZdsAcks(); });
  ZdsChanged();
}

std::string Agent::OnKeep(zds::Source source, const std::string& uid) {
  const ZdsWorkload* w = zds_.ByUid(uid);
  if (w == nullptr || w->source != source) {
    return absl::StrCat("keep of ", uid, ": no such workload from ", zds::SourceName(source));
  }
  return "";
}

std::string Agent::OnDel(zds::Source source, const std::string& uid) {
  const ZdsWorkload* w = zds_.ByUid(uid);
  // A del of a pod never handed over (or already gone) is done: the CNI side's DEL is best
  // effort and may repeat.
  if (w == nullptr) return "";
  if (w->source != source) {
    return absl::StrCat("del of ", uid, ": handed over by ", zds::SourceName(w->source), ", not ",
                        zds::SourceName(source));
  }
  AMBIT_LOG(kComponent, Info) << zds::SourceName(source) << " removed pod " << w->Key()
                              << " uid=" << uid;
  zds_.Remove(uid);
  if (auto p = zds_pending_.find(uid); p != zds_pending_.end()) {
    zds::Answer answer = std::move(p->second.answer);
    zds_pending_.erase(p);
    answer(absl::StrCat(uid, " was deleted before it was captured"));
  }
  ZdsChanged();
  return "";
}

void Agent::OnSnapshotSent(zds::Source source, const std::vector<std::string>& remove) {
  for (const std::string& uid : remove) {
    if (const ZdsWorkload* w = zds_.ByUid(uid); w != nullptr) {
      AMBIT_LOG(kComponent, Info) << zds::SourceName(source) << " snapshot no longer names pod "
                                  << w->Key() << " uid=" << uid << ": removed";
    }
    zds_.Remove(uid);
    if (auto p = zds_pending_.find(uid); p != zds_pending_.end()) {
      zds::Answer answer = std::move(p->second.answer);
      zds_pending_.erase(p);
      answer(absl::StrCat(uid, " is not in the new snapshot"));
    }
  }
  ZdsChanged();
}

std::set<std::string> Agent::Known(zds::Source source) const { return zds_.UidsOf(source); }

std::string Agent::ZdsAckError(const std::string& uid, bool* final) const {
  *final = false;
  const ZdsWorkload* w = zds_.ByUid(uid);
  if (w == nullptr) {
    *final = true;
    return absl::StrCat(uid, " is no longer handed over");
  }
  const std::string key = w->Key();
  const state::Pod* conf = ConfigPod(key);
  if (conf == nullptr) {
    return absl::StrCat("pod ", key, " (uid ", uid, ") is not in the configuration of node ",
                        options_.node_name);
  }
  if (!conf->node_name.empty() && conf->node_name != options_.node_name) {
    *final = true;
    return absl::StrCat("pod ", key, " is scheduled on node ", conf->node_name, ", not ",
                        options_.node_name);
  }
  const state::Pod& pod = state_->pods.at(key);
  if (pod.netns_path != w->Marker()) {
    // Not in the mesh (ambit-cni's pod without the ambient label): nothing to capture; its
    // namespace is kept for when it joins.
    *final = true;
    return "";
  }
  if (auto c = state_->ip_conflicts.find(key); c != state_->ip_conflicts.end()) {
    *final = true;
    return absl::StrCat("pod ", key, " is not enrolled: ", c->second.Summary());
  }
  if (auto r = enrollment_.refused().find(key); r != enrollment_.refused().end()) {
    *final = true;
    return r->second;
  }
  if (auto e = enrolled_.find(key);
      e != enrolled_.end() && e->second.netns_cookie == w->netns_cookie) {
    *final = true;
    return "";
  }
  if (auto f = enrollment_.failed().find(key); f != enrollment_.failed().end()) {
    return absl::StrCat("pod ", key, " is not captured: ", f->second);
  }
  return absl::StrCat("pod ", key, " is not captured yet");
}

void Agent::ResolveZdsAcks() {
  const absl::Time now = clock_->Now();
  std::vector<std::pair<zds::Answer, std::string>> answers;
  for (auto it = zds_pending_.begin(); it != zds_pending_.end();) {
    bool final = false;
    std::string error = ZdsAckError(it->first, &final);
    if (!final && now < it->second.deadline) {
      ++it;
      continue;
    }
    if (!error.empty() && !final) {
      error = absl::StrCat(error, " (after ", absl::FormatDuration(options_.zds_ack_timeout), ")");
    }
    if (!error.empty()) {
      AMBIT_LOG(kComponent, Warning) << "ack " << it->first << ": " << error;
    }
    answers.emplace_back(std::move(it->second.answer), std::move(error));
    it = zds_pending_.erase(it);
  }
  // Answered after the table is settled: an answer may run the next request of its session.
  for (auto& [answer, error] : answers) answer(std::move(error));
}

}  // namespace ambit::node
