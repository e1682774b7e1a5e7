// HTTP/1.1 responses as the jwksUri fetcher (agent/tls/https_fetch.h) reads them from a server
// on the network: any bytes, up to the connection's close.
// Input: [split byte][response bytes]; the response is fed whole, and again in two pieces split
// at (split byte * len / 256), then in one-byte pieces for short inputs.
// Properties: no crash, leak or hang; a body is never over the limit; how the bytes are split
// across reads changes nothing.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/tls/https_fetch.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

constexpr size_t kLimit = 4096;  // small, so the limit is reached often

absl::StatusOr<std::string> Pieces(absl::string_view bytes, size_t split) {
  ambit::tls::HttpResponseReader reader(kLimit);
  // An empty Feed means the close, so an empty first piece is not fed.
  absl::Status s = split > 0 ? reader.Feed(bytes.substr(0, split)) : absl::OkStatus();
  if (s.ok() && !reader.done() && split < bytes.size()) s = reader.Feed(bytes.substr(split));
  if (s.ok() && !reader.done()) s = reader.Feed(absl::string_view());
  if (!s.ok()) return s;
  return reader.TakeBody();
}

absl::StatusOr<std::string> Bytewise(absl::string_view bytes) {
  ambit::tls::HttpResponseReader reader(kLimit);
  for (size_t i = 0; i < bytes.size() && !reader.done(); ++i) {
    if (absl::Status s = reader.Feed(bytes.substr(i, 1)); !s.ok()) return s;
  }
  if (!reader.done()) {
    if (absl::Status s = reader.Feed(absl::string_view()); !s.ok()) return s;
  }
  return reader.TakeBody();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const absl::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  const size_t split = bytes.size() * data[0] / 256;
  absl::StatusOr<std::string> whole = ambit::tls::ParseHttpResponse(bytes, kLimit);
  if (whole.ok()) FUZZ_REQUIRE(whole->size() <= kLimit);
  absl::StatusOr<std::string> split_result = Pieces(bytes, split);
  FUZZ_REQUIRE(whole.ok() == split_result.ok());
  if (whole.ok()) FUZZ_REQUIRE(*whole == *split_result);
  if (bytes.size() <= 2048) {
    absl::StatusOr<std::string> bytewise = Bytewise(bytes);
    FUZZ_REQUIRE(whole.ok() == bytewise.ok());
    if (whole.ok()) FUZZ_REQUIRE(*whole == *bytewise);
  }
  return 0;
}
