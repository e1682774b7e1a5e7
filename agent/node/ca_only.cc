#include "agent/node/ca_only.h"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "agent/common/log.h"
#include "agent/common/status.h"
#include "agent/kube/api_source.h"
#include "agent/kube/client.h"
#include "agent/kube/watch.h"
#include "agent/node/admin_views.h"

namespace ambit::node {
namespace {

constexpr const char* kComponent = "ca";
// How often the CA's counters reach /metrics.
constexpr absl::Duration kPublishInterval = absl::Seconds(1);
constexpr char kTokenReviewPath[] = "/apis/authentication.k8s.io/v1/tokenreviews";
// A review answers in milliseconds; a caller (a node's signing thread) waits at most 10 s.
constexpr absl::Duration kTokenReviewDeadline = absl::Seconds(5);

class FnHandler final : public EventHandler {
 public:
  explicit FnHandler(std::function<void()> fn) : fn_(std::move(fn)) {}
  void OnEvents(uint32_t) override { fn_(); }

 private:
  std::function<void()> fn_;
};

// Istio's cacerts layout: when none of its files is there, ca::CertificateAuthority would
// generate a root instead.
bool HasCacerts(const std::string& dir) {
  std::error_code ec;
  return !dir.empty() && std::filesystem::exists(std::filesystem::path(dir) / "ca-cert.pem", ec);
}

}  // namespace

std::map<std::string, std::set<std::string>> IdentitiesByNode(const state::ClusterState& state) {
  std::map<std::string, std::set<std::string>> by_node;
  for (const auto& [key, pod] : state.pods) {
    if (state.HasIpConflict(key)) continue;  // enrolled nowhere
    by_node[pod.node_name].insert(state::SpiffeId(state.mesh, pod));
  }
  return by_node;
}

// Before any thread starts (the API server client's may): every thread inherits the mask, so
// SIGTERM reaches only the signalfd and stops the CA cleanly.
void BlockStopSignals() {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
}

absl::StatusOr<std::shared_ptr<issuance::CallerAuthenticator>> MakeTokenReviewAuthenticator(
    const AgentOptions& options) {
  if (options.kube_api.empty()) {
    return absl::InvalidArgumentError(
        "--ca-token-review needs --kube-api: the API server that reviews callers' tokens");
  }
  AMBIT_ASSIGN_OR_RETURN(
      kube::KubeConfig config,
      kube::KubeConfig::FromFlags(options.kube_api, options.kube_token_file, options.kube_ca_file));
  AMBIT_ASSIGN_OR_RETURN(std::unique_ptr<kube::KubeClient> created,
                         kube::KubeClient::Create(std::move(config)));
  std::shared_ptr<kube::KubeClient> client = std::move(created);
  issuance::TokenReviewOptions review;
  review.policy.audience = options.ca_token_audience;
  review.policy.users = options.ca_token_users;
  // The client is thread-safe (a connection per call): CA request threads review concurrently.
  auto transport = [client](const std::string& body) -> absl::StatusOr<issuance::HttpAnswer> {
    AMBIT_ASSIGN_OR_RETURN(kube::KubeResponse response,
                           client->Request("POST", kTokenReviewPath, body, kTokenReviewDeadline));
    return issuance::HttpAnswer{static_cast<int>(response.status), std::move(response.body)};
  };
  return std::make_shared<issuance::TokenReviewAuthenticator>(std::move(review),
                                                              std::move(transport));
}

absl::StatusOr<CaOnlyInputs> MakeCaOnlyInputs(const AgentOptions& options) {
  BlockStopSignals();
  CaOnlyInputs inputs;
  if (options.ca_token_review) {
    AMBIT_ASSIGN_OR_RETURN(inputs.authenticator, MakeTokenReviewAuthenticator(options));
  }
  if (options.kube_api.empty()) {
    AMBIT_ASSIGN_OR_RETURN(inputs.source, config::MakeDirectorySource(options.config_dir));
    return inputs;
  }
  AMBIT_ASSIGN_OR_RETURN(
      kube::KubeConfig config,
      kube::KubeConfig::FromFlags(options.kube_api, options.kube_token_file, options.kube_ca_file));
  AMBIT_ASSIGN_OR_RETURN(std::unique_ptr<kube::KubeClient> client,
                         kube::KubeClient::Create(std::move(config)));
  kube::KubeApiSource::Options o;
  // Which node runs which pod is all the CA needs (its RBAC allows no more); mesh.yaml (the
  // trust domain) comes from the configuration directory when there is one.
  o.resources.clear();
  for (const kube::Resource& r : kube::WatchedResources()) {
    if (r.name == "pods") o.resources.push_back(r);
  }
  std::error_code ec;
  if (std::filesystem::is_directory(options.config_dir, ec)) {
    o.config_dir = options.config_dir;
  } else {
    // Nothing to read there: an empty directory of the CA's own stands in (the trust domain is
    // then the default, cluster.local).
    char tmpl[] = "/tmp/ambit-ca-config.XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      return absl::ErrnoToStatus(
          errno, absl::StrCat("no configuration directory ", options.config_dir,
                              ", and no empty one could be made in /tmp; mount mesh.yaml there"));
    }
    o.config_dir = tmpl;
    inputs.scratch_dir = tmpl;
    AMBIT_LOG(kComponent, Info) << "no configuration directory " << options.config_dir
                                << ": pods from the API server, default mesh settings";
  }
  auto source = kube::KubeApiSource::Create(std::move(client), o);
  if (!source.ok()) {
    if (!inputs.scratch_dir.empty()) rmdir(inputs.scratch_dir.c_str());
    return source.status();
  }
  inputs.source = std::move(*source);
  return inputs;
}

