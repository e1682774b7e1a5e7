#pragma once

// Shared pieces of the HBONE tests: a test PKI minting SVIDs, a 127.0.0.1 HBONE server on an
// EpollLoop, stream observers that record / send / echo, and a raw BoringSSL client for
// misbehaving peers. Single-threaded, like the code under test.

#include <openssl/base.h>
#include <openssl/ssl.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/common/clock.h"
#include "agent/common/epoll_loop.h"
#include "agent/common/unique_fd.h"
#include "agent/hbone/session.h"
#include "agent/hbone/tls_context.h"
#include "agent/tls/cert_manager.h"
#include "agent/tls/trust_bundle.h"
#include "tests/fakes/fake_signer.h"

namespace ambit::hbone::testing {

inline constexpr char kTrustDomain[] = "cluster.local";
inline constexpr char kClientId[] = "spiffe://cluster.local/ns/default/sa/client";
inline constexpr char kServerId[] = "spiffe://cluster.local/ns/default/sa/server";

// A root CA and the trust bundle holding it.
class TestPki {
 public:
  static absl::StatusOr<std::unique_ptr<TestPki>> Create(const std::string& name = "test root");

  // An SVID for `identity`; `uri` replaces the URI SAN written into the certificate.
  absl::StatusOr<tls::CertifiedKey> Mint(const std::string& identity,
                                         std::optional<std::string> uri = std::nullopt);
  X509_STORE* store() const { return store_.get(); }
  const std::string& root_pem() const { return ca_->root_pem(); }
  const tls::testing::TestCa& ca() const { return *ca_; }
  const tls::TrustBundle& bundle() const { return *bundle_; }

 private:
  std::unique_ptr<tls::testing::TestCa> ca_;
  std::unique_ptr<tls::TrustBundle> bundle_;
  bssl::UniquePtr<X509_STORE> store_;
};

// Writes cert.pem (leaf), key.pem and root.pem for `svid` into `dir`.
absl::Status WritePems(const tls::CertifiedKey& svid, const std::string& root_pem,
                       const std::string& dir);
// A fresh directory under TEST_TMPDIR or /tmp.
std::string MakeTempDir();

// Runs the loop until `done` or `timeout`; returns done().
bool RunUntil(EpollLoop& loop, const std::function<bool()>& done,
              absl::Duration timeout = absl::Seconds(20));

// A non-blocking socket with connect() to 127.0.0.1:port in progress.
absl::StatusOr<UniqueFd> ConnectLoopback(uint16_t port);

std::string RandomBytes(size_t n, uint32_t seed);
std::string Sha256Hex(const std::string& data);

// Records everything a stream reports; optionally sends a payload with back-pressure.
class TestStream : public StreamObserver {
 public:
  HboneSession* session = nullptr;
  StreamId id = 0;
  bool auto_consume = true;
  bool keep_data = true;  // false: count bytes only (received_bytes)

  std::string received;
  size_t received_bytes = 0;
  size_t unconsumed = 0;
  int status = 0;
  bool end_stream = false;
  bool closed = false;
  std::optional<uint32_t> reset;
  int writable_calls = 0;

  // Queues `data` and writes as much as the session takes; the rest follows on OnWritable. With
  // `then_close`, CloseWrite once everything was taken.
  void Send(std::string data, bool then_close);
  bool all_sent() const { return sent_ == to_send_.size(); }
  bool done() const { return closed || reset.has_value(); }
  void ConsumeAll();

  void OnResponse(int s) override { status = s; }
  void OnData(const uint8_t* data, size_t len) override;
  void OnWritable() override;
  void OnEndStream() override { end_stream = true; }
  void OnClosed() override { closed = true; }
  void OnReset(uint32_t code) override { reset = code; }

 private:
  void Pump();
  std::string to_send_;
  size_t sent_ = 0;
  bool close_after_ = false;
  bool close_sent_ = false;
};

// Sends back whatever arrives, consuming only what the session accepted, and half-closes after
// the peer did.
class EchoStream : public StreamObserver {
 public:
  EchoStream(HboneSession* session, StreamId id) : session_(session), id_(id) {}
  void OnData(const uint8_t* data, size_t len) override;
  void OnWritable() override { Pump(); }
  void OnEndStream() override;
  void OnClosed() override { closed = true; }
  void OnReset(uint32_t code) override { reset = code; }

