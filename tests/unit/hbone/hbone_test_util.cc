#include "tests/unit/hbone/hbone_test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <random>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "agent/common/status.h"
#include "agent/tls/keys.h"

namespace ambit::hbone::testing {

absl::StatusOr<std::unique_ptr<TestPki>> TestPki::Create(const std::string& name) {
  auto pki = std::make_unique<TestPki>();
  tls::testing::TestCa::Options options;
  options.common_name = name;
  AMBIT_ASSIGN_OR_RETURN(pki->ca_, tls::testing::TestCa::Create(&RealClock::Get(), options));
  AMBIT_ASSIGN_OR_RETURN(pki->bundle_, tls::TrustBundle::Create({pki->ca_->root_pem()}));
  AMBIT_ASSIGN_OR_RETURN(pki->store_, pki->bundle_->NewStore());
  return pki;
}

absl::StatusOr<tls::CertifiedKey> TestPki::Mint(const std::string& identity,
                                                std::optional<std::string> uri) {
  AMBIT_ASSIGN_OR_RETURN(bssl::UniquePtr<EVP_PKEY> key, tls::GenerateP256Key());
  AMBIT_ASSIGN_OR_RETURN(std::string csr, tls::BuildCsrPem(key.get(), identity));
  tls::testing::TestCa::LeafOptions options;
  options.uri_override = std::move(uri);
  options.backdate = absl::Minutes(5);
  AMBIT_ASSIGN_OR_RETURN(std::vector<std::string> pems, ca_->Sign(csr, options));
  AMBIT_ASSIGN_OR_RETURN(std::vector<bssl::UniquePtr<X509>> chain, tls::ParsePemChain(pems[0]));
  tls::CertifiedKey svid;
  svid.identity = identity;
  svid.key = std::move(key);
  svid.chain = std::move(chain);
  AMBIT_ASSIGN_OR_RETURN(tls::CertInfo info, tls::DescribeCert(svid.chain[0].get()));
  svid.not_before = info.not_before;
  svid.not_after = info.not_after;
  svid.serial_hex = info.serial_hex;
  return svid;
}

absl::Status WritePems(const tls::CertifiedKey& svid, const std::string& root_pem,
                       const std::string& dir) {
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_PrivateKey(bio.get(), svid.key.get(), nullptr, nullptr, 0, nullptr, nullptr)) {
    return absl::InternalError("writing key PEM");
  }
  const uint8_t* data;
  size_t len;
  BIO_mem_contents(bio.get(), &data, &len);
  std::string cert;
  for (const auto& c : svid.chain) cert += tls::CertToPem(c.get());
  const std::pair<const char*, std::string> files[] = {
      {"key.pem", std::string(reinterpret_cast<const char*>(data), len)},
      {"cert.pem", cert},
      {"root.pem", root_pem}};
  for (const auto& [name, content] : files) {
    std::ofstream out(absl::StrCat(dir, "/", name), std::ios::binary | std::ios::trunc);
    out << content;
    if (!out) return absl::InternalError(absl::StrCat("writing ", dir, "/", name));
  }
  return absl::OkStatus();
}

std::string MakeTempDir() {
  const char* base = getenv("TEST_TMPDIR");
  std::string templ = absl::StrCat(base != nullptr ? base : "/tmp", "/hbone_test.XXXXXX");
  char* made = mkdtemp(templ.data());
  return made != nullptr ? std::string(made) : "";
}

bool RunUntil(EpollLoop& loop, const std::function<bool()>& done, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    loop.RunOnce(absl::Milliseconds(10));
  }
  return true;
}

absl::StatusOr<UniqueFd> ConnectLoopback(uint16_t port) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return absl::ErrnoToStatus(errno, "socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 &&
      errno != EINPROGRESS) {
    return absl::ErrnoToStatus(errno, "connect");
  }
  return fd;
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

std::string Sha256Hex(const std::string& data) {
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(data.data()), data.size(), digest);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof digest));
}

void TestStream::Send(std::string data, bool then_close) {
  to_send_ = std::move(data);
  sent_ = 0;
  close_after_ = then_close;
  close_sent_ = false;
  Pump();
}

void TestStream::Pump() {
  while (sent_ < to_send_.size()) {
    size_t n = session->Write(id, absl::string_view(to_send_).substr(sent_));
    if (n == 0) return;
    sent_ += n;
  }
  if (close_after_ && !close_sent_) {
    close_sent_ = true;
    session->CloseWrite(id);
  }
}

void TestStream::OnData(const uint8_t* data, size_t len) {
  if (keep_data) received.append(reinterpret_cast<const char*>(data), len);
  received_bytes += len;
  unconsumed += len;
  if (auto_consume) ConsumeAll();
}

void TestStream::ConsumeAll() {
  if (unconsumed == 0) return;
  session->Consume(id, unconsumed);
  unconsumed = 0;
}

void TestStream::OnWritable() {
  ++writable_calls;
  Pump();
}

void EchoStream::OnData(const uint8_t* data, size_t len) {
  pending_.append(reinterpret_cast<const char*>(data), len);
  Pump();
}

void EchoStream::OnEndStream() {
  peer_done_ = true;
  Pump();
}

void EchoStream::Pump() {
  while (!pending_.empty()) {
    size_t n = session_->Write(id_, pending_);
    if (n == 0) break;
    pending_.erase(0, n);
    echoed += n;
    session_->Consume(id_, n);  // only now may the peer send more
  }
  if (pending_.empty() && peer_done_ && !close_sent_) {
    close_sent_ = true;
    session_->CloseWrite(id_);
  }
}

