#pragma once

// PodPack: many pods in one byte buffer, for holding pods that are only ever read back whole.
// A state::Pod costs about 850 bytes in memory (a map node, a dozen strings, two maps, each a
// small allocation of its own); packed, one of a typical cluster costs under 200, in one block.
// The config loader keeps the last good pods of every file this way between loads (the cluster
// state it hands out holds them unpacked). Value type; thread-compatible.

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"
#include "agent/state/model.h"

namespace ambit::state {

class PodPack {
 public:
  // Appends a copy of `pod`; every field is kept.
  void Add(const Pod& pod);
  // Frees the spare room Add left, once no more pods are added.
  void ShrinkToFit() { bytes_.shrink_to_fit(); }

  size_t size() const { return count_; }
  bool empty() const { return count_ == 0; }
  size_t bytes() const { return bytes_.capacity(); }

  // The same pods, field for field, in the same order.
  friend bool operator==(const PodPack& a, const PodPack& b) {
    return a.count_ == b.count_ && a.bytes_ == b.bytes_;
  }

  // Reads the pods back, in the order added: equal (==) to what was added.
  class Reader {
   public:
    explicit Reader(const PodPack& pack) : rest_(pack.bytes_) {}
    // The next pod into *pod; false after the last.
    bool Next(Pod* pod);

   private:
    absl::string_view rest_;
  };

 private:
  std::string bytes_;
  size_t count_ = 0;
};

}  // namespace ambit::state
