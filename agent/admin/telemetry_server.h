#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "agent/admin/admin_server.h"

struct MHD_Daemon;

namespace ambit::admin {

// ambitd's HTTP endpoints, as Istio's node proxy serves them: Prometheus metrics at /metrics
// (default port 15020) and readiness at /healthz/ready (15021: 200 when ready, 503 with the
// reasons otherwise). Served by libmicrohttpd on its own thread; every answer is computed from
// AdminState and, for metrics, one stats request to the data plane, so a scrape never touches
// the data path.
class TelemetryServer {
 public:
  // Either address may be empty (that endpoint is off). Addresses are ip:port.
  static absl::StatusOr<std::unique_ptr<TelemetryServer>> Start(
      const std::string& metrics_address, const std::string& readiness_address,
      std::shared_ptr<AdminState> state);
  ~TelemetryServer();

  // The HTTP answer for a GET of `path` on one of the endpoints; exposed for tests.
  struct Answer {
    int status = 200;
    std::string content_type, body;
  };
  Answer Metrics(const std::string& path) const;
  Answer Readiness(const std::string& path) const;
  struct Endpoint;  // which endpoint a request arrived on (internal)

 private:
  explicit TelemetryServer(std::shared_ptr<AdminState> state);
  std::shared_ptr<AdminState> state_;
  std::unique_ptr<Endpoint> metrics_endpoint_, readiness_endpoint_;  // outlive the daemons
  MHD_Daemon* metrics_ = nullptr;
  MHD_Daemon* readiness_ = nullptr;
};

}  // namespace ambit::admin