absl::StatusOr<std::unique_ptr<TestServer>> TestServer::Create(
    EpollLoop* loop, std::shared_ptr<const TlsContext> ctx, SessionOptions options) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return absl::ErrnoToStatus(errno, "socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    return absl::ErrnoToStatus(errno, "bind");
  }
  if (listen(fd.get(), 64) < 0) return absl::ErrnoToStatus(errno, "listen");
  socklen_t len = sizeof addr;
  if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) < 0) {
    return absl::ErrnoToStatus(errno, "getsockname");
  }
  std::unique_ptr<TestServer> server(
      new TestServer(loop, std::move(ctx), options, std::move(fd), ntohs(addr.sin_port)));
  server->options_.stats = &server->stats;
  AMBIT_RETURN_IF_ERROR(loop->Watch(server->listener_.get(), EPOLLIN, server.get()));
  return server;
}

TestServer::~TestServer() {
  loop_->Unwatch(listener_.get());
  sessions.clear();
}

void TestServer::OnEvents(uint32_t) {
  while (true) {
    UniqueFd fd(accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) return;
    auto session = HboneSession::CreateServer(loop_, std::move(fd), ctx_, this, options_);
    if (session.ok()) sessions.push_back(*std::move(session));
  }
}

StreamObserver* TestServer::OnConnect(HboneSession& session, StreamId stream,
                                      const ConnectRequest& request) {
  requests.push_back(request);
  if (on_connect) return on_connect(session, stream, request);
  auto observer = std::make_unique<TestStream>();
  observer->session = &session;
  observer->id = stream;
  streams.push_back(std::move(observer));
  if (!session.Respond(stream, 200).ok()) return nullptr;
  return streams.back().get();
}

absl::StatusOr<std::unique_ptr<RawTlsClient>> RawTlsClient::Create(EpollLoop* loop, uint16_t port,
                                                                   const Options& options) {
  bssl::UniquePtr<SSL_CTX> ctx(SSL_CTX_new(TLS_method()));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  if (options.svid != nullptr) {
    if (!SSL_CTX_use_certificate(ctx.get(), options.svid->chain[0].get()) ||
        !SSL_CTX_use_PrivateKey(ctx.get(), options.svid->key.get())) {
      return absl::InternalError("raw client certificate");
    }
  }
  if (!options.alpn.empty()) {
    std::string wire;
    for (const std::string& proto : options.alpn) {
      wire.push_back(static_cast<char>(proto.size()));
      wire += proto;
    }
    SSL_CTX_set_alpn_protos(ctx.get(), reinterpret_cast<const uint8_t*>(wire.data()), wire.size());
  }
  AMBIT_ASSIGN_OR_RETURN(UniqueFd fd, ConnectLoopback(port));
  bssl::UniquePtr<SSL> ssl(SSL_new(ctx.get()));
  SSL_set_fd(ssl.get(), fd.get());
  SSL_set_connect_state(ssl.get());
  std::unique_ptr<RawTlsClient> client(
      new RawTlsClient(loop, std::move(fd), std::move(ctx), std::move(ssl), options.send));
  AMBIT_RETURN_IF_ERROR(loop->Watch(client->fd_.get(), EPOLLIN | EPOLLOUT, client.get()));
  return client;
}

RawTlsClient::~RawTlsClient() {
  if (fd_) loop_->Unwatch(fd_.get());
}

void RawTlsClient::Finish(int ret) {
  int e = SSL_get_error(ssl_.get(), ret);
  uint32_t err = ERR_peek_error();
  if (err != 0) {
    const char* reason = ERR_reason_error_string(err);
    error_ = reason != nullptr ? reason : absl::StrCat("error ", err);
  } else {
    error_ = e == SSL_ERROR_ZERO_RETURN ? "closed" : absl::StrCat("ssl error ", e);
  }
  ERR_clear_error();
  finished_ = true;
  loop_->Unwatch(fd_.get());
  fd_.Reset();
}

void RawTlsClient::OnEvents(uint32_t) {
  if (finished_) return;
  if (!handshake_done_) {
    int r = SSL_do_handshake(ssl_.get());
    if (r != 1) {
      int e = SSL_get_error(ssl_.get(), r);
      if (e == SSL_ERROR_WANT_READ) loop_->Modify(fd_.get(), EPOLLIN, this).IgnoreError();
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
      Finish(r);
      return;
    }
    handshake_done_ = true;
  }
  while (!pending_.empty()) {
    int w = SSL_write(ssl_.get(), pending_.data(), static_cast<int>(pending_.size()));
    if (w > 0) {
      pending_.erase(0, static_cast<size_t>(w));
      continue;
    }
    if (SSL_get_error(ssl_.get(), w) != SSL_ERROR_WANT_WRITE) break;  // reading reports it
    loop_->Modify(fd_.get(), EPOLLIN | EPOLLOUT, this).IgnoreError();
    return;
  }
  loop_->Modify(fd_.get(), EPOLLIN, this).IgnoreError();
  char buf[4096];
  while (true) {
    int r = SSL_read(ssl_.get(), buf, sizeof buf);
    if (r > 0) continue;
    int e = SSL_get_error(ssl_.get(), r);
    if (e == SSL_ERROR_WANT_READ) return;
    Finish(r);
    return;
  }
}

}  // namespace ambit::hbone::testing
