#pragma once

// istiod as a configuration source: the delta ADS stream ztunnel runs
// (envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources) for
// istio.workload.Address and istio.security.Authorization, merged with the configuration
// directory, which still holds mesh.yaml (trust domain, root namespace, providers).
//
// One background thread runs the stream: TLS to `address` with `root_cert_file`'s roots, the
// bearer token of `token_file` (read again for every connection, as the kubelet rotates it;
// it must be a token of audience istio-ca) and a `clusterid` header, the node id and metadata
// as ztunnel sends them, one wildcard subscription per type, an ACK or NACK for every response
// (session.h). A stream that ends or fails is opened again after a back-off (200 ms doubling to
// 30 s, with jitter; reset after a stream that delivered), with initial_resource_versions. The
// owner's event loop polls fd() and reads results with Poll(), as with the other sources.
//
// Poll() returns nothing until both types have arrived once (Pending() names the missing type
// URLs and the stream's last error); after that a lost istiod leaves the last configuration in
// force, and a refused resource its last good version.
//
// Thread-safety: fd(), Poll(), Current(), Pending(), Stats() and counters() are for one owner
// thread; the stream thread shares the session under a mutex. The destructor cancels the stream
// and joins the thread.

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/common/unique_fd.h"
#include "agent/config/directory_loader.h"
#include "agent/config/directory_watcher.h"
#include "agent/config/source.h"
#include "agent/xds/session.h"

namespace grpc {
class ClientContext;
}  // namespace grpc

namespace ambit::xds {

class XdsSource final : public config::ConfigSource {
 public:
  struct Options {
    std::string config_dir;      // also read, merged before istiod's objects
    std::string address;         // host:port of istiod's xDS (15012)
    std::string root_cert_file;  // PEM roots istiod's certificate must chain to; required
    std::string token_file;      // bearer token (audience istio-ca); empty: none sent
    std::string cluster_id = "Kubernetes";
    // Node identity, as ztunnel takes it from its pod's environment.
    std::string node_name;
    std::string pod_name;
    std::string pod_namespace;
    std::string instance_ip;              // empty: 1.1.1.1, ztunnel's default
    size_t max_message_bytes = 64 << 20;  // one response
    size_t max_resources = 500000;        // per type
    absl::Duration backoff_initial = absl::Milliseconds(200);
    absl::Duration backoff_max = absl::Seconds(30);
  };

  // What the metrics report, per type URL.
  struct TypeCounters {
    std::string type_url;
    uint64_t resources = 0;
    uint64_t acks = 0;
    uint64_t nacks = 0;
  };
  struct StreamCounters {
    bool connected = false;
    uint64_t connects = 0;  // streams opened (the first and each reconnect)
    std::vector<TypeCounters> types;
  };

  static absl::StatusOr<std::unique_ptr<XdsSource>> Create(Options options);
  ~XdsSource() override;

  int fd() const override { return epoll_.get(); }
  std::optional<config::LoadResult> Poll() override;
  config::LoadResult Current() override;
  std::vector<std::string> Pending() const override;
  std::vector<config::SourceResourceStats> Stats() const override;
  StreamCounters counters() const;

  // The node as sent to istiod: id "ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local"
  // and metadata NAME, NAMESPACE, INSTANCE_IPS, NODE_NAME, CLUSTER_ID.
  static envoy::config::core::v3::Node MakeNode(const Options& options);

 private:
  XdsSource(Options options, std::string roots, std::unique_ptr<config::DirectoryWatcher> watcher,
            UniqueFd epoll, UniqueFd event);
  void Run();
  // One stream, until it ends; true if it delivered at least one response.
  bool RunStream(absl::Status* error);
  bool Sleep(absl::Duration d);
  void Notify();
  config::LoadResult Load();

  const Options options_;
  const std::string roots_;
  config::DirectoryLoader loader_;
  std::unique_ptr<config::DirectoryWatcher> watcher_;
  UniqueFd epoll_;  // what fd() returns: readable when event_ or the watcher's fd is
  UniqueFd event_;  // an eventfd the stream thread writes

  mutable absl::Mutex mu_;
  Session session_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool connected_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t connects_ ABSL_GUARDED_BY(mu_) = 0;
  std::string last_error_ ABSL_GUARDED_BY(mu_);
  grpc::ClientContext* stream_context_ ABSL_GUARDED_BY(mu_) = nullptr;  // to cancel it
  absl::Time last_response_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();

  std::thread thread_;
  // What the owner last received, by its stamp (not a copy of a large cluster).
  std::optional<config::DirectoryLoader::ResultStamp> last_;
};

}  // namespace ambit::xds
