#include "agent/tunnel/plaintext_clients.h"

#include <algorithm>
#include <map>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/common/metrics.h"
#include "ambit/dataplane/v1/dataplane.pb.h"

namespace ambit::tunnel {
namespace {

namespace pb = ::ambit::dataplane::v1;

std::string PortKey(const std::string& pod, const std::string& port) {
  return absl::StrCat(pod, "\x1f", port);
}

void AddCounter(pb::StatsResponse* out, const metrics::Metric& metric, const std::string& pod,
                const std::string& port, uint64_t value) {
  auto* c = out->add_counters();
  c->set_name(std::string(metric.name));
  auto* l = c->add_labels();
  l->set_name("pod");
  l->set_value(pod);
  l = c->add_labels();
  l->set_name("port");
  l->set_value(port);
  c->set_value(value);
}

}  // namespace

void PlaintextClients::Record(const std::string& pod, uint16_t port, const IpAddress& source,
                              const std::string& source_workload, bool refused, absl::Time now) {
  std::string key = absl::StrCat(pod, "\x1f", port, "\x1f", source.ToString());
  auto it = index_.find(key);
  if (it != index_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);  // most recent first, iterators stay valid
  } else {
    if (lru_.size() >= max_entries_ && !lru_.empty()) {
      index_.erase(lru_.back().key);
      lru_.pop_back();
      ++evicted_;
    }
    Entry fresh;
    fresh.key = key;
    fresh.pod = pod;
    fresh.port = port;
    fresh.source = source;
    fresh.first_seen = now;
    lru_.push_front(std::move(fresh));
    index_.emplace(std::move(key), lru_.begin());
  }
  Entry& e = lru_.front();
  e.source_workload = source_workload;  // the address may have changed hands since
  ++e.connections;
  if (refused) ++e.refused;
  e.last_seen = now;

  std::string port_key = PortKey(pod, absl::StrCat(port));
  auto p = ports_.find(port_key);
  if (p == ports_.end()) {
    if (ports_.size() >= max_ports_) port_key = PortKey(pod, "other");
    p = ports_.try_emplace(std::move(port_key)).first;
  }
  ++p->second.connections;
  if (refused) ++p->second.refused;
}

void PlaintextClients::ForgetPod(const std::string& pod) {
  for (auto it = lru_.begin(); it != lru_.end();) {
    if (it->pod == pod) {
      index_.erase(it->key);
      it = lru_.erase(it);
    } else {
      ++it;
    }
  }
  const std::string prefix = absl::StrCat(pod, "\x1f");
  for (auto it = ports_.begin(); it != ports_.end();) {
    if (it->first.rfind(prefix, 0) == 0) {
      ports_.erase(it++);  // flat_hash_map's erase(iterator) returns void
    } else {
      ++it;
    }
  }
}

void PlaintextClients::AppendTo(bool metrics, pb::StatsResponse* out) const {
  for (const Entry& e : lru_) {
    auto* c = out->add_plaintext_clients();
    c->set_pod(e.pod);
    c->set_port(e.port);
    c->set_source(e.source.ToString());
    c->set_source_workload(e.source_workload);
    c->set_connections(e.connections);
    c->set_refused(e.refused);
    c->set_first_seen_unix_ms(absl::ToUnixMillis(e.first_seen));
    c->set_last_seen_unix_ms(absl::ToUnixMillis(e.last_seen));
  }
  if (!metrics) return;
  for (const auto& [key, count] : ports_) {
    const size_t sep = key.find('\x1f');
    AddCounter(out, metrics::kPlaintextConnections, key.substr(0, sep), key.substr(sep + 1),
               count.connections);
  }
  auto* c = out->add_counters();
  c->set_name(std::string(metrics::kPlaintextClientsEvicted.name));
  c->set_value(evicted_);
}

void MergePlaintextClients(bool metrics, pb::StatsResponse* stats) {
  std::map<std::tuple<std::string, uint32_t, std::string>, pb::PlaintextClient> merged;
  for (auto& c : *stats->mutable_plaintext_clients()) {
    auto [it, fresh] = merged.try_emplace({c.pod(), c.port(), c.source()}, c);
    if (fresh) continue;
    pb::PlaintextClient& m = it->second;
    m.set_connections(m.connections() + c.connections());
    m.set_refused(m.refused() + c.refused());
    m.set_first_seen_unix_ms(std::min(m.first_seen_unix_ms(), c.first_seen_unix_ms()));
    if (c.last_seen_unix_ms() > m.last_seen_unix_ms()) {
      m.set_last_seen_unix_ms(c.last_seen_unix_ms());
      m.set_source_workload(c.source_workload());
    }
  }
  stats->clear_plaintext_clients();
  std::map<std::pair<std::string, uint32_t>, uint64_t> sources;
  for (auto& [key, c] : merged) {
    ++sources[{c.pod(), c.port()}];
    *stats->add_plaintext_clients() = std::move(c);
  }
  if (!metrics) return;
  for (const auto& [key, n] : sources) {
    AddCounter(stats, metrics::kPlaintextClients, key.first, absl::StrCat(key.second), n);
  }
}

}  // namespace ambit::tunnel
