// HTTP/2 frames from a client (after the h2c preface, which the harness adds) through the
// waypoint's nghttp2 server side, filter chain and HTTP/1.1 upstream requests. Input layout and
// properties: waypoint_fuzz.h.

#include "tests/fuzz/waypoint_fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ambit::fuzz::RunWaypoint(data, size, /*h2c=*/true);
  return 0;
}
