#include "agent/xds/xds_source.h"

#include <grpcpp/grpcpp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <random>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "agent/common/log.h"
#include "agent/common/status.h"
#include "envoy/service/discovery/v3/ads.grpc.pb.h"

namespace ambit::xds {
namespace {

namespace dv3 = ::envoy::service::discovery::v3;

constexpr const char* kComponent = "config";  // a configuration source, as the directory
// A stream this long is taken as healthy: a failure after it starts the back-off over.
constexpr absl::Duration kHealthyStream = absl::Seconds(10);

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", what, " ", path));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

MapContext ContextOf(const state::MeshConfig& mesh) {
  return MapContext{.trust_domain = mesh.trust_domain, .root_namespace = mesh.root_namespace};
}

}  // namespace

envoy::config::core::v3::Node XdsSource::MakeNode(const Options& o) {
  const std::string ip = o.instance_ip.empty() ? "1.1.1.1" : o.instance_ip;
  envoy::config::core::v3::Node node;
  node.set_id(absl::StrCat("ztunnel~", ip, "~", o.pod_name, ".", o.pod_namespace, "~",
                           o.pod_namespace, ".svc.cluster.local"));
  auto& fields = *node.mutable_metadata()->mutable_fields();
  fields["NAME"].set_string_value(o.pod_name);
  fields["NAMESPACE"].set_string_value(o.pod_namespace);
  fields["INSTANCE_IPS"].set_string_value(ip);
  fields["NODE_NAME"].set_string_value(o.node_name);
  fields["CLUSTER_ID"].set_string_value(o.cluster_id);
  return node;
}

absl::StatusOr<std::unique_ptr<XdsSource>> XdsSource::Create(Options options) {
  if (options.address.empty()) return absl::InvalidArgumentError("--xds-address is empty");
  if (options.root_cert_file.empty()) {
    return absl::InvalidArgumentError(
        "--xds-root-cert is required with --xds-address: istiod is only trusted over TLS");
  }
  AMBIT_ASSIGN_OR_RETURN(std::string roots, ReadFile(options.root_cert_file, "--xds-root-cert"));
  if (roots.find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("--xds-root-cert ", options.root_cert_file, " holds no PEM certificate"));
  }
  AMBIT_ASSIGN_OR_RETURN(std::unique_ptr<config::DirectoryWatcher> watcher,
                         config::DirectoryWatcher::Create(options.config_dir));
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return absl::ErrnoToStatus(errno, "epoll_create1 for the xDS source");
  UniqueFd event(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!event) return absl::ErrnoToStatus(errno, "eventfd for the xDS source");
  for (int fd : {event.get(), watcher->fd()}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) < 0) {
      return absl::ErrnoToStatus(errno, "epoll_ctl for the xDS source");
    }
  }
  auto source = std::unique_ptr<XdsSource>(new XdsSource(std::move(options), std::move(roots),
                                                         std::move(watcher), std::move(epoll),
                                                         std::move(event)));
  // The mesh config decides what a resource maps to (and so what is NACKed): read it first.
  {
    config::LoadResult dir = source->loader_.Load();
    absl::MutexLock lock(&source->mu_);
    source->session_.SetContext(ContextOf(dir.state.mesh));
  }
  XdsSource* self = source.get();
  source->thread_ = std::thread([self] { self->Run(); });
  return source;
}

XdsSource::XdsSource(Options options, std::string roots,
                     std::unique_ptr<config::DirectoryWatcher> watcher, UniqueFd epoll,
                     UniqueFd event)
    : options_(std::move(options)),
      roots_(std::move(roots)),
      loader_(options_.config_dir),
      watcher_(std::move(watcher)),
      epoll_(std::move(epoll)),
      event_(std::move(event)),
      session_(Session::Options{.max_resources = options_.max_resources}, MapContext{}) {}

XdsSource::~XdsSource() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (stream_context_ != nullptr) stream_context_->TryCancel();
  }
  if (thread_.joinable()) thread_.join();
}

void XdsSource::Notify() {
  uint64_t one = 1;
  // A full counter (never in practice) still leaves the fd readable: nothing is lost.
  [[maybe_unused]] ssize_t n = ::write(event_.get(), &one, sizeof one);
}

bool XdsSource::Sleep(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
  mu_.AwaitWithTimeout(absl::Condition(&stopping), d);
  return !stopping_;
}

void XdsSource::Run() {
  std::mt19937_64 rng(std::random_device{}());
  absl::Duration backoff = options_.backoff_initial;
  bool failing = false;  // in a run of failures: only a new error is logged
  std::string logged;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    const absl::Time started = absl::Now();
    absl::Status error;
    const bool delivered = RunStream(&error);
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      connected_ = false;
      last_error_ = error.ok() ? "the stream ended" : std::string(error.message());
    }
    Notify();  // Pending() and the metrics say so
    if (delivered || absl::Now() - started > kHealthyStream) {
      backoff = options_.backoff_initial;
      failing = false;
    }
    // Jitter in [d/2, d], so that the agents of a cluster do not all come back at once.
    const int64_t ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(backoff));
    const absl::Duration delay =
        absl::Milliseconds(std::uniform_int_distribution<int64_t>((ms + 1) / 2, ms)(rng));
    const std::string why =
        error.ok() ? std::string("closed by the server") : std::string(error.message());
    if (!failing || why != logged) {
      AMBIT_LOG(kComponent, Warning) << "stream to " << options_.address << " ended: " << why
                                     << "; reconnecting in " << delay << " (with back-off)";
      logged = why;
    }
    failing = true;
    backoff = std::min(backoff * 2, options_.backoff_max);
    if (!Sleep(delay)) return;
  }
}

