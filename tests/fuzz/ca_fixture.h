#pragma once

// One built-in CA per fuzz process (generating a root per input would dominate the run time), in
// a temporary state directory removed at exit.

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>

#include "agent/ca/certificate_authority.h"
#include "tests/fuzz/fuzz_util.h"

namespace ambit::fuzz {

inline std::string& CaStateDir() {
  static std::string dir;
  return dir;
}

inline std::shared_ptr<const ca::CertificateAuthority> SharedCa() {
  static std::shared_ptr<const ca::CertificateAuthority> authority = [] {
    char tmpl[] = "/tmp/ambit-fuzz-ca.XXXXXX";
    FUZZ_REQUIRE(mkdtemp(tmpl) != nullptr);
    CaStateDir() = tmpl;
    atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(CaStateDir(), ec);
    });
    ca::CaOptions options;
    options.state_dir = CaStateDir();
    auto created = ca::CertificateAuthority::Create(options);
    FUZZ_REQUIRE(created.ok());
    return std::shared_ptr<const ca::CertificateAuthority>(std::move(*created));
  }();
  return authority;
}

}  // namespace ambit::fuzz
