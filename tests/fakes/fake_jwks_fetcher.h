#pragma once

// A JwksFetcher answering from a map, so the jwksUri cache is tested without a network.

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "agent/authn/jwks_provider.h"

namespace ambit::testing {

class FakeJwksFetcher final : public authn::JwksFetcher {
 public:
  absl::StatusOr<std::string> Fetch(const std::string& uri, absl::Duration timeout) override {
    ++fetches;
    last_timeout = timeout;
    auto it = documents.find(uri);
    if (it == documents.end()) return absl::UnavailableError("connection refused");
    return it->second;
  }

  std::map<std::string, std::string> documents;  // uri -> body; absent: the fetch fails
  int fetches = 0;
  absl::Duration last_timeout;
};

}  // namespace ambit::testing
