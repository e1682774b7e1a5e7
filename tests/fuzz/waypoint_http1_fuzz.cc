// HTTP/1 requests from a client through the waypoint's engine (parser, smuggling checks, filter
// chain, forwarding, local answers). Input layout and properties: waypoint_fuzz.h.

#include "tests/fuzz/waypoint_fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ambit::fuzz::RunWaypoint(data, size, /*h2c=*/false);
  return 0;
}
