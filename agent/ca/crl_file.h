#pragma once

// `ambitd --crl-file`: PEM certificate revocation lists for the trust bundle, checked on the
// control side before they go to the data planes with the roots (ztunnel's CRL_PATH). Parsing
// and the signature check are OpenSSL 3's; the data plane checks again on arrival with BoringSSL
// (agent/tls/crl.h) and enforces them at every HBONE handshake. Pure functions: thread-safe.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ambit::ca {

// The most bytes of CRL PEM accepted (the data plane's bound too).
inline constexpr size_t kMaxCrlFileBytes = 8 << 20;

struct CrlFileContent {
  std::vector<std::string> pems;     // one "X509 CRL" PEM block each, re-encoded
  std::vector<std::string> issuers;  // one line per CRL, for the log
  size_t revoked = 0;                // entries over all CRLs
};

// Checks `content` (the file's bytes; `source` names it in errors): empty or no PEM block at all
// means no revocation (as ztunnel reads an empty file); otherwise every block must be a well-formed
// "X509 CRL" whose thisUpdate is not after its nextUpdate, and one whose issuer is a root of
// `root_pems` must be signed by it. nextUpdate in the past is accepted, as ztunnel does (a stale
// list still revokes what it names). Errors name the source and the CRL by position.
absl::StatusOr<CrlFileContent> ParseCrlFile(absl::string_view content, absl::string_view source,
                                            const std::vector<std::string>& root_pems);

}  // namespace ambit::ca
