#include "agent/node/wire_report.h"

#include <netinet/in.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ambit::node {

WireCounters& WireCounters::operator+=(const WireCounters& o) {
  bytes += o.bytes;
  packets += o.packets;
  payload += o.payload;
  syns += o.syns;
  resets += o.resets;
  return *this;
}

namespace {

WireKey KeyOf(const bpf::WireEntry& e) {
  return WireKey{e.netns_cookie, e.peer, e.port, e.proto, e.egress, e.local_port, e.mtls};
}

WireCounters CountersOf(const bpf::WireEntry& e) {
  return WireCounters{e.bytes, e.packets, e.payload, e.syns, e.resets};
}

// Growth from `before` to `now`; a counter that went down means the entry was evicted and
// created again, so all of `now` is new.
WireCounters Growth(const WireCounters& before, const WireCounters& now) {
  if (now.bytes < before.bytes || now.packets < before.packets || now.payload < before.payload ||
      now.syns < before.syns || now.resets < before.resets) {
    return now;
  }
  return WireCounters{now.bytes - before.bytes, now.packets - before.packets,
                      now.payload - before.payload, now.syns - before.syns,
                      now.resets - before.resets};
}

absl::Time BucketStart(absl::Time t) {
  return absl::FromUnixSeconds(absl::ToUnixSeconds(t) -
                               absl::ToUnixSeconds(t) % absl::ToInt64Seconds(kWireBucket));
}

std::string Clock(absl::Time t) { return absl::FormatTime("%H:%M:%S UTC", t, absl::UTCTimeZone()); }

}  // namespace

void WireLedger::Fold(absl::Time now, const std::vector<bpf::WireEntry>& read) {
  const bool baseline = started_ == absl::InfinitePast();
  if (baseline) started_ = now;
  WireTotals current;
  WireTotals growth;
  for (const bpf::WireEntry& e : read) {
    const WireKey key = KeyOf(e);
    const WireCounters value = CountersOf(e);
    current[key] = value;
    auto last = last_read_.find(key);
    WireCounters grew = last == last_read_.end() ? value : Growth(last->second, value);
    if (grew.empty()) continue;
    totals_[key] += grew;
    if (baseline) {
      inherited_ = true;
    } else {
      growth[key] += grew;
    }
  }
  last_read_ = std::move(current);
  if (growth.empty()) return;
  const absl::Time start = BucketStart(now);
  if (buckets_.empty() || buckets_.back().start < start) {
    buckets_.push_back(Bucket{start, {}});
    while (buckets_.size() > kWireBuckets) buckets_.pop_front();
  }
  for (auto& [key, c] : growth) buckets_.back().growth[key] += c;
}

void WireLedger::ForgetPod(uint64_t netns_cookie) {
  auto drop = [netns_cookie](WireTotals& m) {
    std::erase_if(m,
                  [netns_cookie](const auto& kv) { return kv.first.netns_cookie == netns_cookie; });
  };
  drop(last_read_);
  drop(totals_);
  for (Bucket& b : buckets_) drop(b.growth);
}

absl::Time WireLedger::history_start() const {
  if (started_ == absl::InfinitePast()) return absl::InfiniteFuture();
  // Buckets dropped off the front: the history starts at the oldest kept.
  if (buckets_.size() == kWireBuckets) return buckets_.front().start;
  return started_;
}

absl::StatusOr<std::pair<WireTotals, absl::Time>> WireLedger::Since(absl::Time since) const {
  if (since < history_start()) {
    return absl::OutOfRangeError(absl::StrCat(
        "no wire history before ", Clock(history_start()), " (ambitd keeps ",
        absl::FormatDuration(kWireBucket * kWireBuckets),
        " from its start); ask for a shorter --since, or none for every byte counted"));
  }
  const absl::Time start = std::max(BucketStart(since), started_);
  WireTotals out;
  for (const Bucket& b : buckets_) {
    if (b.start < BucketStart(since)) continue;
    for (const auto& [key, c] : b.growth) out[key] += c;
  }
  return std::make_pair(std::move(out), start);
}

std::string WireProtocolName(uint8_t proto) {
  if (proto == IPPROTO_TCP) return "tcp";
  if (proto == IPPROTO_UDP) return "udp";
  return absl::StrCat("ip-", proto);
}

