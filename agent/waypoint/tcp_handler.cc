// A port declared TCP: no HTTP. The connection is authorized at L4 (the policy engine reduces
// rules the way the node tunnel does: HTTP-only ALLOW rules never match, DENY rules keep their L4
// part) and, when allowed, its bytes pass through both ways with bounded buffers.

#include "absl/strings/str_cat.h"
#include "agent/common/log.h"
#include "agent/waypoint/proxy_internal.h"

namespace ambit::waypoint::internal {
namespace {

class TcpHandler final : public Handler, public ByteStream::Observer {
 public:
  explicit TcpHandler(Connection* conn) : conn_(conn), last_activity_(conn->Now()) {
    ex_ = NewExchange(conn, "tcp", "", "", "", {});
    authz::Request& r = ex_->ctx.request;
    r.layer = authz::Layer::kL4;
    bool allowed = true;
    if (conn->ctx().engine) {
      authz::Decision d = conn->ctx().engine->Evaluate(conn->ctx().target, r);
      ex_->ctx.policy = d.policy;
      allowed = d.allowed;
      if (!allowed) ex_->log.details = "rbac_access_denied";
    }
    if (!allowed) {
      // Like the node tunnel: a denied connection is reset, with its log line.
      FinishExchange(conn_, *ex_);
      ex_.reset();
      conn->ctx().loop->Defer([conn] { conn->Finish(true); });
      return;
    }
    ex_->forwarded = true;
    up_ = conn->ctx().upstream->Connect(this);
  }

  void OnDownstreamData(absl::string_view data) override {
    last_activity_ = conn_->Now();
    if (!up_) return;
    ex_->log.bytes_received += data.size();
    up_->Write(data);
    if (up_->buffered() > kHighWater) conn_->downstream().SetReadEnabled(false);
  }
  void OnDownstreamWritable() override {
    if (up_) up_->SetReadEnabled(true);
  }
  void OnDownstreamEnd() override {
    down_eof_ = true;
    if (up_) up_->ShutdownWrite();
    MaybeDone();
  }
  absl::Time NextDeadline() override {
    if (done_at_ != absl::InfiniteFuture()) return done_at_;
    return last_activity_ + conn_->ctx().options.idle_timeout;
  }
  void Tick(absl::Time now) override {
    if (now >= done_at_) return Close(false);
    if (now >= last_activity_ + conn_->ctx().options.idle_timeout) {
      if (ex_) ex_->log.flags = "SI";
      Close(false);
    }
  }
  void Shutdown() override {
    if (up_) conn_->Retire(std::move(up_));
  }

  // ByteStream::Observer (upstream)
  void OnConnected() override {}
  void OnData(absl::string_view data) override {
    last_activity_ = conn_->Now();
    if (ex_) ex_->log.bytes_sent += data.size();
    conn_->downstream().Write(data);
    if (conn_->downstream().buffered() > kHighWater && up_) up_->SetReadEnabled(false);
  }
  void OnWritable() override { conn_->downstream().SetReadEnabled(true); }
  void OnEnd() override {
    up_eof_ = true;
    conn_->downstream().ShutdownWrite();
    MaybeDone();
  }
  void OnError(const absl::Status& s) override {
    AMBIT_LOG("waypoint", Debug) << "tcp upstream: " << s;
    if (ex_) ex_->log.flags = ex_->log.bytes_sent == 0 ? "UF" : "UR";
    Close(true);
  }

 private:
  void MaybeDone() {
    if (!down_eof_ || !up_eof_) return;
    // Both directions ended; give the last bytes a moment to leave.
    done_at_ = conn_->Now() + absl::Seconds(1);
    conn_->Rearm();
    if (conn_->downstream().buffered() == 0) Close(false);
  }
  void Close(bool abort) {
    if (ex_) {
      FinishExchange(conn_, *ex_);
      ex_.reset();
    }
    conn_->Finish(abort);
  }

  Connection* conn_;
  std::unique_ptr<Exchange> ex_;
  std::unique_ptr<ByteStream> up_;
  absl::Time last_activity_;
  absl::Time done_at_ = absl::InfiniteFuture();
  bool down_eof_ = false;
  bool up_eof_ = false;
};

}  // namespace

std::unique_ptr<Handler> NewTcpHandler(Connection* conn) {
  return std::make_unique<TcpHandler>(conn);
}

}  // namespace ambit::waypoint::internal