bool XdsSource::RunStream(absl::Status* error) {
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = roots_;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options_.max_message_bytes));
  // The reconnect loop is ours (with initial_resource_versions); one attempt per stream.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  auto channel = grpc::CreateCustomChannel(options_.address, grpc::SslCredentials(ssl), args);
  auto stub = dv3::AggregatedDiscoveryService::NewStub(channel);
  grpc::ClientContext ctx;
  if (!options_.token_file.empty()) {
    // Read for every connection: a projected token is rotated by the kubelet.
    absl::StatusOr<std::string> token = ReadFile(options_.token_file, "--xds-token-file");
    if (!token.ok()) {
      *error = token.status();
      return false;
    }
    ctx.AddMetadata("authorization", absl::StrCat("Bearer ", absl::StripAsciiWhitespace(*token)));
  }
  ctx.AddMetadata("clusterid", options_.cluster_id);
  std::vector<dv3::DeltaDiscoveryRequest> initial;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return false;
    stream_context_ = &ctx;
    initial = session_.Start(MakeNode(options_));
  }
  auto stream = stub->DeltaAggregatedResources(&ctx);
  bool delivered = false;
  bool ok = true;
  for (const auto& req : initial) {
    AMBIT_LOG(kComponent, Info) << "subscribing to " << req.type_url() << " at " << options_.address
                                << " (" << req.initial_resource_versions_size()
                                << " resources held)";
    if (!stream->Write(req)) {
      ok = false;
      break;
    }
  }
  if (ok) {
    absl::MutexLock lock(&mu_);
    ++connects_;
  }
  dv3::DeltaDiscoveryResponse response;
  while (ok && stream->Read(&response)) {
    delivered = true;
    Session::Outcome outcome;
    {
      absl::MutexLock lock(&mu_);
      outcome = session_.Handle(response);
      connected_ = true;  // istiod answered: the stream is up, not just sent
      last_response_ = absl::Now();
      last_error_.clear();
    }
    if (outcome.nack) {
      AMBIT_LOG(kComponent, Warning)
          << "NACK " << response.type_url() << " nonce " << response.nonce() << ": "
          << outcome.reply.error_detail().message();
    } else {
      AMBIT_LOG(kComponent, Debug) << "ACK " << response.type_url() << " nonce " << response.nonce()
                                   << " (" << response.resources_size() << " resources, "
                                   << response.removed_resources_size() << " removed)";
    }
    Notify();
    if (!stream->Write(outcome.reply)) break;
  }
  stream->WritesDone();
  grpc::Status status = stream->Finish();
  {
    absl::MutexLock lock(&mu_);
    stream_context_ = nullptr;
  }
  if (!status.ok()) {
    *error = absl::UnavailableError(absl::StrCat("xDS stream to ", options_.address, ": ",
                                                 status.error_message(), " (gRPC code ",
                                                 static_cast<int>(status.error_code()), ")"));
  }
  return delivered;
}

config::LoadResult XdsSource::Load() {
  for (int pass = 0; pass < 2; ++pass) {
    config::ExternalObjects extra;
    extra.name = std::string(kSourceName);
    MapContext used;
    {
      absl::MutexLock lock(&mu_);
      session_.Collect(&extra.objects, &extra.errors);
      used = session_.context();
    }
    config::LoadResult result = loader_.Load(&extra);
    const MapContext now = ContextOf(result.state.mesh);
    if (now == used || pass == 1) return result;
    // mesh.yaml changed what istiod's resources map to: map them again and merge that.
    AMBIT_LOG(kComponent, Info) << "mesh config changed (trust domain " << now.trust_domain
                                << ", root namespace " << now.root_namespace
                                << "): mapping istiod's resources again";
    absl::MutexLock lock(&mu_);
    session_.SetContext(now);
  }
  return config::LoadResult();  // not reached
}

std::optional<config::LoadResult> XdsSource::Poll() {
  uint64_t count;
  bool xds_changed = ::read(event_.get(), &count, sizeof count) == sizeof count;
  bool dir_changed = watcher_->Drain();
  if (!xds_changed && !dir_changed) return std::nullopt;
  if (!Pending().empty()) return std::nullopt;
  config::LoadResult result = Load();
  auto stamp = loader_.StampOf(result);
  if (last_ && *last_ == stamp) return std::nullopt;
  last_ = std::move(stamp);
  return result;
}

config::LoadResult XdsSource::Current() {
  uint64_t count;
  [[maybe_unused]] ssize_t n = ::read(event_.get(), &count, sizeof count);
  watcher_->Drain();
  config::LoadResult result = Load();
  last_ = loader_.StampOf(result);
  return result;
}

std::vector<std::string> XdsSource::Pending() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> pending;
  for (const std::string& type : session_.Missing()) {
    pending.push_back(absl::StrCat("waiting for the first ", type, " from istiod (",
                                   options_.address, ")",
                                   last_error_.empty() ? "" : absl::StrCat(": ", last_error_)));
  }
  return pending;
}

std::vector<config::SourceResourceStats> XdsSource::Stats() const {
  // The API server's per-resource metrics (ambit_kube_*) do not fit a stream; counters() feeds
  // ambit_xds_* instead.
  return {};
}

XdsSource::StreamCounters XdsSource::counters() const {
  absl::MutexLock lock(&mu_);
  StreamCounters c;
  c.connected = connected_;
  c.connects = connects_;
  for (absl::string_view t : {kAddressType, kAuthorizationType}) {
    const std::string type(t);
    Session::Counters s = session_.counters(type);
    c.types.push_back({type, session_.resources(type).size(), s.acks, s.nacks});
  }
  return c;
}

}  // namespace ambit::xds
