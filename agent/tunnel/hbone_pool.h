#pragma once

#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/hbone/session.h"
#include "agent/tunnel/pod_table.h"
#include "agent/tunnel/tls_contexts.h"

namespace ambit::tunnel {

class Worker;

// How much longer a pooled session with no streams, idle since `idle_since`, may stay pooled at
// `now`. Zero or less: it is past the idle limit, takes no new stream and closes. Pure, so the
// limit is tested with a clock moved by hand.
inline absl::Duration IdleRemaining(absl::Time idle_since, absl::Time now, absl::Duration limit) {
  return limit - (now - idle_since);
}

// A live HBONE session and who it connects, for log lines.
struct SessionEntry {
  std::shared_ptr<hbone::HboneSession> session;
  std::string description;
};

// Outbound HBONE connections of one worker, shared by streams with the same (source pod,
// destination identity, destination address), up to a stream limit each; an idle connection
// closes after a timeout. Worker-thread only.
class HbonePool final : public hbone::SessionDelegate {
 public:
  HbonePool(Worker& worker, hbone::SessionOptions options, size_t max_streams,
            absl::Duration idle_timeout)
      : worker_(worker),
        options_(options),
        max_streams_(max_streams),
        idle_timeout_(idle_timeout) {}
  ~HbonePool() override;

  // A session to `dst` (the pod's IP, port 15008) that can take one more stream, opened from
  // inside `src`'s network namespace when none can.
  absl::StatusOr<std::shared_ptr<hbone::HboneSession>> Get(
      const Pod& src, const std::shared_ptr<const hbone::TlsContext>& client_ctx,
      const std::string& dst_identity, const SocketAddress& dst);

  size_t sessions() const { return keys_.size(); }
  // Every pooled session, draining ones included.
  std::vector<SessionEntry> Sessions() const;
  // Closes every connection opened for `src_uid` (GOAWAY, then the socket once this batch of
  // events is done); their streams must have been reset already. Returns how many.
  size_t DropPod(const std::string& src_uid);

  void OnEstablished(hbone::HboneSession& session) override;
  void OnIdle(hbone::HboneSession& session) override;
  void OnSessionClosed(hbone::HboneSession& session, const absl::Status& status) override;

 private:
  using Key = std::tuple<std::string, std::string, SocketAddress>;
  // One idle timer per session at a time: it fires idle_timeout after the session last became
  // idle (re-armed for the remainder when the session was busy meanwhile), so connection churn
  // never piles up timers.
  struct IdleState {
    absl::Time since;
    bool armed = false;
  };
  void ArmIdleTimer(std::weak_ptr<hbone::HboneSession> session, absl::Duration after);

  Worker& worker_;
  hbone::SessionOptions options_;
  size_t max_streams_;
  absl::Duration idle_timeout_;
  std::map<Key, std::vector<std::shared_ptr<hbone::HboneSession>>> pools_;
  std::unordered_map<hbone::HboneSession*, Key> keys_;
  std::unordered_map<hbone::HboneSession*, IdleState> idle_;
};

// Inbound HBONE connections (port 15008) of one worker: keeps each session alive, knows which
// local pod it serves, and turns each CONNECT into a connection to that pod's application.
class InboundSessions final : public hbone::SessionDelegate {
 public:
  InboundSessions(Worker& worker, hbone::SessionOptions options)
      : worker_(worker), options_(options) {}
  ~InboundSessions() override;

  // Takes an accepted connection on `pod`'s 15008 listener.
  void Accept(std::shared_ptr<const Pod> pod, UniqueFd fd);
  // Closes every connection to the pod `uid` (GOAWAY, then the socket once this batch of events
  // is done) and lets go of the pod; their streams must have been reset already. Returns how many.
  size_t DropPod(const std::string& uid);
  std::vector<SessionEntry> Sessions() const;
  size_t sessions() const { return sessions_.size(); }

  void OnEstablished(hbone::HboneSession& session) override;
  hbone::StreamObserver* OnConnect(hbone::HboneSession& session, hbone::StreamId stream,
                                   const hbone::ConnectRequest& request) override;
  void OnSessionClosed(hbone::HboneSession& session, const absl::Status& status) override;

 private:
  struct Entry {
    std::shared_ptr<hbone::HboneSession> session;
    std::shared_ptr<const Pod> pod;
    SocketAddress peer;   // the client pod's address: the source the application will see
    SocketAddress local;  // our 15008 address
  };
  Worker& worker_;
  hbone::SessionOptions options_;
  std::unordered_map<hbone::HboneSession*, Entry> sessions_;
};

}  // namespace ambit::tunnel
