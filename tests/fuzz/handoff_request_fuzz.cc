// A packet on the agent hand-off socket (<run dir>/agent-handoff.sock), as a running ambitd reads
// it: ParseTakeOverRequest. Checks, besides "no crash": an accepted request has a PID in range and
// a non-empty instance; a refusal says why.

#include <cstdint>
#include <string>

#include "agent/node/handoff.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  auto request = ambit::node::ParseTakeOverRequest(bytes);
  if (request.ok()) {
    FUZZ_REQUIRE(request->pid > 0 && request->pid <= (int64_t{1} << 22));
    FUZZ_REQUIRE(!request->instance.empty());
  } else {
    FUZZ_REQUIRE(!request.status().message().empty());
  }
  return 0;
}
