#pragma once

#include <map>
#include <memory>
#include <string>

#include "agent/hbone/tls_context.h"

namespace ambit::tunnel {

// The TLS contexts of every local identity that holds a valid certificate, built by the data
// plane's main thread whenever a certificate or the trust bundle changes, and shared read-only by
// the workers. An identity without a context gets no mTLS traffic (fail closed); `missing` says
// why, for the log line that refuses its connection.
struct TlsContexts {
  struct Pair {
    std::shared_ptr<const hbone::TlsContext> client, server;
  };
  std::map<std::string, Pair> by_identity;
  std::map<std::string, std::string> missing;  // identity -> reason

  const Pair* Find(const std::string& identity) const {
    auto it = by_identity.find(identity);
    return it == by_identity.end() ? nullptr : &it->second;
  }
  std::string WhyMissing(const std::string& identity) const {
    auto it = missing.find(identity);
    return it == missing.end() ? "no certificate for this identity" : it->second;
  }
};

}  // namespace ambit::tunnel
