#pragma once

// Shared pieces of the HTTP/1, HTTP/2 and TCP handlers of proxy.cc. Internal to the module.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/waypoint/access_log.h"
#include "agent/waypoint/proxy.h"

namespace ambit::waypoint::internal {

// One request from its first byte to its last response byte.
struct Exchange {
  RequestContext ctx;
  RequestLogEntry log;
  bool forwarded = false;
};

// The connection as its protocol handler sees it.
class Connection {
 public:
  virtual ~Connection() = default;
  virtual ProxyContext& ctx() = 0;
  virtual const DownstreamInfo& info() const = 0;
  virtual ByteStream& downstream() = 0;
  // Frees a stream after the current event batch (its callbacks may be on the stack): with a
  // reset, or, for an upstream whose last exchange completed, with a FIN.
  virtual void Retire(std::unique_ptr<ByteStream> stream, bool abort = true) = 0;
  // Closes everything (abort: with a reset) and ends the connection.
  virtual void Finish(bool abort) = 0;
  // The handler's deadlines changed.
  virtual void Rearm() = 0;
  absl::Time Now() { return ctx().clock->Now(); }
  // The access log's fields that are the same for every request of the connection, formatted
  // at its first request.
  const std::string& SourceText() {
    if (!source_text_) source_text_ = info().peer ? info().peer->ToString() : std::string();
    return *source_text_;
  }
  const std::string& UpstreamText() {
    if (!upstream_text_) {
      upstream_text_ = ctx().upstream ? ctx().upstream->Describe() : std::string();
    }
    return *upstream_text_;
  }

 private:
  std::optional<std::string> source_text_;
  std::optional<std::string> upstream_text_;
};

class Handler {
 public:
  virtual ~Handler() = default;
  virtual void OnDownstreamData(absl::string_view data) = 0;
  virtual void OnDownstreamWritable() = 0;
  virtual void OnDownstreamEnd() = 0;
  // The earliest time Tick must run (InfiniteFuture: none).
  virtual absl::Time NextDeadline() = 0;
  virtual void Tick(absl::Time now) = 0;
  // The connection is going away: close upstreams.
  virtual void Shutdown() = 0;
};

enum class Sniff { kHttp, kNotHttp, kNeedMore };
// Whether the first bytes of a connection start an HTTP/1.x request (protocol detection).
Sniff SniffHttp1(absl::string_view data);

std::unique_ptr<Handler> NewHttp1Handler(Connection* conn);
std::unique_ptr<Handler> NewHttp2Handler(Connection* conn);
std::unique_ptr<Handler> NewTcpHandler(Connection* conn);

// A new exchange with the request attributes filled for the filters.
std::unique_ptr<Exchange> NewExchange(Connection* conn, absl::string_view protocol,
                                      absl::string_view method, absl::string_view path,
                                      absl::string_view authority, const HeaderList& headers);
// Writes the access-log line and records the metrics.
void FinishExchange(Connection* conn, Exchange& ex);

}  // namespace ambit::waypoint::internal
