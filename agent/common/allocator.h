#pragma once

// Allocator settings for processes whose memory follows the size of the configuration.

#include <malloc.h>

namespace ambit {

// glibc raises its mmap threshold to the largest block freed so far (up to 32 MiB) and its trim
// threshold to twice that. After one large configuration, the big blocks of every later one stay
// in the heap, and the free top of a thread's arena is never handed back (malloc_trim returns free
// pages inside arenas, not a non-main arena's top). Fixed thresholds keep blocks of 256 KiB and
// more in their own mappings, returned when freed, and trim any arena whose free top passes 1 MiB.
// Call first thing in main.
inline void FixAllocatorThresholds() {
  mallopt(M_MMAP_THRESHOLD, 256 << 10);
  mallopt(M_TRIM_THRESHOLD, 1 << 20);
}

}  // namespace ambit
