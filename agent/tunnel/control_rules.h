#pragma once

// Decisions of the data plane's control thread (control.cc) that depend only on their arguments,
// so tests can drive them without sockets, root or waiting: the clock is an argument. Pure;
// thread-safe.

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace ambit::tunnel {

// How long a new pod waits for its certificate before it is served anyway.
inline constexpr absl::Duration kCertGrace = absl::Seconds(10);

// Whether a pod waiting for its certificate since `waiting_since` is served without one at `now`:
// passthrough traffic must not wait on a CA that is down (mTLS connections then fail closed).
inline bool CertGraceOver(absl::Time waiting_since, absl::Time now) {
  return now - waiting_since > kCertGrace;
}

// A key that differs whenever the set of trusted roots differs: every PEM whole, length-prefixed
// so that no two bundles concatenate alike, in sorted order because the bundle only fills an
// X509_STORE, where order does not matter. Equal keys mean the TLS contexts need no rebuild.
inline std::string TrustBundleKey(std::vector<std::string> root_pems) {
  std::sort(root_pems.begin(), root_pems.end());
  std::string key;
  for (const auto& pem : root_pems) absl::StrAppend(&key, pem.size(), ":", pem, "|");
  return key;
}

}  // namespace ambit::tunnel
