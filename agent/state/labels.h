#pragma once

// SharedLabels: a pod's labels, held once for every pod that has the same ones. The replicas of a
// workload carry equal labels, and ambitd holds a pod for every peer of the cluster, so a map per
// pod would be most of a peer pod's cost. Reads like a const std::map (and converts to one);
// a write copies the map first unless this pod is its only holder. Value type; a const
// SharedLabels may be read from any thread.

#include <cstddef>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"

namespace ambit::state {

class LabelPool;

class SharedLabels {
 public:
  using Map = std::map<std::string, std::string>;
  using key_type = Map::key_type;
  using mapped_type = Map::mapped_type;
  using value_type = Map::value_type;
  using size_type = Map::size_type;
  using const_iterator = Map::const_iterator;
  using iterator = Map::const_iterator;  // read-only: writes go through Mutable or operator[]

  SharedLabels() = default;
  SharedLabels(Map map)  // NOLINT(google-explicit-constructor): a drop-in for the map it holds
      : map_(map.empty() ? nullptr : std::make_shared<Map>(std::move(map))) {}
  SharedLabels(std::initializer_list<value_type> init) : SharedLabels(Map(init)) {}
  SharedLabels& operator=(std::initializer_list<value_type> init) { return *this = Map(init); }
  SharedLabels& operator=(Map map) {
    map_ = map.empty() ? nullptr : std::make_shared<Map>(std::move(map));
    return *this;
  }

  const Map& map() const { return map_ != nullptr ? *map_ : Empty(); }
  operator const Map&() const { return map(); }  // NOLINT(google-explicit-constructor)

  const_iterator begin() const { return map().begin(); }
  const_iterator end() const { return map().end(); }
  const_iterator find(const std::string& key) const { return map().find(key); }
  size_type count(const std::string& key) const { return map().count(key); }
  bool contains(const std::string& key) const { return map().contains(key); }
  const std::string& at(const std::string& key) const { return map().at(key); }
  size_type size() const { return map().size(); }
  bool empty() const { return map().empty(); }

  // The map to change: this pod's own (copied first while other pods share it).
  Map& Mutable() {
    if (map_ == nullptr || map_.use_count() > 1) map_ = std::make_shared<Map>(map());
    return *map_;
  }
  std::string& operator[](const std::string& key) { return Mutable()[key]; }
  size_type erase(const std::string& key) { return contains(key) ? Mutable().erase(key) : 0; }
  void clear() { map_ = nullptr; }

  // Shares the pool's map equal to this one, adding this one to the pool when it is the first.
  void Intern(LabelPool* pool);

  friend bool operator==(const SharedLabels& a, const SharedLabels& b) {
    return a.map_ == b.map_ || a.map() == b.map();
  }
  friend bool operator==(const SharedLabels& a, const Map& b) { return a.map() == b; }

 private:
  static const Map& Empty() {
    static const Map* const kEmpty = new Map();
    return *kEmpty;
  }
  std::shared_ptr<Map> map_;  // null: no labels
};

// The distinct label maps of one configuration load, by content. Not thread-safe.
class LabelPool {
 public:
  // The pool's map equal to `map`, which becomes it when new.
  std::shared_ptr<SharedLabels::Map> Intern(std::shared_ptr<SharedLabels::Map> map) {
    return *maps_.insert(std::move(map)).first;
  }
  size_t size() const { return maps_.size(); }

 private:
  struct Hash {
    size_t operator()(const std::shared_ptr<SharedLabels::Map>& m) const {
      size_t h = m->size();
      for (const auto& [k, v] : *m) {
        h = absl::Hash<std::tuple<size_t, std::string_view, std::string_view>>()({h, k, v});
      }
      return h;
    }
  };
  struct Eq {
    bool operator()(const std::shared_ptr<SharedLabels::Map>& a,
                    const std::shared_ptr<SharedLabels::Map>& b) const {
      return *a == *b;
    }
  };
  absl::flat_hash_set<std::shared_ptr<SharedLabels::Map>, Hash, Eq> maps_;
};

inline void SharedLabels::Intern(LabelPool* pool) {
  if (map_ != nullptr) map_ = pool->Intern(std::move(map_));
}

}  // namespace ambit::state
