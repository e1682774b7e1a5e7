#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ambit::issuance {

// What operators want to see about a certificate.
struct CertificateInfo {
  std::string subject;
  std::string serial_hex;
  absl::Time not_after;
  std::string sha256_fingerprint;  // colon-separated hex
};

absl::StatusOr<CertificateInfo> DescribeCertificate(const std::string& pem);

}  // namespace ambit::issuance
