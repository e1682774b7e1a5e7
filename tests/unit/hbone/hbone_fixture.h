#pragma once

// A loop, a PKI, a server and client contexts, and a TestServer on 127.0.0.1: what every HBONE
// test starts from.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/hbone/hbone_test_util.h"

namespace ambit::hbone::testing {

class HboneFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    auto loop = EpollLoop::Create();
    ASSERT_TRUE(loop.ok()) << loop.status();
    loop_ = *std::move(loop);
    auto pki = TestPki::Create();
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *std::move(pki);
    auto server_svid = pki_->Mint(kServerId);
    ASSERT_TRUE(server_svid.ok()) << server_svid.status();
    server_svid_ = *std::move(server_svid);
    auto client_svid = pki_->Mint(kClientId);
    ASSERT_TRUE(client_svid.ok()) << client_svid.status();
    client_svid_ = *std::move(client_svid);
    auto server_ctx = MakeServerContext(server_svid_, pki_->store(), kTrustDomain);
    ASSERT_TRUE(server_ctx.ok()) << server_ctx.status();
    server_ctx_ = *std::move(server_ctx);
    auto client_ctx = MakeClientContext(client_svid_, pki_->store(), kTrustDomain);
    ASSERT_TRUE(client_ctx.ok()) << client_ctx.status();
    client_ctx_ = *std::move(client_ctx);
  }

  void StartServer(SessionOptions options = {}, std::shared_ptr<const TlsContext> ctx = nullptr) {
    auto server = TestServer::Create(loop_.get(), ctx != nullptr ? ctx : server_ctx_, options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // A client session to the test server, not yet established.
  std::shared_ptr<HboneSession> Dial(const std::string& expected = kServerId,
                                     SessionOptions options = {},
                                     std::shared_ptr<const TlsContext> ctx = nullptr,
                                     ClientEvents* events = nullptr) {
    auto fd = ConnectLoopback(server_->port());
    EXPECT_TRUE(fd.ok()) << fd.status();
    if (!fd.ok()) return nullptr;
    auto session =
        HboneSession::CreateClient(loop_.get(), *std::move(fd), ctx != nullptr ? ctx : client_ctx_,
                                   expected, events != nullptr ? events : &client_events_, options);
    EXPECT_TRUE(session.ok()) << session.status();
    return session.ok() ? *std::move(session) : nullptr;
  }

  // A CONNECT stream on `session`, recorded in a new TestStream.
  TestStream* Open(HboneSession& session, const std::string& authority = "127.0.0.1:8080",
                   const ConnectHeaders& headers = {}) {
    auto stream = std::make_unique<TestStream>();
    stream->session = &session;
    auto id = session.Connect(authority, headers, stream.get());
    EXPECT_TRUE(id.ok()) << id.status();
    stream->id = id.ok() ? *id : 0;
    client_streams_.push_back(std::move(stream));
    return client_streams_.back().get();
  }

  bool Run(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(20)) {
    return RunUntil(*loop_, done, timeout);
  }

  std::unique_ptr<EpollLoop> loop_;
  std::unique_ptr<TestPki> pki_;
  tls::CertifiedKey server_svid_;
  tls::CertifiedKey client_svid_;
  std::shared_ptr<const TlsContext> server_ctx_;
  std::shared_ptr<const TlsContext> client_ctx_;
  ClientEvents client_events_;
  std::vector<std::unique_ptr<TestStream>> client_streams_;
  std::unique_ptr<TestServer> server_;
};

}  // namespace ambit::hbone::testing
