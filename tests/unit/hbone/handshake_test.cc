// TLS for HBONE: TLS 1.3 + ALPN h2 + mutual SVIDs, and every way a peer is refused.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "agent/hbone/session.h"
#include "agent/hbone/tls_context.h"
#include "agent/tls/crl.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/hbone/hbone_fixture.h"

namespace ambit::hbone::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

class HandshakeTest : public HboneFixture {
 protected:
  // The test PKI's roots with a CRL (from a minute before `now` for an hour) listing `revoked`.
  bssl::UniquePtr<X509_STORE> StoreRevoking(X509* revoked, absl::Time now) {
    auto crl = pki_->ca().CrlPem({revoked}, now - absl::Minutes(1), now + absl::Hours(1));
    EXPECT_TRUE(crl.ok()) << crl.status();
    if (!crl.ok()) return nullptr;
    auto crls = tls::CrlSet::Parse({*crl}, pki_->bundle());
    EXPECT_TRUE(crls.ok()) << crls.status();
    auto store = pki_->bundle().NewStore();
    EXPECT_TRUE(store.ok()) << store.status();
    if (!crls.ok() || !store.ok() || !(*crls)->AddTo(store->get()).ok()) return nullptr;
    return *std::move(store);
  }
};

TEST_F(HandshakeTest, MutualTls13WithAlpnH2AndSpiffeIds) {
  StartServer();
  auto client = Dial();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(Run([&] { return client->established() && server_->established == 1; }));

  const SSL* ssl = client->ssl();
  EXPECT_EQ(SSL_version(ssl), TLS1_3_VERSION);
  const uint8_t* alpn;
  unsigned alpn_len;
  SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(alpn), alpn_len), "h2");
  uint16_t cipher = SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(ssl));
  EXPECT_TRUE(cipher == 0x1301 || cipher == 0x1302) << SSL_get_cipher(ssl);

  EXPECT_EQ(client->peer_identity(), kServerId);
  auto from_ssl = PeerSpiffeId(ssl);
  ASSERT_TRUE(from_ssl.ok()) << from_ssl.status();
  EXPECT_EQ(*from_ssl, kServerId);

  ASSERT_EQ(server_->sessions.size(), 1u);
  EXPECT_EQ(server_->sessions[0]->peer_identity(), kClientId);
  auto client_id = PeerSpiffeId(server_->sessions[0]->ssl());
  ASSERT_TRUE(client_id.ok()) << client_id.status();
  EXPECT_EQ(*client_id, kClientId);
  EXPECT_EQ(server_->stats.sessions_established, 1u);
  EXPECT_EQ(client->stats().sessions_established, 1u);
}

