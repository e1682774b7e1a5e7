#pragma once

// ambitd's ZDS sockets on its control loop (no threads): `ZdsServer` listens where ambit-cni
// connects for each CNI call (`--zds-listen`, incremental sessions), `ZdsClient` connects where
// istio-cni's node agent listens (`--zds-connect`, one snapshot session at a time, reconnecting
// with back-off). Both play ztunnel's role: hello first, then one ack per request, in order, each
// request read only once the previous one was answered, so an ack that waits (a pod not yet
// captured) holds up only its own session and never the loop.
//
// What a request does is the `WorkloadSink`'s business (the agent's registry of ZDS workloads).
//
// Thread-safety: everything runs on the loop's thread.

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/common/event_loop.h"
#include "agent/common/unique_fd.h"
#include "agent/zds/codec.h"
#include "agent/zds/session.h"

namespace ambit::zds {

// Called once with the answer to a request ("" = done). Safe to call after the session closed
// (then nothing is sent) and from any code running on the loop's thread.
using Answer = std::function<void(std::string error)>;

class WorkloadSink {
 public:
  virtual ~WorkloadSink() = default;
  // An add (its netns checked to be a network namespace). Answer now or later.
  virtual void OnAdd(Source source, Request request, Answer answer) = 0;
  // keep, del: answered at once with the returned error ("" = done).
  virtual std::string OnKeep(Source source, const std::string& uid) = 0;
  virtual std::string OnDel(Source source, const std::string& uid) = 0;
  // snapshot_sent of a snapshot session: the workloads of `source` to remove.
  virtual void OnSnapshotSent(Source source, const std::vector<std::string>& remove) = 0;
  // The uids `source` has handed over and not removed.
  virtual std::set<std::string> Known(Source source) const = 0;
};

// Counters for ambit_zds_sessions and ambit_zds_requests_total, kept by the endpoints.
struct Stats {
  std::array<uint64_t, kSourceCount> sessions{};  // open now, by source
  // (type, outcome) -> count. outcome: ok, error (acked with an error), invalid (undecodable or
  // refused by the decoder; acked with the error).
  std::map<std::pair<std::string, std::string>, uint64_t> requests;
};

class Session;

// --zds-listen.
class ZdsServer {
 public:
  struct Options {
    std::string path;
    // Sessions open at once; a connection beyond is closed at once (the CNI call fails and the
    // runtime retries it). ambit-cni opens one per CNI call and keeps it for one request.
    size_t max_sessions = 32;
  };
  // Binds `path` (a stale socket file there is replaced; mode 0600) and watches it on `loop`.
  static absl::StatusOr<std::unique_ptr<ZdsServer>> Create(EventLoop& loop, Options options,
                                                           WorkloadSink& sink, Stats& stats);
  ~ZdsServer();
  ZdsServer(const ZdsServer&) = delete;
  ZdsServer& operator=(const ZdsServer&) = delete;

  size_t sessions() const { return sessions_.size(); }
  const std::string& path() const { return options_.path; }

 private:
  class Acceptor;
  ZdsServer(EventLoop& loop, Options options, WorkloadSink& sink, Stats& stats, UniqueFd listener);
  void OnAcceptable();

  EventLoop& loop_;
  Options options_;
  WorkloadSink& sink_;
  Stats& stats_;
  UniqueFd listener_;
  std::unique_ptr<EventHandler> acceptor_;
  std::map<Session*, std::shared_ptr<Session>> sessions_;
  uint64_t refused_ = 0;  // connections over max_sessions, for the log
  std::shared_ptr<ZdsServer*> self_ = std::make_shared<ZdsServer*>(this);  // for closing sessions
};

// --zds-connect.
class ZdsClient {
 public:
  struct Options {
    std::string path;
    absl::Duration initial_backoff = absl::Milliseconds(100);
    absl::Duration max_backoff = absl::Seconds(5);
  };
  // Connects now, or keeps trying with back-off; never fails for a peer that is not there yet.
  static std::unique_ptr<ZdsClient> Start(EventLoop& loop, Options options, WorkloadSink& sink,
                                          Stats& stats);
  ~ZdsClient();
  ZdsClient(const ZdsClient&) = delete;
  ZdsClient& operator=(const ZdsClient&) = delete;

  bool connected() const { return session_ != nullptr; }

 private:
  ZdsClient(EventLoop& loop, Options options, WorkloadSink& sink, Stats& stats);
  void TryConnect();
  void ScheduleReconnect();

  EventLoop& loop_;
  Options options_;
  WorkloadSink& sink_;
  Stats& stats_;
  absl::Duration backoff_;
  std::shared_ptr<Session> session_;
  std::string last_error_;                                                 // logged once per change
  std::shared_ptr<ZdsClient*> self_ = std::make_shared<ZdsClient*>(this);  // for timers
};

}  // namespace ambit::zds
