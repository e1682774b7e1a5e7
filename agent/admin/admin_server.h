#pragma once

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "ambit/admin/v1/admin.pb.h"

namespace grpc {
class Server;
}

namespace ambit::admin {

// What the admin API reports, published by ambitd's control thread and read by gRPC threads.
// Holds finished answer messages: this is the API's edge, so Protobuf is the right type here.
// Thread-safe.
class AdminState {
 public:
  void SetCertificates(ambit::admin::v1::ListCertificatesResponse certs);
  ambit::admin::v1::ListCertificatesResponse Certificates() const;

 private:
  mutable absl::Mutex mu_;
  ambit::admin::v1::ListCertificatesResponse certs_ ABSL_GUARDED_BY(mu_);
};

// ambitd's admin API on a unix socket only root can open (mode 0600). No TCP listener.
class AdminServer {
 public:
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(const std::string& socket_path,
                                                            std::shared_ptr<AdminState> state);
  ~AdminServer();

 private:
  class Service;
  AdminServer() = default;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string path_;
};

}  // namespace ambit::admin
