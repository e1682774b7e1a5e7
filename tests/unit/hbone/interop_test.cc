// Interoperability with HBONE peers we did not write: Python's ssl + h2 (Debian python3-h2) as
// client and as server, and openssl s_client. Loopback only; every child is bounded by a timeout
// (and its own alarm) and killed if it overstays.

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/hbone/hbone_fixture.h"

namespace ambit::hbone::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kPython[] = "/usr/bin/python3";
constexpr size_t kMiB = 1 << 20;

// A child process whose stdout and stderr we collect without blocking the loop.
class Child {
 public:
  static std::unique_ptr<Child> Start(const std::vector<std::string>& argv) {
    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC) < 0) return nullptr;
    pid_t pid = fork();
    if (pid < 0) return nullptr;
    if (pid == 0) {
      int devnull = open("/dev/null", O_RDONLY);
      dup2(devnull, 0);
      dup2(pipe_fds[1], 1);
      dup2(pipe_fds[1], 2);
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    close(pipe_fds[1]);
    fcntl(pipe_fds[0], F_SETFL, O_NONBLOCK);
    auto child = std::make_unique<Child>();
    child->pid_ = pid;
    child->out_ = UniqueFd(pipe_fds[0]);
    return child;
  }

  ~Child() {
    if (!exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  // Collects output; true once the child exited (all output read).
  bool Poll() {
    char buf[4096];
    ssize_t n;
    while ((n = read(out_.get(), buf, sizeof buf)) > 0) output_.append(buf, n);
    if (!exited_) {
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        while ((n = read(out_.get(), buf, sizeof buf)) > 0) output_.append(buf, n);
      }
    }
    return exited_;
  }

  const std::string& output() const { return output_; }
  int exit_code() const { return exit_code_; }

  // The last line that looks like a JSON object.
  std::string JsonLine() const {
    std::string last;
    for (absl::string_view line : absl::StrSplit(output_, '\n')) {
      if (absl::StartsWith(line, "{")) last = std::string(line);
    }
    return last;
  }

 private:
  pid_t pid_ = -1;
  UniqueFd out_;
  std::string output_;
  bool exited_ = false;
  int exit_code_ = -1;
};

// `"key": "value"` from a flat JSON line (our scripts print simple string values).
std::string JsonString(const std::string& json, const std::string& key) {
  std::string needle = absl::StrCat("\"", key, "\": \"");
  size_t at = json.find(needle);
  if (at == std::string::npos) return "";
  at += needle.size();
  size_t end = json.find('"', at);
  return end == std::string::npos ? "" : json.substr(at, end - at);
}

std::string Script(const char* name) { return absl::StrCat(HBONE_TEST_DIR, "/", name); }

