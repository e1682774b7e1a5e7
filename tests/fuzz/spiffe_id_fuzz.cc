// SPIFFE IDs arrive from peers' certificates (URI SANs), CSRs and config (principals, trust
// domains). Checks, besides "no crash": an accepted ID prints back to exactly the input, parses
// again to the same value, and its Istio form (if any) rebuilds the same string.

#include <cstdint>

#include "absl/strings/string_view.h"
#include "agent/identity/spiffe_id.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view text(reinterpret_cast<const char*>(data), size);
  namespace id = ambit::identity;
  auto parsed = id::ParseSpiffeId(text);
  if (parsed.ok()) {
    FUZZ_REQUIRE(parsed->ToString() == text);
    auto again = id::ParseSpiffeId(parsed->ToString());
    FUZZ_REQUIRE(again.ok() && *again == *parsed);
    FUZZ_REQUIRE(id::ValidateTrustDomain(parsed->trust_domain).ok());
    if (auto istio = id::AsIstioIdentity(*parsed)) {
      FUZZ_REQUIRE(id::IstioSpiffeId(istio->trust_domain, istio->namespace_name,
                                     istio->service_account) == text);
    }
  } else {
    FUZZ_REQUIRE(!parsed.status().message().empty());
  }
  (void)id::ValidateTrustDomain(text);
  return 0;
}