  bool closed = false;
  std::optional<uint32_t> reset;
  size_t echoed = 0;

 private:
  void Pump();
  HboneSession* session_;
  StreamId id_;
  std::string pending_;
  bool peer_done_ = false;
  bool close_sent_ = false;
};

// Session delegate for clients: records what happened.
class ClientEvents : public SessionDelegate {
 public:
  void OnEstablished(HboneSession&) override { established = true; }
  void OnIdle(HboneSession&) override { ++idle; }
  void OnSessionClosed(HboneSession&, const absl::Status& status) override {
    closed = true;
    close_status = status;
  }
  bool established = false;
  int idle = 0;
  bool closed = false;
  absl::Status close_status;
};

// An HBONE server on 127.0.0.1:<ephemeral>, accepting on the loop.
class TestServer : public EventHandler, public SessionDelegate {
 public:
  using ConnectFn = std::function<StreamObserver*(HboneSession&, StreamId, const ConnectRequest&)>;

  static absl::StatusOr<std::unique_ptr<TestServer>> Create(EpollLoop* loop,
                                                            std::shared_ptr<const TlsContext> ctx,
                                                            SessionOptions options = {});
  ~TestServer() override;

  uint16_t port() const { return port_; }
  // Decides each CONNECT; default: 200 and a TestStream kept in `streams`.
  ConnectFn on_connect;
  std::vector<std::unique_ptr<TestStream>> streams;
  std::vector<ConnectRequest> requests;
  std::vector<std::shared_ptr<HboneSession>> sessions;
  std::vector<absl::Status> closed;
  int established = 0;
  HboneStats stats;

  void OnEvents(uint32_t events) override;
  void OnEstablished(HboneSession&) override { ++established; }
  StreamObserver* OnConnect(HboneSession& session, StreamId stream,
                            const ConnectRequest& request) override;
  void OnSessionClosed(HboneSession&, const absl::Status& status) override {
    closed.push_back(status);
  }

 private:
  TestServer(EpollLoop* loop, std::shared_ptr<const TlsContext> ctx, SessionOptions options,
             UniqueFd listener, uint16_t port)
      : loop_(loop),
        ctx_(std::move(ctx)),
        options_(options),
        listener_(std::move(listener)),
        port_(port) {}

  EpollLoop* loop_;
  std::shared_ptr<const TlsContext> ctx_;
  SessionOptions options_;
  UniqueFd listener_;
  uint16_t port_;
};

// A TLS 1.3 client with no checks of its own, for peers our server must refuse.
class RawTlsClient : public EventHandler {
 public:
  struct Options {
    const tls::CertifiedKey* svid = nullptr;  // null: no client certificate
    std::vector<std::string> alpn = {"h2"};   // empty: no ALPN extension
    // Written once the handshake is done (default: just the HTTP/2 client preface).
    std::string send = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  };
  static absl::StatusOr<std::unique_ptr<RawTlsClient>> Create(EpollLoop* loop, uint16_t port,
                                                              const Options& options);
  ~RawTlsClient() override;

  // Handshake done (from the client's view) and then the connection failed or closed.
  bool finished() const { return finished_; }
  bool handshake_done() const { return handshake_done_; }
  // The BoringSSL reason of the failure, e.g. "TLSV1_ALERT_CERTIFICATE_REQUIRED".
  const std::string& error() const { return error_; }

  void OnEvents(uint32_t events) override;

 private:
  RawTlsClient(EpollLoop* loop, UniqueFd fd, bssl::UniquePtr<SSL_CTX> ctx, bssl::UniquePtr<SSL> ssl,
               std::string send)
      : loop_(loop),
        fd_(std::move(fd)),
        ctx_(std::move(ctx)),
        ssl_(std::move(ssl)),
        pending_(std::move(send)) {}
  void Finish(int ret);

  EpollLoop* loop_;
  UniqueFd fd_;
  bssl::UniquePtr<SSL_CTX> ctx_;
  bssl::UniquePtr<SSL> ssl_;
  std::string pending_;
  bool handshake_done_ = false;
  bool finished_ = false;
  std::string error_;
};

}  // namespace ambit::hbone::testing