class InteropTest : public HboneFixture {
 protected:
  void SetUp() override {
    HboneFixture::SetUp();
    dir_ = MakeTempDir();
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override {
    for (const char* f : {"cert.pem", "key.pem", "root.pem"}) {
      unlink(absl::StrCat(dir_, "/", f).c_str());
    }
    rmdir(dir_.c_str());
  }

  std::string dir_;
};

TEST_F(InteropTest, PythonH2ClientThroughOurServer) {
  StartServer();
  std::vector<std::unique_ptr<EchoStream>> echoes;
  server_->on_connect = [&](HboneSession& session, StreamId id,
                            const ConnectRequest&) -> StreamObserver* {
    echoes.push_back(std::make_unique<EchoStream>(&session, id));
    EXPECT_TRUE(session.Respond(id, 200).ok());
    return echoes.back().get();
  };
  ASSERT_TRUE(WritePems(client_svid_, pki_->root_pem(), dir_).ok());
  auto child = Child::Start({kPython, Script("h2_client.py"), absl::StrCat(server_->port()), dir_,
                             kServerId, absl::StrCat(kMiB)});
  ASSERT_NE(child, nullptr);
  ASSERT_TRUE(Run([&] { return child->Poll(); }, absl::Seconds(40))) << child->output();
  ASSERT_EQ(child->exit_code(), 0) << child->output();
  std::string json = child->JsonLine();
  EXPECT_EQ(JsonString(json, "version"), "TLSv1.3") << json;
  EXPECT_EQ(JsonString(json, "alpn"), "h2");
  EXPECT_THAT(JsonString(json, "cipher"), HasSubstr("GCM"));
  EXPECT_THAT(json, HasSubstr(absl::StrCat("\"server_uris\": [\"", kServerId, "\"]")));
  EXPECT_EQ(JsonString(json, "connect_status"), "200");
  EXPECT_FALSE(JsonString(json, "sent_sha256").empty());
  EXPECT_EQ(JsonString(json, "echo_sha256"), JsonString(json, "sent_sha256"));
  EXPECT_EQ(JsonString(json, "get_status"), "400");
  EXPECT_EQ(JsonString(json, "bad_authority_status"), "400");

  ASSERT_EQ(server_->requests.size(), 1u);  // the two bad requests never reach the delegate
  EXPECT_EQ(server_->requests[0].authority, "127.0.0.1:8080");
  EXPECT_EQ(server_->requests[0].headers.forwarded, "for=\"127.0.0.1:40000\"");
  EXPECT_EQ(server_->requests[0].headers.baggage, "k8s.namespace.name=default");
  EXPECT_EQ(server_->requests[0].peer_identity, kClientId);
  EXPECT_EQ(server_->stats.bad_requests, 2u);
  ASSERT_EQ(echoes.size(), 1u);
  EXPECT_EQ(echoes[0]->echoed, kMiB);
}

TEST_F(InteropTest, OurClientThroughPythonH2Server) {
  ASSERT_TRUE(WritePems(server_svid_, pki_->root_pem(), dir_).ok());
  auto child = Child::Start({kPython, Script("h2_server.py"), dir_});
  ASSERT_NE(child, nullptr);
  int port = 0;
  ASSERT_TRUE(Run([&] {
    child->Poll();
    for (absl::string_view line : absl::StrSplit(child->output(), '\n')) {
      if (absl::ConsumePrefix(&line, "PORT ") && absl::SimpleAtoi(line, &port)) return true;
    }
    return child->Poll();
  }));
  ASSERT_GT(port, 0) << child->output();

  auto fd = ConnectLoopback(static_cast<uint16_t>(port));
  ASSERT_TRUE(fd.ok());
  auto client = HboneSession::CreateClient(loop_.get(), *std::move(fd), client_ctx_, kServerId,
                                           &client_events_);
  ASSERT_TRUE(client.ok()) << client.status();
  ConnectHeaders headers{"for=\"198.18.0.1:40000\"", "k8s.namespace.name=default",
                         "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"};
  TestStream* stream = Open(**client, "198.18.0.2:8080", headers);
  const std::string payload = RandomBytes(kMiB, 11);
  stream->Send(payload, /*then_close=*/true);
  ASSERT_TRUE(Run([&] { return stream->done(); }, absl::Seconds(30))) << child->output();
  EXPECT_EQ(stream->status, 200);
  EXPECT_TRUE(stream->closed);
  EXPECT_EQ(Sha256Hex(stream->received), Sha256Hex(payload));
  EXPECT_EQ((*client)->peer_identity(), kServerId);

  (*client)->Shutdown();
  ASSERT_TRUE(Run([&] { return child->Poll() && client_events_.closed; }, absl::Seconds(30)))
      << child->output();
  EXPECT_TRUE(client_events_.close_status.ok()) << client_events_.close_status;
  std::string json = child->JsonLine();
  EXPECT_EQ(JsonString(json, "version"), "TLSv1.3") << child->output();
  EXPECT_EQ(JsonString(json, "alpn"), "h2");
  EXPECT_THAT(json, HasSubstr(absl::StrCat("\"client_uris\": [\"", kClientId, "\"]")));
  EXPECT_THAT(json, HasSubstr("\":method\": \"CONNECT\""));
  EXPECT_THAT(json, HasSubstr("\":authority\": \"198.18.0.2:8080\""));
  EXPECT_THAT(json, HasSubstr("\"baggage\": \"k8s.namespace.name=default\""));
  EXPECT_THAT(json, Not(HasSubstr("\":path\"")));
  EXPECT_THAT(json, HasSubstr(absl::StrCat("\"received_bytes\": ", kMiB)));
}

TEST_F(InteropTest, OurClientRefusesPythonServerWithWrongIdentity) {
  const std::string impostor = "spiffe://cluster.local/ns/default/sa/impostor";
  auto svid = pki_->Mint(impostor);
  ASSERT_TRUE(svid.ok());
  ASSERT_TRUE(WritePems(*svid, pki_->root_pem(), dir_).ok());
  auto child = Child::Start({kPython, Script("h2_server.py"), dir_});
  ASSERT_NE(child, nullptr);
  int port = 0;
  ASSERT_TRUE(Run([&] {
    child->Poll();
    for (absl::string_view line : absl::StrSplit(child->output(), '\n')) {
      if (absl::ConsumePrefix(&line, "PORT ") && absl::SimpleAtoi(line, &port)) return true;
    }
    return child->Poll();
  }));
  ASSERT_GT(port, 0) << child->output();
  auto fd = ConnectLoopback(static_cast<uint16_t>(port));
  ASSERT_TRUE(fd.ok());
  auto client = HboneSession::CreateClient(loop_.get(), *std::move(fd), client_ctx_, kServerId,
                                           &client_events_);
  ASSERT_TRUE(client.ok());
  TestStream* stream = Open(**client);
  ASSERT_TRUE(Run([&] { return client_events_.closed && child->Poll(); }, absl::Seconds(30)));
  EXPECT_EQ(client_events_.close_status.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(client_events_.close_status.message(), HasSubstr(impostor));
  EXPECT_THAT(client_events_.close_status.message(), HasSubstr(kServerId));
  EXPECT_EQ(stream->reset, kConnectError);
  EXPECT_EQ((*client)->stats().identity_mismatch, 1u);
  EXPECT_THAT(child->JsonLine(), HasSubstr("tls_error"));
}

class OpensslTest : public InteropTest {
 protected:
  std::unique_ptr<Child> SClient(const std::vector<std::string>& extra,
                                 const std::string& version = "-tls1_3") {
    std::vector<std::string> argv = {"/usr/bin/openssl",
                                     "s_client",
                                     "-connect",
                                     absl::StrCat("127.0.0.1:", server_->port()),
                                     version,
                                     "-alpn",
                                     "h2",
                                     "-cert",
                                     absl::StrCat(dir_, "/cert.pem"),
                                     "-key",
                                     absl::StrCat(dir_, "/key.pem"),
                                     "-CAfile",
                                     absl::StrCat(dir_, "/root.pem")};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return Child::Start(argv);
  }
};

TEST_F(OpensslTest, SClientSeesTls13AlpnH2AndSpiffeUri) {
  if (access("/usr/bin/openssl", X_OK) != 0) GTEST_FAIL() << "openssl not installed";
  StartServer();
  ASSERT_TRUE(WritePems(client_svid_, pki_->root_pem(), dir_).ok());
  auto child = SClient({"-showcerts"});
  ASSERT_NE(child, nullptr);
  ASSERT_TRUE(Run([&] { return child->Poll(); }, absl::Seconds(20)));
  EXPECT_THAT(child->output(), HasSubstr("TLSv1.3"));
  EXPECT_THAT(child->output(), HasSubstr("ALPN protocol: h2"));
  EXPECT_THAT(child->output(), HasSubstr("Verify return code: 0 (ok)"));
  ASSERT_TRUE(Run([&] { return server_->established == 1; }));

  // The server's SPIFFE URI, the way Istio's verification steps show it.
  std::string pem = child->output().substr(child->output().find("-----BEGIN CERTIFICATE-----"));
  pem = pem.substr(0, pem.find("-----END CERTIFICATE-----") + 25);
  std::string leaf = absl::StrCat(dir_, "/server.pem");
  {
    std::ofstream out(leaf);
    out << pem << "\n";
  }
  auto x509 = Child::Start({"/usr/bin/openssl", "x509", "-in", leaf, "-noout", "-text"});
  ASSERT_NE(x509, nullptr);
  ASSERT_TRUE(Run([&] { return x509->Poll(); }, absl::Seconds(20)));
  unlink(leaf.c_str());
  EXPECT_THAT(x509->output(), HasSubstr(absl::StrCat("URI:", kServerId))) << x509->output();
}

TEST_F(OpensslTest, ChaChaOnlyClientIsRefused) {
  if (access("/usr/bin/openssl", X_OK) != 0) GTEST_FAIL() << "openssl not installed";
  StartServer();
  ASSERT_TRUE(WritePems(client_svid_, pki_->root_pem(), dir_).ok());
  auto child = SClient({"-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"});
  ASSERT_NE(child, nullptr);
  ASSERT_TRUE(Run([&] { return child->Poll() && server_->closed.size() == 1; }, absl::Seconds(20)))
      << child->output();
  EXPECT_NE(child->exit_code(), 0) << child->output();
  EXPECT_EQ(server_->stats.bad_cipher, 1u);
  EXPECT_EQ(server_->established, 0);
  EXPECT_THAT(server_->closed[0].message(), HasSubstr("AES_128_GCM"));
}

// A TLS 1.2 client offers no TLS 1.3 suites either; it used to be told about the suites. What
// it lacks is TLS 1.3.
TEST_F(OpensslTest, Tls12ClientIsToldTls13IsRequired) {
  if (access("/usr/bin/openssl", X_OK) != 0) GTEST_FAIL() << "openssl not installed";
  StartServer();
  ASSERT_TRUE(WritePems(client_svid_, pki_->root_pem(), dir_).ok());
  auto child = SClient({}, "-tls1_2");
  ASSERT_NE(child, nullptr);
  ASSERT_TRUE(Run([&] { return child->Poll() && server_->closed.size() == 1; }, absl::Seconds(20)))
      << child->output();
  EXPECT_NE(child->exit_code(), 0) << child->output();
  EXPECT_THAT(child->output(), HasSubstr("alert protocol version")) << child->output();
  EXPECT_EQ(server_->established, 0);
  EXPECT_EQ(server_->stats.tls_failures, 1u);
  EXPECT_EQ(server_->stats.bad_cipher, 0u);
  EXPECT_THAT(server_->closed[0].message(),
              HasSubstr("TLS 1.3 is required; the client offered TLS 1.2 at most"));
  EXPECT_THAT(server_->closed[0].message(), Not(HasSubstr("GCM")));
}

}  // namespace
}  // namespace ambit::hbone::testing