std::vector<PodWireReport> BuildWireReport(const WireReportInput& in) {
  // (cookie) -> flows keyed without the direction.
  using FlowKey =
      std::tuple<IpAddress, uint8_t, uint16_t, bool, bool>;  // peer proto port local mtls
  std::map<uint64_t, std::map<FlowKey, WireFlowReport>> by_pod;
  for (const auto& [cookie, pod] : in.pods) {
    if (!in.pod_filter.empty() && pod->Key() != in.pod_filter) continue;
    by_pod[cookie];
  }
  for (const auto& [key, c] : *in.totals) {
    auto pod = by_pod.find(key.netns_cookie);
    if (pod == by_pod.end()) continue;  // a pod not asked for, or gone
    WireFlowReport& f =
        pod->second[FlowKey{key.peer, key.proto, key.port, key.local_port, key.mtls}];
    f.peer = key.peer;
    f.proto = key.proto;
    f.port = key.port;
    f.port_is_local = key.local_port;
    f.mtls = key.mtls;
    (key.egress ? f.out : f.in) += c;
  }
  const std::string since =
      absl::StrCat(in.window_starts_earlier ? "before " : "", Clock(in.window_start));
  std::vector<PodWireReport> out;
  for (auto& [cookie, flows] : by_pod) {
    const state::Pod& pod = *in.pods.at(cookie);
    PodWireReport r;
    r.pod = pod.Key();
    // Per peer (its pod, else its address: a pod's IPv4 and IPv6 are one peer): bytes, and
    // whether any were plaintext.
    std::map<std::string, std::pair<uint64_t, bool>> peers;
    for (auto& [fk, f] : flows) {
      if (const state::Pod* p = in.peer_pod ? in.peer_pod(f.peer) : nullptr) {
        f.peer_workload = p->Key();
      }
      const uint64_t bytes = f.out.bytes + f.in.bytes;
      const std::string peer_name = f.peer_workload.empty() ? f.peer.ToString() : f.peer_workload;
      auto& peer = peers[peer_name];
      peer.first += bytes;
      if (f.mtls) {
        r.encrypted_bytes += bytes;
        f.verdict = "mtls";
        r.flows.push_back(std::move(f));
        continue;
      }
      r.plaintext_bytes += bytes;
      f.verdict = "plaintext";
      std::string where = absl::StrCat(f.port_is_local ? r.pod : peer_name, " port ", f.port, "/",
                                       WireProtocolName(f.proto));
      std::string line =
          absl::StrCat("plaintext between ", r.pod, " and ", peer_name, " on ", where, ": ",
                       f.out.bytes, " bytes out, ", f.in.bytes, " bytes in");
      if (f.port_is_local && f.proto == IPPROTO_TCP && in.mtls_at) {
        const authz::PeerAuthnDecision mode = in.mtls_at(pod, f.port);
        f.mtls_mode = std::string(authz::MtlsModeName(mode.mode));
        if (mode.mode == authz::MtlsMode::kStrict) {
          // The tunnel answers a refused plaintext connection with a reset and no data, so the
          // client's SYN (and maybe its first bytes) crossed the wire but nothing reached the app.
          if (f.out.payload == 0 && f.in.syns > 0 && f.out.resets >= f.in.syns) {
            f.verdict = "plaintext-refused";
            line = absl::StrCat(f.in.syns, " plaintext connection attempt(s) from ", peer_name,
                                " to ", where, " refused under STRICT (",
                                mode.policy.empty() ? "default" : mode.policy,
                                "): reset, no byte reached the app");
            r.flows.push_back(std::move(f));
            r.verdicts.push_back(std::move(line));
            continue;
          }
          f.verdict = "plaintext-under-strict";
          r.plaintext_under_strict = true;
          line = absl::StrCat(
              "plaintext from ", peer_name, " to ", where, " was answered, and STRICT (",
              mode.policy.empty() ? "default" : mode.policy, ") applies there now: ", f.in.payload,
              " payload bytes in, ", f.out.payload, " out");
        } else {
          line += absl::StrCat(" (", f.mtls_mode, ")");
        }
      }
      peer.second = true;
      r.flows.push_back(std::move(f));
      r.verdicts.push_back(std::move(line));
    }
    for (const auto& [peer_name, p] : peers) {
      if (p.second) continue;
      r.verdicts.push_back(absl::StrCat("every byte between ", r.pod, " and ", peer_name, " since ",
                                        since, " was mTLS (", p.first, " bytes)"));
    }
    if (flows.empty()) {
      r.verdicts.push_back(
          absl::StrCat("no traffic crossed ", r.pod, "'s interfaces since ", since));
    }
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace ambit::node
