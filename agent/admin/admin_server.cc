#include "agent/admin/admin_server.h"

#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "agent/common/log.h"
#include "agent/common/version.h"
#include "ambit/admin/v1/admin.grpc.pb.h"

namespace ambit::admin {

namespace pb = ::ambit::admin::v1;

void AdminState::SetCertificates(pb::ListCertificatesResponse certs) {
  absl::MutexLock lock(&mu_);
  certs_ = std::move(certs);
}

namespace {

// A Kubernetes namespace (a DNS label) or object name (a DNS subdomain), loosely: the
// characters and the length; the agent then looks the pod up.
bool KubeNameOk(absl::string_view s, size_t max) {
  if (s.empty() || s.size() > max) return false;
  for (char c : s) {
    if (!absl::ascii_islower(c) && !absl::ascii_isdigit(c) && c != '-' && c != '.') return false;
  }
  return true;
}

}  // namespace

absl::Status CheckVerifyMtlsRequest(const pb::VerifyMtlsRequest& req) {
  if (!req.pod().empty()) {
    const size_t slash = req.pod().find('/');
    const absl::string_view pod = req.pod();
    if (slash == absl::string_view::npos || !KubeNameOk(pod.substr(0, slash), 63) ||
        !KubeNameOk(pod.substr(slash + 1), 253)) {
      return absl::InvalidArgumentError(absl::StrCat("VerifyMtlsRequest.pod: \"",
                                                     absl::CHexEscape(pod.substr(0, 300)),
                                                     "\" is not namespace/name"));
    }
  }
  if (req.since_seconds() < 0 || req.since_seconds() > 86400) {
    return absl::InvalidArgumentError(
        absl::StrCat("VerifyMtlsRequest.since_seconds: ", req.since_seconds(),
                     " is outside 0..86400 (0: everything counted)"));
  }
  return absl::OkStatus();
}

pb::ListCertificatesResponse AdminState::Certificates() const {
  absl::MutexLock lock(&mu_);
  return certs_;
}

#define AMBIT_ADMIN_VIEW(Type, Setter, Getter, member) \
  void AdminState::Setter(pb::Type value) {            \
    absl::MutexLock lock(&mu_);                        \
    member = std::move(value);                         \
  }                                                    \
  pb::Type AdminState::Getter() const {                \
    absl::MutexLock lock(&mu_);                        \
    return member;                                     \
  }
AMBIT_ADMIN_VIEW(ListPoliciesResponse, SetPolicies, Policies, policies_)
AMBIT_ADMIN_VIEW(ListServicesResponse, SetServices, Services, services_)
AMBIT_ADMIN_VIEW(CertificatePemResponse, SetCertificateChains, CertificateChains, chains_)
#undef AMBIT_ADMIN_VIEW

void AdminState::SetWorkloads(WorkloadsBuilder builder) {
  auto shared = std::make_shared<const WorkloadsBuilder>(std::move(builder));
  absl::MutexLock lock(&mu_);
  workloads_ = std::move(shared);
}

pb::ListWorkloadsResponse AdminState::Workloads() const {
  std::shared_ptr<const WorkloadsBuilder> builder;
  {
    absl::MutexLock lock(&mu_);
    builder = workloads_;
  }
  return builder != nullptr && *builder ? (*builder)() : pb::ListWorkloadsResponse();
}

void AdminState::SetBpf(pb::GetBpfResponse bpf, BpfReader reader) {
  absl::MutexLock lock(&mu_);
  bpf_ = std::move(bpf);
  bpf_reader_ = std::move(reader);
}

pb::GetBpfResponse AdminState::Bpf() const {
  pb::GetBpfResponse out;
  BpfReader reader;
  {
    absl::MutexLock lock(&mu_);
    out = bpf_;
    reader = bpf_reader_;
  }
  // Walking map keys takes a syscall per entry: never under the lock.
  if (reader) reader(&out);
  return out;
}

void AdminState::SetCheckEvaluator(std::shared_ptr<const CheckEvaluator> evaluator) {
  absl::MutexLock lock(&mu_);
  checker_ = std::move(evaluator);
}

std::shared_ptr<const CheckEvaluator> AdminState::checker() const {
  absl::MutexLock lock(&mu_);
  return checker_;
}

void AdminState::SetRollHandler(RollHandler handler) {
  absl::MutexLock lock(&mu_);
  roll_handler_ = std::move(handler);
}

RollHandler AdminState::roll_handler() const {
  absl::MutexLock lock(&mu_);
  return roll_handler_;
}

void AdminState::SetConfigDumpHandler(ConfigDumpHandler handler) {
  absl::MutexLock lock(&mu_);
  config_dump_handler_ = std::move(handler);
}

void AdminState::SetVerifyMtlsHandler(VerifyMtlsHandler handler) {
  absl::MutexLock lock(&mu_);
  verify_mtls_handler_ = std::move(handler);
}

VerifyMtlsHandler AdminState::verify_mtls_handler() const {
  absl::MutexLock lock(&mu_);
  return verify_mtls_handler_;
}

ConfigDumpHandler AdminState::config_dump_handler() const {
  absl::MutexLock lock(&mu_);
  return config_dump_handler_;
}

void AdminState::SetStrictReadinessHandler(StrictReadinessHandler handler) {
  absl::MutexLock lock(&mu_);
  strict_readiness_handler_ = std::move(handler);
}

StrictReadinessHandler AdminState::strict_readiness_handler() const {
  absl::MutexLock lock(&mu_);
  return strict_readiness_handler_;
}

void AdminState::SetPolicyDiffHandler(PolicyDiffHandler handler) {
  absl::MutexLock lock(&mu_);
  policy_diff_handler_ = std::move(handler);
}

PolicyDiffHandler AdminState::policy_diff_handler() const {
  absl::MutexLock lock(&mu_);
  return policy_diff_handler_;
}

void AdminState::SetLogLevelHandler(LogLevelHandler handler) {
  absl::MutexLock lock(&mu_);
  log_level_handler_ = std::move(handler);
}

LogLevelHandler AdminState::log_level_handler() const {
  absl::MutexLock lock(&mu_);
  return log_level_handler_;
}

void AdminState::SetStatsFetcher(StatsFetcher fetcher) {
  absl::MutexLock lock(&mu_);
  stats_fetcher_ = std::move(fetcher);
}

void AdminState::SetReadinessChecker(ReadinessChecker checker) {
  absl::MutexLock lock(&mu_);
  readiness_checker_ = std::move(checker);
}

AdminState::ReadinessChecker AdminState::readiness_checker() const {
  absl::MutexLock lock(&mu_);
  return readiness_checker_;
}

StatsFetcher AdminState::stats_fetcher() const {
  absl::MutexLock lock(&mu_);
  return stats_fetcher_;
}

void AdminState::SetHealth(NodeHealth health) {
  absl::MutexLock lock(&mu_);
  health_ = std::move(health);
}

NodeHealth AdminState::Health() const {
  absl::MutexLock lock(&mu_);
  return health_;
}

pb::ListConnectionsResponse ConnectionsFromStats(const ambit::dataplane::v1::StatsResponse& stats,
                                                 const std::string& pod, absl::Time now) {
  pb::ListConnectionsResponse out;
  auto end = [](const ambit::dataplane::v1::FlowPeer& p, pb::ConnectionEnd* o) {
    if (!p.workload().empty()) o->set_workload(absl::StrCat(p.namespace_(), "/", p.workload()));
    o->set_identity(p.principal());
    o->set_address(p.address());
    o->set_service(p.service());
  };
  for (const auto& f : stats.flows()) {
    if (!pod.empty() && f.pod() != pod) continue;
    pb::Connection* c = out.add_connections();
    c->set_id(f.id());
    c->set_direction(f.direction());
    c->set_pod(f.pod());
    c->set_mode(f.mode());
    c->set_mtls(f.mtls());
    end(f.source(), c->mutable_source());
    end(f.destination(), c->mutable_destination());
    c->set_policy(f.policy());
    // Istio's definition, as the access log and istio_tcp_*_bytes_total (proto comment).
    c->set_bytes_sent(f.bytes_to_client());
    c->set_bytes_received(f.bytes_from_client());
    c->set_age_ms(std::max<int64_t>(0, absl::ToUnixMillis(now) - f.start_unix_ms()));
  }
  std::sort(out.mutable_connections()->begin(), out.mutable_connections()->end(),
            [](const pb::Connection& a, const pb::Connection& b) {
              return std::make_tuple(a.pod(), a.direction(), a.id()) <
                     std::make_tuple(b.pod(), b.direction(), b.id());
            });
  return out;
}

pb::ConfigGeneration GenerationOf(const NodeHealth& health, absl::Time now) {
  pb::ConfigGeneration g;
  g.set_desired(health.desired_generation);
  g.set_applied(health.applied_generation);
  if (health.desired_generation != health.applied_generation &&
      health.pending_since != absl::InfiniteFuture()) {
    g.set_pending_ms(std::max<int64_t>(0, absl::ToInt64Milliseconds(now - health.pending_since)));
  }
  g.set_error(health.generation_error);
  g.set_fail_closed(health.fail_closed);
  return g;
}

namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

}  // namespace

