#pragma once

// Small helpers shared by the fuzz targets.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"

// A property of the code under test that must hold for every input: on failure, says which and
// aborts, so libFuzzer (or the replay runner) reports the input as a crash.
#define FUZZ_REQUIRE(cond)                                                               \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "%s:%d: property violated: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

namespace ambit::fuzz {

// Consumes an input front to back: leading bytes steer the harness, the rest is the payload.
class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  size_t remaining() const { return size_ - pos_; }
  // A byte, or 0 when the input is used up.
  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  // A little-endian 16-bit value.
  uint16_t U16() {
    uint16_t lo = Byte();
    return static_cast<uint16_t>(lo | (Byte() << 8));
  }
  // The next `n` bytes (fewer at the end).
  absl::string_view Take(size_t n) {
    n = std::min(n, remaining());
    absl::string_view out(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return out;
  }
  // A 16-bit length, then that many bytes.
  absl::string_view TakeSized() { return Take(U16()); }
  absl::string_view Rest() { return Take(remaining()); }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace ambit::fuzz