absl::StatusOr<std::unique_ptr<CaOnly>> CaOnly::Create(const AgentOptions& options,
                                                       CaOnlyInputs inputs) {
  auto ca = std::unique_ptr<CaOnly>(new CaOnly(options));
  AMBIT_RETURN_IF_ERROR(ca->Init(std::move(inputs)));
  return ca;
}

CaOnly::~CaOnly() {
  // The CA API and telemetry threads read entitlements_, ca_ and admin_state_: joined first.
  server_.reset();
  telemetry_.reset();
  loop_.reset();
  handlers_.clear();
  source_.reset();  // its watcher watches the scratch directory
  if (!scratch_dir_.empty()) rmdir(scratch_dir_.c_str());
}

absl::Status CaOnly::Init(CaOnlyInputs inputs) {
  scratch_dir_ = std::move(inputs.scratch_dir);  // removed by ~CaOnly, also after a failed start
  if (options_.ca_listen.empty()) {
    return absl::InvalidArgumentError("--ca-only needs --ca-listen (where to serve the CA API)");
  }
  if (!HasCacerts(options_.cacerts_dir)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--ca-only needs --cacerts-dir with the operator's CA material (ca-cert.pem, ca-key.pem, "
        "root-cert.pem, cert-chain.pem)",
        options_.cacerts_dir.empty() ? "" : absl::StrCat("; none in ", options_.cacerts_dir),
        ": a root generated by each CA replica would split the mesh"));
  }
  if (!options_.ca_address.empty()) {
    return absl::InvalidArgumentError("--ca-only is the CA: it takes no --ca-address");
  }
  source_ = std::move(inputs.source);
  authenticator_ = std::move(inputs.authenticator);
  if (source_ == nullptr) return absl::InvalidArgumentError("--ca-only: no source of pods");

  ca::CaOptions o;
  o.cacerts_dir = options_.cacerts_dir;
  // Unused with cacerts (which take precedence), but never a node agent's directory.
  o.state_dir = options_.resolved_ca_state_dir();
  o.default_leaf_ttl = options_.cert_ttl;
  AMBIT_ASSIGN_OR_RETURN(ca_, ca::CertificateAuthority::Create(o));
  issuance::SigningRateOptions rate;
  rate.node_burst = options_.ca_node_burst;
  rate.node_rate = options_.ca_node_rate;
  rate_ = std::make_shared<issuance::SigningRateLimiter>(&RealClock::Get(), rate);

  AMBIT_ASSIGN_OR_RETURN(loop_, EpollLoop::Create());
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);
  signal_fd_ = UniqueFd(signalfd(-1, &mask, SFD_CLOEXEC));
  if (!signal_fd_) return absl::ErrnoToStatus(errno, "signalfd(SIGTERM, SIGINT)");
  auto watch = [this](int fd, std::function<void()> fn) -> absl::Status {
    auto handler = std::make_unique<FnHandler>(std::move(fn));
    AMBIT_RETURN_IF_ERROR(loop_->Watch(fd, EPOLLIN, handler.get()));
    handlers_[fd] = std::move(handler);
    return absl::OkStatus();
  };
  AMBIT_RETURN_IF_ERROR(watch(signal_fd_.get(), [this] {
    AMBIT_LOG(kComponent, Info) << "CA stopping";
    loop_->Stop();
  }));
  if (source_->fd() >= 0) {
    AMBIT_RETURN_IF_ERROR(watch(source_->fd(), [this] {
      if (auto result = source_->Poll()) Apply(std::move(*result));
    }));
  }

  // The placement first when it is there; until then requests are refused as not yet judgeable
  // (Entitlements), and readiness says what is missing.
  if (source_->Pending().empty()) Apply(source_->Current());

  issuance::CaServerOptions server;
  server.listen = options_.ca_listen;
  server.cluster_id = options_.cluster_id;
  server.tokens_file = options_.ca_tokens;
  server.authenticator = authenticator_;
  AMBIT_ASSIGN_OR_RETURN(server_, issuance::CaServer::Start(server, ca_, entitlements_, rate_));

  ambit::admin::v1::ListCertificatesResponse certs;
  certs.set_ca(absl::StrCat("cluster CA (", ca_->IssuerName(), ")"));
  AddTrustBundle(ca_->TrustBundle(), &certs);
  admin_state_->SetCertificates(std::move(certs));
  PublishHealth();
  AMBIT_ASSIGN_OR_RETURN(telemetry_,
                         admin::TelemetryServer::Start(options_.metrics_address,
                                                       options_.readiness_address, admin_state_));
  ArmPublish();
  AMBIT_LOG(kComponent, Info) << "cluster CA ready: signing with " << ca_->IssuerName() << " from "
                              << options_.cacerts_dir;
  return absl::OkStatus();
}

