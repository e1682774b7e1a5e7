#pragma once

// What the bench/net client tools share: a monotonic clock in nanoseconds and the descriptor
// limit raised to its hard maximum (the idle-connection workloads hold thousands).

#include <sys/resource.h>
#include <time.h>

#include <cstdint>

namespace ambit::bench {

inline int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

inline void RaiseFdLimit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

}  // namespace ambit::bench
