// CRLs as the data plane receives them in the agent's TrustBundle message (ambitd --crl-file):
// the bytes are one PEM string for tls::CrlSet::Parse, checked against a fixed root (the seeds in
// crl/ were issued by it, so the signature path is reached). Checks, besides "no crash": a set
// that parses goes into a store (AddTo) and its counts agree; a refusal has a message.

#include <cstdint>
#include <string>

#include "agent/tls/crl.h"
#include "agent/tls/trust_bundle.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// The root the seeds' CRLs name (tests/fuzz/crl/).
constexpr char kRoot[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBaTCCAQ6gAwIBAgIBATAKBggqhkjOPQQDAjAyMRYwFAYDVQQKDA1jbHVzdGVy\n"
    "LmxvY2FsMRgwFgYDVQQDDA9hbWJpdCBmdXp6IHJvb3QwIBcNMjYxMjAxMDAwMDAw\n"
    "WhgPMjEyNjExMDcwMDAwMDBaMDIxFjAUBgNVBAoMDWNsdXN0ZXIubG9jYWwxGDAW\n"
    "BgNVBAMMD2FtYml0IGZ1enogcm9vdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IA\n"
    "BMonoP6BsCl00JiLa7ZiFNF40r42+t82eG3k+aleWXiBeiKTzMxfbQI+R0Vlbr8F\n"
    "pFEHiEYFCaQRPOSazGgcJZCjEzARMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0E\n"
    "AwIDSQAwRgIhAJmctAedKljGtsyHArXWxY2FBsU2lJY/gRswcHv7h3RzAiEA8rYP\n"
    "Rn4qofwPJ3eXRJTCvX9k0DZDJiUh3/KF68Tt0uc=\n"
    "-----END CERTIFICATE-----\n";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto* const bundle = ambit::tls::TrustBundle::Create({kRoot})->release();
  std::string pem(reinterpret_cast<const char*>(data), size);
  auto set = ambit::tls::CrlSet::Parse({pem}, *bundle);
  if (!set.ok()) {
    FUZZ_REQUIRE(!set.status().message().empty());
    return 0;
  }
  FUZZ_REQUIRE((*set)->size() == (*set)->infos().size());
  FUZZ_REQUIRE((*set)->size() <= ambit::tls::kMaxCrls);
  auto store = bundle->NewStore();
  FUZZ_REQUIRE(store.ok());
  FUZZ_REQUIRE((*set)->AddTo(store->get()).ok());
  return 0;
}