absl::Status CaOnly::Run() {
  loop_->Run();
  return absl::OkStatus();
}

void CaOnly::Apply(config::LoadResult result) {
  for (const auto& e : result.errors) {
    if (e.warning) {
      AMBIT_LOG("config", Warning) << e.ToString();
    } else {
      AMBIT_LOG("config", Error) << e.ToString();
    }
  }
  if (ca_->trust_domain() != result.state.mesh.trust_domain) {
    const std::string previous = ca_->trust_domain();
    if (absl::Status s = ca_->SetTrustDomain(result.state.mesh.trust_domain); !s.ok()) {
      AMBIT_LOG(kComponent, Error) << "CA keeps trust domain " << previous << ": " << s.message();
    } else {
      AMBIT_LOG(kComponent, Info) << "CA signs in trust domain " << result.state.mesh.trust_domain
                                  << " (was " << previous << ")";
    }
  }
  auto by_node = IdentitiesByNode(result.state);
  size_t identities = 0;
  for (const auto& [node, ids] : by_node) identities += ids.size();
  AMBIT_LOG(kComponent, Info) << "placement: " << result.state.pods.size() << " pods, "
                              << identities << " identities on " << by_node.size() << " nodes";
  entitlements_->Update(std::move(by_node));
  loaded_ = true;
  PublishHealth();
}

void CaOnly::PublishHealth() {
  admin::NodeHealth h;
  h.ca_only = true;
  h.config_loaded = loaded_;
  if (!loaded_) h.ca_pending = source_->Pending();
  if (server_ != nullptr) h.ca_requests = server_->Counts();
  if (auto* review = dynamic_cast<issuance::TokenReviewAuthenticator*>(authenticator_.get())) {
    h.ca_token_reviews = review->reviews();
  }
  admin_state_->SetHealth(std::move(h));
}

// Runs on the loop thread; the loop and its timers go before the members they read (~CaOnly).
void CaOnly::ArmPublish() {
  loop_->RunAfter(kPublishInterval, [this] {
    ArmPublish();
    PublishHealth();
  });
}

}  // namespace ambit::node