TEST_F(HandshakeTest, ClientRefusesServerWithWrongIdentity) {
  StartServer();
  const std::string expected = "spiffe://cluster.local/ns/default/sa/somebody-else";
  auto client = Dial(expected);
  ASSERT_NE(client, nullptr);
  TestStream* stream = Open(*client);  // queued before the handshake; must fail with it
  ASSERT_TRUE(Run([&] { return client_events_.closed && server_->closed.size() == 1; }));
  EXPECT_EQ(client_events_.close_status.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(
      client_events_.close_status.message(),
      AllOf(HasSubstr("server identity mismatch"), HasSubstr(expected), HasSubstr(kServerId)));
  EXPECT_EQ(client->stats().identity_mismatch, 1u);
  EXPECT_EQ(stream->reset, kConnectError);
  EXPECT_FALSE(server_->closed[0].ok());
  EXPECT_TRUE(server_->requests.empty());
}

// The second handshake with the same certificates skips the chain's signature check (the
// context remembers verified chains) but never the per-connection checks: a client that expects
// another identity is still refused, and the session that expects the right one still works.
TEST_F(HandshakeTest, RememberedChainsStillGetEveryPerConnectionCheck) {
  StartServer();
  auto first = Dial();
  ASSERT_NE(first, nullptr);
  ASSERT_TRUE(Run([&] { return first->established() && server_->established == 1; }));
  auto second = Dial();
  ASSERT_NE(second, nullptr);
  ASSERT_TRUE(Run([&] { return second->established() && server_->established == 2; }));
  EXPECT_EQ(second->peer_identity(), kServerId);
  ASSERT_EQ(server_->sessions.size(), 2u);
  EXPECT_EQ(server_->sessions[1]->peer_identity(), kClientId);
  auto verified = PeerSpiffeId(server_->sessions[1]->ssl());
  ASSERT_TRUE(verified.ok()) << verified.status();
  EXPECT_EQ(SSL_get_verify_result(server_->sessions[1]->ssl()), X509_V_OK);

  const std::string expected = "spiffe://cluster.local/ns/default/sa/somebody-else";
  ClientEvents events;
  auto wrong = Dial(expected, {}, nullptr, &events);
  ASSERT_NE(wrong, nullptr);
  ASSERT_TRUE(Run([&] { return events.closed; }));
  EXPECT_EQ(events.close_status.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(events.close_status.message(), HasSubstr("server identity mismatch"));
  EXPECT_EQ(wrong->stats().identity_mismatch, 1u);
}

TEST_F(HandshakeTest, ClientRefusesServerFromAnotherRoot) {
  auto other = TestPki::Create("another root");
  ASSERT_TRUE(other.ok());
  auto svid = (*other)->Mint(kServerId);
  ASSERT_TRUE(svid.ok());
  // The server trusts our root, but presents a certificate of the other one.
  auto ctx = MakeServerContext(*svid, pki_->store(), kTrustDomain);
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  StartServer({}, *ctx);
  auto client = Dial();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(Run([&] { return client_events_.closed; }));
  EXPECT_EQ(client_events_.close_status.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(client_events_.close_status.message(), HasSubstr("trust bundle"));
  EXPECT_EQ(client->stats().untrusted_peer, 1u);
}

TEST_F(HandshakeTest, ServerRefusesClientWithoutCertificate) {
  StartServer();
  auto raw = RawTlsClient::Create(loop_.get(), server_->port(), {});
  ASSERT_TRUE(raw.ok()) << raw.status();
  ASSERT_TRUE(Run([&] { return (*raw)->finished() && server_->closed.size() == 1; }));
  EXPECT_EQ((*raw)->error(), "TLSV1_ALERT_CERTIFICATE_REQUIRED");
  EXPECT_EQ(server_->stats.no_client_cert, 1u);
  EXPECT_EQ(server_->closed[0].code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(server_->closed[0].message(), HasSubstr("no certificate"));
}

TEST_F(HandshakeTest, ServerRefusesClientOfAnotherTrustDomain) {
  StartServer();
  const std::string foreign = "spiffe://evil.example/ns/default/sa/client";
  auto svid = pki_->Mint(kClientId, foreign);  // same root, other trust domain
  ASSERT_TRUE(svid.ok());
  RawTlsClient::Options options;
  options.svid = &*svid;
  auto raw = RawTlsClient::Create(loop_.get(), server_->port(), options);
  ASSERT_TRUE(raw.ok()) << raw.status();
  ASSERT_TRUE(Run([&] { return (*raw)->finished() && server_->closed.size() == 1; }));
  EXPECT_EQ(server_->stats.untrusted_peer, 1u);
  EXPECT_THAT(server_->closed[0].message(),
              AllOf(HasSubstr(foreign), HasSubstr(kServerId), HasSubstr("trust domain")));
  EXPECT_FALSE((*raw)->error().empty());
}

// MeshConfig trustDomainAliases: a client whose SVID is in an alias trust domain (same root) is
// accepted, and named with its own SPIFFE ID; any other trust domain is still refused.
TEST_F(HandshakeTest, ServerAcceptsClientOfAnAliasTrustDomain) {
  auto ctx = MakeServerContext(server_svid_, pki_->store(), kTrustDomain, &RealClock::Get(),
                               {"old.example"});
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  StartServer({}, *ctx);
  const std::string old_id = "spiffe://old.example/ns/default/sa/client";
  auto svid = pki_->Mint(old_id);
  ASSERT_TRUE(svid.ok());
  auto client_ctx = MakeClientContext(*svid, pki_->store(), "old.example", &RealClock::Get(),
                                      {std::string(kTrustDomain)});
  ASSERT_TRUE(client_ctx.ok()) << client_ctx.status();
  // The client computed the server's identity in its own trust domain: the same path in a trust
  // domain of its bundle is the same workload.
  auto client = Dial("spiffe://old.example/ns/default/sa/server", {}, *client_ctx);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(Run([&] { return client->established() && server_->established == 1; }));
  EXPECT_EQ(client->peer_identity(), kServerId);
  ASSERT_EQ(server_->sessions.size(), 1u);
  EXPECT_EQ(server_->sessions[0]->peer_identity(), old_id);

  const std::string foreign = "spiffe://evil.example/ns/default/sa/client";
  auto evil = pki_->Mint(kClientId, foreign);
  ASSERT_TRUE(evil.ok());
  RawTlsClient::Options options;
  options.svid = &*evil;
  auto raw = RawTlsClient::Create(loop_.get(), server_->port(), options);
  ASSERT_TRUE(raw.ok()) << raw.status();
  ASSERT_TRUE(Run([&] { return (*raw)->finished() && server_->closed.size() == 1; }));
  EXPECT_THAT(server_->closed[0].message(), AllOf(HasSubstr(foreign), HasSubstr("trust domain")));
}

// The alias does not loosen the path: another workload in the alias trust domain is a mismatch.
TEST_F(HandshakeTest, ClientWithAliasesStillRefusesAnotherWorkload) {
  StartServer();
  auto client_ctx = MakeClientContext(client_svid_, pki_->store(), kTrustDomain, &RealClock::Get(),
                                      {"old.example"});
  ASSERT_TRUE(client_ctx.ok());
  const std::string expected = "spiffe://old.example/ns/default/sa/somebody-else";
  auto client = Dial(expected, {}, *client_ctx);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(Run([&] { return client_events_.closed && server_->closed.size() == 1; }));
  EXPECT_THAT(client_events_.close_status.message(),
              AllOf(HasSubstr("server identity mismatch"), HasSubstr(expected)));
  // Nor does a trust domain outside the bundle pass for ours.
  auto other = MakeClientContext(client_svid_, pki_->store(), kTrustDomain, &RealClock::Get(),
                                 {"old.example"});
  ASSERT_TRUE(other.ok());
  ClientEvents events;
  auto client2 = Dial("spiffe://evil.example/ns/default/sa/server", {}, *other, &events);
  ASSERT_NE(client2, nullptr);
  ASSERT_TRUE(Run([&] { return events.closed && server_->closed.size() == 2; }));
  EXPECT_THAT(events.close_status.message(), HasSubstr("server identity mismatch"));
}

TEST(TlsContextTest, RefusesAnInvalidAlias) {
  auto pki = TestPki::Create();
  ASSERT_TRUE(pki.ok());
  auto svid = (*pki)->Mint(kServerId);
  ASSERT_TRUE(svid.ok());
  auto ctx =
      MakeServerContext(*svid, (*pki)->store(), kTrustDomain, &RealClock::Get(), {"Bad/Alias"});
  EXPECT_EQ(ctx.status().code(), absl::StatusCode::kInvalidArgument);
}

// --crl-file: a client whose certificate serial is in a CRL of the trust bundle is refused at
// the handshake, the refusal names its SPIFFE ID and serial and is counted; another client of
// the same root still gets in.
TEST_F(HandshakeTest, ServerRefusesClientWithARevokedCertificate) {
  bssl::UniquePtr<X509_STORE> store = StoreRevoking(client_svid_.chain[0].get(), absl::Now());
  ASSERT_NE(store, nullptr);
  auto ctx = MakeServerContext(server_svid_, store.get(), kTrustDomain);
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  StartServer({}, *ctx);

  RawTlsClient::Options options;
  options.svid = &client_svid_;
  auto raw = RawTlsClient::Create(loop_.get(), server_->port(), options);
  ASSERT_TRUE(raw.ok()) << raw.status();
  ASSERT_TRUE(Run([&] { return (*raw)->finished() && server_->closed.size() == 1; }));
  EXPECT_EQ(server_->stats.revoked_peer, 1u);
  EXPECT_EQ(server_->stats.untrusted_peer, 0u);
  EXPECT_THAT(server_->closed[0].message(),
              AllOf(HasSubstr(kClientId), HasSubstr(client_svid_.serial_hex), HasSubstr("revoked"),
                    HasSubstr("(its own)")));
  EXPECT_FALSE((*raw)->error().empty());

  // A client of the same root whose serial is not listed is served.
  auto other = pki_->Mint("spiffe://cluster.local/ns/default/sa/other");
  ASSERT_TRUE(other.ok());
  auto other_ctx = MakeClientContext(*other, pki_->store(), kTrustDomain);
  ASSERT_TRUE(other_ctx.ok());
  auto client = Dial(kServerId, {}, *other_ctx);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(Run([&] { return client->established() && server_->established == 1; }));
  // Our own chain is still covered by a store whose CRLs do not list it (issuer with a CRL).
  EXPECT_TRUE((*other_ctx)->CoveredBy(**ctx, absl::Now()).ok());
}

// A session outlives the trust it was made with: a CRL that lists the client's certificate, or
// a bundle without the client's trust domain as an alias, arrives as a new context. The new
// context checks the peer of the established session again and says why it would refuse it now;
// the unchanged bundle still accepts it.
TEST_F(HandshakeTest, PeerOfAnEstablishedSessionIsCheckedAgainstANewContext) {
  auto with_alias = MakeServerContext(server_svid_, pki_->store(), kTrustDomain, &RealClock::Get(),
                                      {"old.example"});
  ASSERT_TRUE(with_alias.ok()) << with_alias.status();
  StartServer({}, *with_alias);
  auto client = Dial();
  ASSERT_NE(client, nullptr);
  const std::string old_id = "spiffe://old.example/ns/default/sa/client";
  auto old_svid = pki_->Mint(old_id);
  ASSERT_TRUE(old_svid.ok());
  auto old_ctx = MakeClientContext(*old_svid, pki_->store(), "old.example", &RealClock::Get(),
                                   {std::string(kTrustDomain)});
  ASSERT_TRUE(old_ctx.ok()) << old_ctx.status();
  ClientEvents old_events;
  auto old_client = Dial(kServerId, {}, *old_ctx, &old_events);
  ASSERT_NE(old_client, nullptr);
  ASSERT_TRUE(Run([&] { return server_->established == 2; }));
  ASSERT_EQ(server_->sessions.size(), 2u);
  const SSL* ours = nullptr;
  const SSL* migrating = nullptr;
  for (const auto& s : server_->sessions) {
    (s->peer_identity() == kClientId ? ours : migrating) = s->ssl();
  }
  ASSERT_NE(ours, nullptr);
  ASSERT_NE(migrating, nullptr);
  const absl::Time now = absl::Now();
  EXPECT_TRUE((*with_alias)->AcceptsPeerOf(ours, now).ok());
  EXPECT_TRUE((*with_alias)->AcceptsPeerOf(migrating, now).ok());

  // The client's certificate is revoked: the new context refuses it, by serial; the other peer
  // is still accepted.
  bssl::UniquePtr<X509_STORE> store = StoreRevoking(client_svid_.chain[0].get(), now);
  ASSERT_NE(store, nullptr);
  auto revoking = MakeServerContext(server_svid_, store.get(), kTrustDomain, &RealClock::Get(),
                                    {"old.example"});
  ASSERT_TRUE(revoking.ok()) << revoking.status();
  bool revoked = false;
  absl::Status refused = (*revoking)->AcceptsPeerOf(ours, now, &revoked);
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(revoked);
  EXPECT_THAT(refused.message(), AllOf(HasSubstr(kClientId), HasSubstr(client_svid_.serial_hex),
                                       HasSubstr("revoked")));
  EXPECT_TRUE((*revoking)->AcceptsPeerOf(migrating, now, &revoked).ok());
  EXPECT_FALSE(revoked);

  // The alias is gone: the migrating peer's trust domain is not ours any more.
  auto without_alias = MakeServerContext(server_svid_, pki_->store(), kTrustDomain);
  ASSERT_TRUE(without_alias.ok());
  refused = (*without_alias)->AcceptsPeerOf(migrating, now, &revoked);
  EXPECT_FALSE(refused.ok());
  EXPECT_FALSE(revoked);
  EXPECT_THAT(refused.message(), AllOf(HasSubstr(old_id), HasSubstr("trust domain")));
  EXPECT_TRUE((*without_alias)->AcceptsPeerOf(ours, now).ok());

  // Another root altogether: the chain does not verify.
  auto other_pki = TestPki::Create();
  ASSERT_TRUE(other_pki.ok());
  auto foreign = MakeServerContext(server_svid_, (*other_pki)->store(), kTrustDomain);
  ASSERT_TRUE(foreign.ok());
  refused = (*foreign)->AcceptsPeerOf(ours, now, &revoked);
  EXPECT_FALSE(refused.ok());
  EXPECT_FALSE(revoked);
  EXPECT_THAT(refused.message(), HasSubstr("no longer verifies"));
}

TEST_F(HandshakeTest, ServerRefusesClientFromUntrustedRoot) {
  StartServer();
  auto other = TestPki::Create("another root");
  ASSERT_TRUE(other.ok());
  auto svid = (*other)->Mint(kClientId);
  ASSERT_TRUE(svid.ok());
  RawTlsClient::Options options;
  options.svid = &*svid;
  auto raw = RawTlsClient::Create(loop_.get(), server_->port(), options);
  ASSERT_TRUE(raw.ok()) << raw.status();
  ASSERT_TRUE(Run([&] { return (*raw)->finished() && server_->closed.size() == 1; }));
  EXPECT_EQ(server_->stats.untrusted_peer, 1u);
  EXPECT_THAT(server_->closed[0].message(), HasSubstr("does not verify against the trust bundle"));
  EXPECT_EQ((*raw)->error(), "TLSV1_ALERT_UNKNOWN_CA");
}

TEST_F(HandshakeTest, ServerRefusesClientOfferingOtherProtocols) {
  StartServer();
  RawTlsClient::Options options;
  options.svid = &client_svid_;
  options.alpn = {"http/1.1"};
  auto raw = RawTlsClient::Create(loop_.get(), server_->port(), options);
  ASSERT_TRUE(raw.ok()) << raw.status();
  ASSERT_TRUE(Run([&] { return (*raw)->finished() && server_->closed.size() == 1; }));
  EXPECT_FALSE((*raw)->handshake_done());
  EXPECT_EQ((*raw)->error(), "TLSV1_ALERT_NO_APPLICATION_PROTOCOL");
  EXPECT_EQ(server_->stats.no_alpn, 1u);
  EXPECT_THAT(server_->closed[0].message(), HasSubstr("without h2"));
}

TEST_F(HandshakeTest, ServerRefusesClientWithoutAlpn) {
  StartServer();
  RawTlsClient::Options options;
  options.svid = &client_svid_;
  options.alpn = {};
  auto raw = RawTlsClient::Create(loop_.get(), server_->port(), options);
  ASSERT_TRUE(raw.ok()) << raw.status();
  ASSERT_TRUE(Run([&] { return (*raw)->finished() && server_->closed.size() == 1; }));
  EXPECT_FALSE((*raw)->handshake_done());
  EXPECT_EQ((*raw)->error(), "TLSV1_ALERT_NO_APPLICATION_PROTOCOL");
  EXPECT_EQ(server_->stats.no_alpn, 1u);
}

TEST_F(HandshakeTest, AcceptsAWellBehavedRawClient) {
  // The raw client is only useful if it can pass when nothing is wrong.
  StartServer();
  RawTlsClient::Options options;
  options.svid = &client_svid_;
  auto raw = RawTlsClient::Create(loop_.get(), server_->port(), options);
  ASSERT_TRUE(raw.ok()) << raw.status();
  ASSERT_TRUE(Run([&] { return server_->established == 1; }));
  EXPECT_EQ(server_->sessions[0]->peer_identity(), kClientId);
}

std::string Frame(uint32_t length, uint8_t type, uint8_t flags, uint32_t stream,
                  const std::string& payload) {
  std::string f = {static_cast<char>(length >> 16), static_cast<char>(length >> 8),
                   static_cast<char>(length),       static_cast<char>(type),
                   static_cast<char>(flags),        static_cast<char>(stream >> 24),
                   static_cast<char>(stream >> 16), static_cast<char>(stream >> 8),
                   static_cast<char>(stream)};
  return f + payload;
}

constexpr char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

TEST_F(HandshakeTest, ProtocolErrorGetsGoawayAndIsCounted) {
  StartServer();
  RawTlsClient::Options options;
  options.svid = &client_svid_;
  // A SETTINGS frame whose length is not a multiple of 6: FRAME_SIZE_ERROR, a connection error.
  options.send =
      std::string(kPreface) + Frame(0, 4, 0, 0, "") + Frame(5, 4, 0, 0, std::string(5, '\0'));
  auto raw = RawTlsClient::Create(loop_.get(), server_->port(), options);
  ASSERT_TRUE(raw.ok()) << raw.status();
  ASSERT_TRUE(Run([&] { return (*raw)->finished() && server_->closed.size() == 1; }));
  EXPECT_EQ(server_->stats.protocol_errors, 1u);
  EXPECT_THAT(server_->closed[0].message(), HasSubstr("GOAWAY(FRAME_SIZE_ERROR)"));
}

TEST_F(HandshakeTest, PingFloodEndsTheSession) {
  StartServer();
  RawTlsClient::Options options;
  options.svid = &client_svid_;
  options.send = std::string(kPreface) + Frame(0, 4, 0, 0, "");
  for (int i = 0; i < 5000; ++i) options.send += Frame(8, 6, 0, 0, std::string(8, 'p'));
  auto raw = RawTlsClient::Create(loop_.get(), server_->port(), options);
  ASSERT_TRUE(raw.ok()) << raw.status();
  ASSERT_TRUE(Run([&] { return server_->closed.size() == 1; }));
  EXPECT_EQ(server_->stats.floods, 1u);
  EXPECT_THAT(server_->closed[0].message(), HasSubstr("Flooding was detected"));
}

TEST_F(HandshakeTest, StreamsBeyondAnAcknowledgedLimitEndTheSession) {
  // nghttp2 1.52 refuses excess streams with REFUSED_STREAM only while our SETTINGS are
  // unacknowledged (see SessionTest.StreamsBeyondTheLimitAreRefused); a client that acknowledged
  // the limit and still exceeds it gets GOAWAY(PROTOCOL_ERROR). Documented in session.h.
  StartServer();
  RawTlsClient::Options options;
  options.svid = &client_svid_;
  // SETTINGS, then an ACK of the server's SETTINGS (sent as soon as its handshake finished).
  options.send = std::string(kPreface) + Frame(0, 4, 0, 0, "") + Frame(0, 4, 1, 0, "");
  // HPACK literals with indexed names: :method (2) CONNECT, :authority (1) 127.0.0.1:80.
  const std::string block = std::string("\x02\x07") + "CONNECT" + "\x01\x0c" + "127.0.0.1:80";
  for (uint32_t i = 0; i < 101; ++i) {
    options.send += Frame(block.size(), 1, 0x4, 2 * i + 1, block);
  }
  auto raw = RawTlsClient::Create(loop_.get(), server_->port(), options);
  ASSERT_TRUE(raw.ok()) << raw.status();
  ASSERT_TRUE(Run([&] { return server_->closed.size() == 1; }));
  EXPECT_EQ(server_->requests.size(), 100u);
  EXPECT_THAT(server_->closed[0].message(), HasSubstr("GOAWAY(PROTOCOL_ERROR)"));
  EXPECT_EQ(server_->stats.protocol_errors, 1u);
}

TEST_F(HandshakeTest, HandshakeTimesOut) {
  // A listener nobody accepts from: the kernel completes the TCP handshake, nobody speaks TLS.
  UniqueFd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(listener.get(), 4), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
  auto fd = ConnectLoopback(ntohs(addr.sin_port));
  ASSERT_TRUE(fd.ok());
  SessionOptions options;
  options.handshake_timeout = absl::Milliseconds(200);
  auto client = HboneSession::CreateClient(loop_.get(), *std::move(fd), client_ctx_, kServerId,
                                           &client_events_, options);
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE(Run([&] { return client_events_.closed; }, absl::Seconds(5)));
  EXPECT_EQ(client_events_.close_status.code(), absl::StatusCode::kDeadlineExceeded)
      << client_events_.close_status;
  EXPECT_EQ((*client)->stats().tls_failures, 1u);
}

// A context verifies peers at its clock's time, remembered chains included: once the clock
// passes the peer's notAfter, the chain it verified before is refused, not served from memory.
TEST_F(HandshakeTest, RememberedChainIsRefusedOnceTheContextClockPassesItsExpiry) {
  FakeClock clock(absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now())));
  auto server_ctx = MakeServerContext(server_svid_, pki_->store(), kTrustDomain, &clock);
  auto client_ctx = MakeClientContext(client_svid_, pki_->store(), kTrustDomain, &clock);
  ASSERT_TRUE(server_ctx.ok() && client_ctx.ok());
  StartServer({}, *server_ctx);
  ClientEvents first_events;
  auto first = Dial(kServerId, {}, *client_ctx, &first_events);
  ASSERT_NE(first, nullptr);
  ASSERT_TRUE(Run([&] { return first->established() && server_->established == 1; }));

  clock.Set(server_svid_.not_after + absl::Minutes(1));
  ClientEvents events;
  auto second = Dial(kServerId, {}, *client_ctx, &events);
  ASSERT_NE(second, nullptr);
  ASSERT_TRUE(Run([&] { return events.closed; }));
  EXPECT_FALSE(events.close_status.ok());
  EXPECT_THAT(events.close_status.message(), HasSubstr("expired")) << events.close_status;
  EXPECT_EQ(server_->established, 1);
}

TEST(TlsContextTest, RefusesIdentityOutsideTrustDomain) {
  auto pki = TestPki::Create();
  ASSERT_TRUE(pki.ok());
  auto svid = (*pki)->Mint(kServerId);
  ASSERT_TRUE(svid.ok());
  auto ctx = MakeServerContext(*svid, (*pki)->store(), "other.domain");
  EXPECT_EQ(ctx.status().code(), absl::StatusCode::kInvalidArgument);
  auto client = MakeClientContext(*svid, (*pki)->store(), kTrustDomain);
  ASSERT_TRUE(client.ok());
  EXPECT_FALSE((*client)->NewSsl(0, "").ok());  // a client must name whom it expects
}

}  // namespace
}  // namespace ambit::hbone::testing
