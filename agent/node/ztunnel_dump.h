#pragma once

// ambitd's configuration in the layout of ztunnel's /config_dump (its admin endpoint), so tools
// that read ztunnel dumps read ambit's: `workloads`, `services`, `policies` and `stagedServices`
// as ztunnel's ProxyState serializes them, `staticConfig`, `version`, `config` (the settings
// ztunnel's tools look at) and `certificates`. Key names and shapes are ztunnel's; values are
// ambit's: workload UIDs as istiod writes Kubernetes pods' (<cluster>//Pod/<ns>/<name>),
// policies as istiod translates AuthorizationPolicies for ztunnel (ALLOW and DENY only; L7
// attributes are not there). No private key, and no certificate PEM (ambitd never holds a
// workload's chain): `pem` is empty.
//
// Pure: plain inputs, a JSON text out; thread-compatible.

#include <cstdint>
#include <string>
#include <vector>

#include "agent/mesh/model.h"

namespace ambit::node {

// A workload certificate as the admin API lists it (ListCertificates).
struct DumpCertificate {
  std::string identity = {};
  std::string state = {};  // pending, valid, renewing, expired, failed
  std::string serial = {};
  int64_t not_before = 0, not_after = 0;  // UNIX seconds; 0: not known
  std::string last_error = {};
};

// A root of the trust bundle.
struct DumpRoot {
  std::string serial = {};
  int64_t not_after = 0;
};

struct ZtunnelDumpInputs {
  const mesh::Snapshot* snapshot = nullptr;  // required
  std::vector<DumpCertificate> certificates = {};
  std::vector<DumpRoot> roots = {};
  std::string node_name = {};
  std::string version = {};  // ambitd's build version
};

// The dump as one JSON object, indented by two spaces.
std::string ZtunnelConfigDump(const ZtunnelDumpInputs& in);

}  // namespace ambit::node
