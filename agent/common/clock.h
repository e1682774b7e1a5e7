#pragma once

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ambit {

// Time source, injected so that certificate lifetimes, renewals and back-off can be tested
// without waiting. Implementations are thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  static const RealClock& Get() {
    static const RealClock clock;
    return clock;
  }
};

// A clock tests move by hand. Not thread-safe.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1800000000)) : now_(start) {}
  absl::Time Now() const override { return now_; }
  void Advance(absl::Duration d) { now_ += d; }
  void Set(absl::Time t) { now_ = t; }

 private:
  absl::Time now_;
};

}  // namespace ambit
