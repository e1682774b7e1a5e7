// One HttpsJwksFetcher::Fetch from the command line, for test_https_fetch.py: prints
// "OK <bytes>" and the body, or "ERROR <code>: <message>", then "elapsed_ms <n>".
//   https_fetch_probe <uri> [ca-file] [timeout-ms]

#include <iostream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "agent/tls/https_fetch.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: https_fetch_probe <uri> [ca-file] [timeout-ms]\n";
    return 2;
  }
  ambit::tls::HttpsFetcherOptions options;
  if (argc > 2) options.ca_file = argv[2];
  int timeout_ms = 5000;
  if (argc > 3 && !absl::SimpleAtoi(argv[3], &timeout_ms)) return 2;
  auto fetcher = ambit::tls::HttpsJwksFetcher::Create(options);
  if (!fetcher.ok()) {
    std::cout << "ERROR " << absl::StatusCodeToString(fetcher.status().code()) << ": "
              << fetcher.status().message() << "\n";
    return 1;
  }
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> body = (*fetcher)->Fetch(argv[1], absl::Milliseconds(timeout_ms));
  const int64_t elapsed = absl::ToInt64Milliseconds(absl::Now() - start);
  if (body.ok()) {
    std::cout << "OK " << body->size() << "\n" << *body << "\n";
  } else {
    std::cout << "ERROR " << absl::StatusCodeToString(body.status().code()) << ": "
              << body.status().message() << "\n";
  }
  std::cout << "elapsed_ms " << elapsed << "\n";
  return body.ok() ? 0 : 1;
}
