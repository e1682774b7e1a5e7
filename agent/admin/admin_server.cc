#include "agent/admin/admin_server.h"

#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "agent/common/log.h"
#include "ambit/admin/v1/admin.grpc.pb.h"

namespace ambit::admin {

namespace pb = ::ambit::admin::v1;

void AdminState::SetCertificates(pb::ListCertificatesResponse certs) {
  absl::MutexLock lock(&mu_);
  certs_ = std::move(certs);
}

pb::ListCertificatesResponse AdminState::Certificates() const {
  absl::MutexLock lock(&mu_);
  return certs_;
}

class AdminServer::Service final : public pb::Admin::Service {
 public:
  explicit Service(std::shared_ptr<AdminState> state) : state_(std::move(state)) {}
  grpc::Status ListCertificates(grpc::ServerContext*, const pb::ListCertificatesRequest*,
                                pb::ListCertificatesResponse* resp) override {
    *resp = state_->Certificates();
    return grpc::Status::OK;
  }

 private:
  std::shared_ptr<AdminState> state_;
};

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(
    const std::string& socket_path, std::shared_ptr<AdminState> state) {
  auto server = std::unique_ptr<AdminServer>(new AdminServer());
  server->path_ = socket_path;
  server->service_ = std::make_unique<Service>(std::move(state));
  unlink(socket_path.c_str());
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + socket_path, grpc::InsecureServerCredentials());
  builder.RegisterService(server->service_.get());
  // The socket is created by gRPC: a root-only umask for the moment it appears, then 0600.
  mode_t old = umask(0077);
  server->server_ = builder.BuildAndStart();
  umask(old);
  if (!server->server_) {
    return absl::UnavailableError(absl::StrCat("cannot serve the admin API on ", socket_path));
  }
  chmod(socket_path.c_str(), 0600);
  AMBIT_LOG("admin", Info) << "admin API on unix:" << socket_path;
  return server;
}

AdminServer::~AdminServer() {
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  if (!path_.empty()) unlink(path_.c_str());
}

}  // namespace ambit::admin
