#include "agent/state/pod_pack.h"

#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <string>

#include "absl/time/time.h"

namespace ambit::state {
namespace {

// The buffer is written only by Add, so a read cannot come up short; if one ever did (a bug
// here), the reader stops there and reports no more pods.

// Where a short read leaves the input: empty, and recognisable by its address.
constexpr char kShortMark[] = "";
constexpr absl::string_view kShort(kShortMark, 0);

void PutVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

uint64_t GetVarint(absl::string_view* in) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (in->empty()) {
      *in = kShort;
      return 0;
    }
    const auto byte = static_cast<uint8_t>(in->front());
    in->remove_prefix(1);
    v |= uint64_t{byte & 0x7fu} << shift;
    if ((byte & 0x80) == 0) break;
  }
  return v;
}

void PutString(absl::string_view s, std::string* out) {
  PutVarint(s.size(), out);
  out->append(s.data(), s.size());
}

std::string GetString(absl::string_view* in) {
  const uint64_t n = GetVarint(in);
  if (n > in->size()) {
    *in = kShort;
    return {};
  }
  std::string s(in->substr(0, n));
  in->remove_prefix(n);
  return s;
}

void PutMap(const std::map<std::string, std::string>& m, std::string* out) {
  PutVarint(m.size(), out);
  for (const auto& [k, v] : m) {
    PutString(k, out);
    PutString(v, out);
  }
}

void GetMap(absl::string_view* in, std::map<std::string, std::string>* m) {
  m->clear();
  for (uint64_t n = GetVarint(in); n > 0; --n) {
    std::string k = GetString(in);
    m->emplace_hint(m->end(), std::move(k), GetString(in));
  }
}

// absl::Time as whole seconds and nanoseconds: exact for every finite time; the infinities
// (first_seen before the loader stamps it) have a tag of their own.
enum TimeTag : uint8_t { kAbsent = 0, kFinite = 1, kInfinitePast = 2, kInfiniteFuture = 3 };

void PutTime(std::optional<absl::Time> t, std::string* out) {
  if (!t.has_value()) {
    out->push_back(kAbsent);
  } else if (*t == absl::InfinitePast()) {
    out->push_back(kInfinitePast);
  } else if (*t == absl::InfiniteFuture()) {
    out->push_back(kInfiniteFuture);
  } else {
    out->push_back(kFinite);
    const int64_t seconds = absl::ToUnixSeconds(*t);
    const int64_t nanos = absl::ToInt64Nanoseconds(*t - absl::FromUnixSeconds(seconds));
    PutVarint(static_cast<uint64_t>(seconds), out);
    PutVarint(static_cast<uint64_t>(nanos), out);
  }
}

std::optional<absl::Time> GetTime(absl::string_view* in) {
  if (in->empty()) {
    *in = kShort;
    return std::nullopt;
  }
  const auto tag = static_cast<uint8_t>(in->front());
  in->remove_prefix(1);
  switch (tag) {
    case kAbsent:
      return std::nullopt;
    case kInfinitePast:
      return absl::InfinitePast();
    case kInfiniteFuture:
      return absl::InfiniteFuture();
    default: {
      const auto seconds = static_cast<int64_t>(GetVarint(in));
      const auto nanos = static_cast<int64_t>(GetVarint(in));
      return absl::FromUnixSeconds(seconds) + absl::Nanoseconds(nanos);
    }
  }
}

}  // namespace

void PodPack::Add(const Pod& pod) {
  PutString(pod.name, &bytes_);
  PutString(pod.namespace_name, &bytes_);
  PutString(pod.uid, &bytes_);
  PutMap(pod.labels, &bytes_);
  PutMap(pod.annotations, &bytes_);
  PutString(pod.service_account, &bytes_);
  PutString(pod.node_name, &bytes_);
  PutString(pod.workload_name, &bytes_);
  PutString(pod.canonical_service, &bytes_);
  PutString(pod.canonical_revision, &bytes_);
  PutVarint(pod.ips.size(), &bytes_);
  for (const auto& ip : pod.ips) {
    bytes_.append(reinterpret_cast<const char*>(ip.bytes().data()), ip.bytes().size());
  }
  PutString(pod.netns_path, &bytes_);
  PutString(pod.source_file, &bytes_);
  PutTime(pod.creation_time, &bytes_);
  PutTime(pod.first_seen, &bytes_);
  PutVarint(pod.first_seen_load, &bytes_);
  ++count_;
}

bool PodPack::Reader::Next(Pod* pod) {
  if (rest_.empty() || rest_.data() == kShort.data()) return false;
  pod->name = GetString(&rest_);
  pod->namespace_name = GetString(&rest_);
  pod->uid = GetString(&rest_);
  std::map<std::string, std::string> labels;
  GetMap(&rest_, &labels);
  pod->labels = std::move(labels);
  GetMap(&rest_, &pod->annotations);
  pod->service_account = GetString(&rest_);
  pod->node_name = GetString(&rest_);
  pod->workload_name = GetString(&rest_);
  pod->canonical_service = GetString(&rest_);
  pod->canonical_revision = GetString(&rest_);
  pod->ips.clear();
  const uint64_t ips = GetVarint(&rest_);
  pod->ips.reserve(ips);
  for (uint64_t i = 0; i < ips; ++i) {
    if (rest_.size() < 16) {
      rest_ = kShort;
      return false;
    }
    pod->ips.push_back(IpAddress::FromBytes(reinterpret_cast<const uint8_t*>(rest_.data())));
    rest_.remove_prefix(16);
  }
  pod->netns_path = GetString(&rest_);
  pod->source_file = GetString(&rest_);
  pod->creation_time = GetTime(&rest_);
  pod->first_seen = GetTime(&rest_).value_or(absl::InfinitePast());
  pod->first_seen_load = GetVarint(&rest_);
  return rest_.data() != kShort.data();
}

}  // namespace ambit::state
