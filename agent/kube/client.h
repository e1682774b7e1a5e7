#pragma once

// A client of the Kubernetes API server: blocking requests and streaming watches over HTTPS, on
// libcurl. Control side only (ambitd, the CA); never linked into a data-plane process
// (cmake/check_links.sh).
//
// Authentication is a bearer token read from a file, as a pod's service account mounts it:
// kubelet rotates that file, so the token is re-read whenever the file changed (by stat) and once
// more when the server answers 401. The server is verified against the CA file, TLS 1.2 or later.
//
// Thread-safe: any number of threads may call Request and Watch at once (each call has its own
// connection); a Cancellation cancels calls from another thread.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace ambit::kube {

// Where a pod's service account is mounted.
inline constexpr char kServiceAccountDir[] = "/var/run/secrets/kubernetes.io/serviceaccount";

struct KubeConfig {
  std::string server;          // "https://10.96.0.1:443", no trailing slash
  std::string token_file;      // bearer token, re-read as it changes
  std::string ca_file;         // PEM bundle the server's certificate must chain to
  std::string namespace_name;  // the service account's namespace; empty when unknown

  // Inside a pod: the server from $KUBERNETES_SERVICE_HOST and $KUBERNETES_SERVICE_PORT, token,
  // CA and namespace from the service-account directory.
  static absl::StatusOr<KubeConfig> InCluster(absl::string_view sa_dir = kServiceAccountDir);
  // An explicit server ("https://host:port"), token file and CA file. Only https is accepted:
  // the token must never travel in clear.
  static absl::StatusOr<KubeConfig> ForServer(absl::string_view url, std::string token_file,
                                              std::string ca_file);
  // From ambitd's flags: `api` is "in-cluster" or an https URL; empty token_file / ca_file mean
  // the service-account files.
  static absl::StatusOr<KubeConfig> FromFlags(absl::string_view api, std::string token_file,
                                              std::string ca_file);
};

struct KubeResponse {
  long status = 0;                                           // HTTP status
  std::vector<std::pair<std::string, std::string>> headers;  // names in lower case
  std::string body;

  // The first header of that (lower-case) name, or "".
  absl::string_view Header(absl::string_view name) const;
};

// Cancels the calls made with it, from any thread: a call in progress returns CANCELLED within
// milliseconds, later calls at once. One-way: a cancelled Cancellation stays cancelled.
class Cancellation {
 public:
  Cancellation() = default;
  Cancellation(const Cancellation&) = delete;
  Cancellation& operator=(const Cancellation&) = delete;

  void Cancel();
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

 private:
  friend class KubeClient;
  // The multi handles of calls in progress, woken by Cancel.
  bool Register(void* multi);
  void Unregister(void* multi);

  std::atomic<bool> cancelled_{false};
  absl::Mutex mu_;
  std::set<void*> active_ ABSL_GUARDED_BY(mu_);
};

class KubeClient {
 public:
  struct Options {
    absl::Duration connect_timeout = absl::Seconds(10);
    absl::Duration request_timeout = absl::Seconds(60);  // Request's default deadline
    // A larger body is an error (RESOURCE_EXHAUSTED), never unbounded memory; a list page of
    // 500 pods is a few MiB.
    size_t max_body_bytes = size_t{64} << 20;
    // The longest watch event line; a longer one ends the watch with RESOURCE_EXHAUSTED. The API
    // server's default object size limit is 1.5 MiB, and an event wraps one object.
    size_t max_line_bytes = size_t{4} << 20;
    std::string user_agent = "ambitd";
  };

  static absl::StatusOr<std::unique_ptr<KubeClient>> Create(KubeConfig config, Options options);
  static absl::StatusOr<std::unique_ptr<KubeClient>> Create(KubeConfig config) {
    return Create(std::move(config), Options());
  }
  ~KubeClient();

  // One request; `path` starts with '/' and includes the query. Any HTTP status is a response;
  // an error is a failure to get one (connection, TLS, deadline, size, cancellation). A 401 is
  // retried once with the token re-read. A zero deadline means options.request_timeout.
  absl::StatusOr<KubeResponse> Request(absl::string_view method, absl::string_view path,
                                       absl::string_view body = {},
                                       absl::Duration deadline = absl::ZeroDuration(),
                                       Cancellation* cancel = nullptr);

  // A watch (GET `path`, which holds `watch=true`): each newline-terminated line of a 200
  // response goes to on_line as it arrives (without the newline). Returns the response without
  // its body when the server ends the stream, the response with its body when the status is not
  // 200 (e.g. 410), or an error: the connection failed, the deadline passed (give a deadline
  // longer than the watch's timeoutSeconds), a line exceeded max_line_bytes, the call was
  // cancelled, or on_line returned an error (that error).
  absl::StatusOr<KubeResponse> Watch(absl::string_view path,
                                     const std::function<absl::Status(absl::string_view)>& on_line,
                                     absl::Duration deadline, Cancellation* cancel = nullptr);

  const KubeConfig& config() const { return config_; }

 private:
  struct Token;
  struct Call;

  KubeClient(KubeConfig config, Options options);
  // The current token: re-read when the file's identity, size or mtime changed, or when `force`.
  absl::StatusOr<std::string> CurrentToken(bool force);
  absl::StatusOr<KubeResponse> Perform(
      absl::string_view method, absl::string_view path, absl::string_view body,
      absl::Duration deadline, const std::function<absl::Status(absl::string_view)>* on_line,
      Cancellation* cancel, const std::string& token);
  absl::StatusOr<KubeResponse> WithToken(
      absl::string_view method, absl::string_view path, absl::string_view body,
      absl::Duration deadline, const std::function<absl::Status(absl::string_view)>* on_line,
      Cancellation* cancel);

  const KubeConfig config_;
  const Options options_;
  absl::Mutex token_mu_;
  std::unique_ptr<Token> token_ ABSL_GUARDED_BY(token_mu_);
};

// Percent-encodes a query parameter value (RFC 3986 unreserved characters stay).
std::string QueryEscape(absl::string_view value);

}  // namespace ambit::kube
