#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "agent/common/event_loop.h"
#include "agent/common/ip_address.h"
#include "agent/common/unique_fd.h"
#include "agent/hbone/session.h"
#include "agent/tunnel/worker.h"

namespace ambit::tunnel {

// Joins one TCP socket to one HBONE stream: the application's socket on the outbound side, the
// connection to the application on the inbound side. Full duplex; a FIN becomes END_STREAM and
// back; a reset becomes RST_STREAM and back; a full socket or a short Write stops reading the
// other side (flow control does the rest). Lives on one worker; owned by it as a Flow.
class TunnelStream final : public Flow, public hbone::StreamObserver, public EventHandler {
 public:
  TunnelStream(Worker& worker, std::string description, UniqueFd socket);
  ~TunnelStream() override;

  // Where a refused CONNECT is opened again (a session that can take one more stream).
  using SessionSource = std::function<absl::StatusOr<std::shared_ptr<hbone::HboneSession>>()>;
  // Outbound: opens the CONNECT on `session`; relaying starts on a 200. A CONNECT the peer
  // refuses unprocessed before answering (hbone::RetryRefusedConnect) is opened once more on a
  // session from `reopen`, when given.
  absl::Status Open(std::shared_ptr<hbone::HboneSession> session, absl::string_view authority,
                    const hbone::ConnectHeaders& headers, SessionSource reopen = {});
  // Inbound: the stream exists; the socket is connecting to the application. Answers 200 once
  // the connect succeeds (503 if it fails), then relays.
  void Accept(std::shared_ptr<hbone::HboneSession> session, hbone::StreamId id,
              std::optional<std::pair<SocketAddress, SocketAddress>> delivery_entry);

  void Reset(const std::string& reason) override { Fail(reason, true); }
  // The socket is the client's on the outbound side and the server's on the inbound side.
  void Bytes(uint64_t* from_client, uint64_t* to_client) const override {
    bool outbound = record().direction == FlowDirection::kOutbound;
    *from_client = outbound ? sent_ : received_;
    *to_client = outbound ? received_ : sent_;
  }

  // hbone::StreamObserver
  void OnResponse(int status) override;
  void OnData(const uint8_t* data, size_t len) override;
  void OnWritable() override;
  void OnEndStream() override;
  void OnClosed() override;
  void OnReset(uint32_t error_code) override;
  // EventHandler (the socket)
  void OnEvents(uint32_t events) override;

 private:
  void StartRelay();
  void PumpToPeer();
  void PumpToSocket();
  void MaybeFinish();
  // Ends everything: RST on the socket, RST_STREAM on the stream (unless the peer ended it).
  void Fail(const std::string& reason, bool reset_stream);
  void Done();
  void ForgetDelivery();
  // The CONNECT again, on a session from reopen_; false when there is none or it fails.
  bool Reopen(uint32_t error_code);

  Worker& worker_;
  UniqueFd socket_;
  std::shared_ptr<hbone::HboneSession> session_;
  hbone::StreamId id_ = -1;
  bool watching_ = false;
  bool connecting_ = false;  // inbound: connect to the application in progress
  bool relaying_ = false;
  bool blocked_ = false;      // Write was short: wait for OnWritable
  bool socket_eof_ = false;   // the socket sent FIN
  bool sent_end_ = false;     // END_STREAM queued
  bool peer_end_ = false;     // the peer sent END_STREAM
  bool socket_shut_ = false;  // FIN forwarded to the socket
  bool stream_over_ = false;  // OnClosed / OnReset seen: the session forgets the stream
  bool done_ = false;
  bool drained_ = false;   // a short read emptied the socket: wait for the next EPOLLIN
  bool closing_ = false;   // EPOLLRDHUP/HUP/ERR seen: read until EOF, never stop early
  std::string to_peer_;    // read from the socket, not yet taken by Write
  std::string to_socket_;  // from the peer, not yet written to the socket
  size_t to_socket_off_ = 0;
  uint64_t sent_ = 0, received_ = 0;
  std::optional<std::pair<SocketAddress, SocketAddress>> delivery_;
  // Outbound: what a retry of a refused CONNECT needs.
  std::string authority_;
  hbone::ConnectHeaders headers_;
  SessionSource reopen_;
  bool got_response_ = false;
  bool retried_ = false;
};

}  // namespace ambit::tunnel