class AdminServer::Service final : public pb::Admin::Service {
 public:
  explicit Service(std::shared_ptr<AdminState> state) : state_(std::move(state)) {}
  grpc::Status ListCertificates(grpc::ServerContext*, const pb::ListCertificatesRequest*,
                                pb::ListCertificatesResponse* resp) override {
    *resp = state_->Certificates();
    return grpc::Status::OK;
  }
  grpc::Status ListWorkloads(grpc::ServerContext*, const pb::ListWorkloadsRequest*,
                             pb::ListWorkloadsResponse* resp) override {
    *resp = state_->Workloads();
    *resp->mutable_generation() = GenerationOf(state_->Health(), absl::Now());
    return grpc::Status::OK;
  }
  grpc::Status ListPolicies(grpc::ServerContext*, const pb::ListPoliciesRequest*,
                            pb::ListPoliciesResponse* resp) override {
    *resp = state_->Policies();
    *resp->mutable_generation() = GenerationOf(state_->Health(), absl::Now());
    return grpc::Status::OK;
  }
  grpc::Status ListServices(grpc::ServerContext*, const pb::ListServicesRequest*,
                            pb::ListServicesResponse* resp) override {
    *resp = state_->Services();
    return grpc::Status::OK;
  }
  grpc::Status GetBpf(grpc::ServerContext*, const pb::GetBpfRequest*,
                      pb::GetBpfResponse* resp) override {
    *resp = state_->Bpf();
    return grpc::Status::OK;
  }
  grpc::Status Check(grpc::ServerContext*, const pb::CheckRequest* req,
                     pb::CheckResponse* resp) override {
    std::shared_ptr<const CheckEvaluator> checker = state_->checker();
    if (!checker) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "no configuration loaded yet");
    auto result = checker->Check(*req);
    if (!result.ok()) return ToGrpc(result.status());
    *resp = std::move(*result);
    *resp->mutable_generation() = GenerationOf(state_->Health(), absl::Now());
    return grpc::Status::OK;
  }
  grpc::Status LogLevel(grpc::ServerContext*, const pb::LogLevelRequest* req,
                        pb::LogLevelResponse* resp) override {
    LogLevelHandler handler = state_->log_level_handler();
    if (!handler) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "log levels unavailable");
    auto result = handler(*req);
    if (!result.ok()) return ToGrpc(result.status());
    *resp = std::move(*result);
    return grpc::Status::OK;
  }
  grpc::Status RollDataPlane(grpc::ServerContext*, const pb::RollDataPlaneRequest* req,
                             pb::RollDataPlaneResponse* resp) override {
    RollHandler handler = state_->roll_handler();
    if (!handler) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the agent is starting");
    if (!req->process().empty() && req->process() != "tunnel" && req->process() != "waypoint") {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "process must be tunnel or waypoint, not \"" + req->process() + "\"");
    }
    auto result = handler(*req);
    if (!result.ok()) return ToGrpc(result.status());
    *resp = std::move(*result);
    return grpc::Status::OK;
  }
  grpc::Status GetConfigDump(grpc::ServerContext*, const pb::GetConfigDumpRequest* req,
                             pb::GetConfigDumpResponse* resp) override {
    if (req->format() != "ztunnel") {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "format must be ztunnel, not \"" + req->format() + "\"");
    }
    ConfigDumpHandler handler = state_->config_dump_handler();
    if (!handler) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the agent is starting");
    auto result = handler(*req);
    if (!result.ok()) return ToGrpc(result.status());
    *resp = std::move(*result);
    return grpc::Status::OK;
  }
  grpc::Status VerifyMtls(grpc::ServerContext*, const pb::VerifyMtlsRequest* req,
                          pb::VerifyMtlsResponse* resp) override {
    if (absl::Status bad = CheckVerifyMtlsRequest(*req); !bad.ok()) return ToGrpc(bad);
    VerifyMtlsHandler handler = state_->verify_mtls_handler();
    if (!handler) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the agent is starting");
    auto result = handler(*req);
    if (!result.ok()) return ToGrpc(result.status());
    *resp = std::move(*result);
    return grpc::Status::OK;
  }
  grpc::Status ListConnections(grpc::ServerContext*, const pb::ListConnectionsRequest* req,
                               pb::ListConnectionsResponse* resp) override {
    StatsFetcher fetch = state_->stats_fetcher();
    if (!fetch) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "data plane not started");
    auto stats = fetch(true, false);
    if (!stats.ok()) return ToGrpc(stats.status());
    *resp = ConnectionsFromStats(*stats, req->pod(), absl::Now());
    return grpc::Status::OK;
  }
  grpc::Status GetStatus(grpc::ServerContext*, const pb::GetStatusRequest*,
                         pb::GetStatusResponse* resp) override {
    const absl::Time now = absl::Now();
    AdminState::ReadinessChecker readiness = state_->readiness_checker();
    if (!readiness) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the agent is starting");
    std::vector<std::string> problems = readiness(now);
    resp->set_ready(problems.empty());
    resp->set_agent_version(std::string(Version()));
    for (auto& p : problems) resp->add_problems(std::move(p));
    const NodeHealth h = state_->Health();
    pb::DataPlaneStatus* tunnel = resp->add_data_planes();
    tunnel->set_name("ambit-tunnel");
    tunnel->set_mode(h.dataplane_mode);
    tunnel->set_socket(h.dataplane_socket);
    tunnel->set_needed(true);
    tunnel->set_connected(h.dataplane_connected);
    tunnel->set_pid(h.dataplane_pid);
    tunnel->set_restarts(h.dataplane_restarts);
    tunnel->set_problem(h.dataplane_missing);
    tunnel->set_roll(h.dataplane_roll);
    for (int pid : h.dataplane_draining) tunnel->add_draining_pids(pid);
    pb::DataPlaneStatus* waypoint = resp->add_data_planes();
    waypoint->set_name("ambit-waypoint");
    waypoint->set_mode(h.dataplane_mode);
    waypoint->set_socket(h.waypoint.socket);
    waypoint->set_needed(h.waypoint.needed);
    waypoint->set_connected(h.waypoint.connected);
    waypoint->set_pid(h.waypoint.pid);
    waypoint->set_restarts(h.waypoint.restarts);
    waypoint->set_roll(h.waypoint.roll);
    for (int pid : h.waypoint.draining) waypoint->add_draining_pids(pid);
    // Not connected while not needed is no problem: it is connected to once it is.
    if (h.waypoint.needed) waypoint->set_problem(h.waypoint.missing);
    *resp->mutable_generation() = GenerationOf(h, now);
    return grpc::Status::OK;
  }

  grpc::Status CertificatePem(grpc::ServerContext*, const pb::CertificatePemRequest* req,
                              pb::CertificatePemResponse* resp) override {
    pb::CertificatePemResponse all = state_->CertificateChains();
    if (req->identity().empty()) {
      *resp = std::move(all);
      return grpc::Status::OK;
    }
    std::string known;
    for (const auto& c : all.chains()) {
      if (c.identity() == req->identity()) {
        *resp->add_chains() = c;
        return grpc::Status::OK;
      }
      absl::StrAppend(&known, known.empty() ? "" : ", ", c.identity());
    }
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("no certificate for ", req->identity(), " on this node (",
                                     known.empty() ? "none yet" : "have: " + known, ")"));
  }

  grpc::Status StrictReadiness(grpc::ServerContext*, const pb::StrictReadinessRequest* req,
                               pb::StrictReadinessResponse* resp) override {
    // Names as Kubernetes allows them (DNS-1123 labels and subdomains): anything else matches no
    // pod, and would only be echoed back.
    auto valid = [](const std::string& s, size_t max) {
      if (s.empty() || s.size() > max) return false;
      for (char c : s) {
        if (!(absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '-' || c == '.')) {
          return false;
        }
      }
      return true;
    };
    if (!valid(req->namespace_(), 63)) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "namespace must be a Kubernetes namespace name (lower case, digits, "
                          "'-'; at most 63 characters)");
    }
    if (!req->name().empty() && !valid(req->name(), 253)) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "name must be a Kubernetes pod name (lower case, digits, '-', '.'; at "
                          "most 253 characters)");
    }
    StrictReadinessHandler handler = state_->strict_readiness_handler();
    if (!handler) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the agent is starting");
    auto result = handler(*req);
    if (!result.ok()) return ToGrpc(result.status());
    *resp = std::move(*result);
    *resp->mutable_generation() = GenerationOf(state_->Health(), absl::Now());
    return grpc::Status::OK;
  }

  grpc::Status PolicyDiff(grpc::ServerContext*, const pb::PolicyDiffRequest* req,
                          pb::PolicyDiffResponse* resp) override {
    PolicyDiffHandler handler = state_->policy_diff_handler();
    if (!handler) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the agent is starting");
    auto result = handler(*req);
    if (!result.ok()) return ToGrpc(result.status());
    *resp = std::move(*result);
    *resp->mutable_generation() = GenerationOf(state_->Health(), absl::Now());
    return grpc::Status::OK;
  }

 private:
  std::shared_ptr<AdminState> state_;
};

std::unique_ptr<pb::Admin::Service> AdminServer::NewService(std::shared_ptr<AdminState> state) {
  return std::make_unique<Service>(std::move(state));
}

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(const std::string& socket_path,
                                                                std::shared_ptr<AdminState> state) {
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
