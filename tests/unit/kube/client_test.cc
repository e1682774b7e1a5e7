#include "agent/kube/client.h"

#include <sys/stat.h>
#include <utime.h>

#include <atomic>
#include <fstream>
#include <thread>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/kube/fake_apiserver_process.h"

namespace ambit::kube {
namespace {

using testing::FakeApiServerProcess;
using ::testing::HasSubstr;

class KubeClientTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(server_.ok()) << "fake API server did not start"; }
  FakeApiServerProcess server_;
};

TEST(KubeConfigTest, OnlyHttpsUrls) {
  EXPECT_TRUE(KubeConfig::ForServer("https://198.18.0.1:6443/", "t", "c").ok());
  EXPECT_EQ(KubeConfig::ForServer("https://198.18.0.1:6443/", "t", "c")->server,
            "https://198.18.0.1:6443");
  EXPECT_FALSE(KubeConfig::ForServer("http://198.18.0.1:6443", "t", "c").ok());
  EXPECT_FALSE(KubeConfig::ForServer("https://", "t", "c").ok());
  EXPECT_FALSE(KubeConfig::ForServer("https://a/b", "t", "c").ok());
  EXPECT_FALSE(KubeConfig::ForServer("https://user@a", "t", "c").ok());
}

TEST(KubeConfigTest, InClusterFromEnvironment) {
  char tmpl[] = "/tmp/ambit-sa-XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::ofstream(dir + "/namespace") << "ambit-system\n";
  ::setenv("KUBERNETES_SERVICE_HOST", "fd00::1", 1);
  ::setenv("KUBERNETES_SERVICE_PORT", "443", 1);
  auto config = KubeConfig::InCluster(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->server, "https://[fd00::1]:443");
  EXPECT_EQ(config->token_file, dir + "/token");
  EXPECT_EQ(config->ca_file, dir + "/ca.crt");
  EXPECT_EQ(config->namespace_name, "ambit-system");
  ::unsetenv("KUBERNETES_SERVICE_HOST");
  EXPECT_FALSE(KubeConfig::InCluster(dir).ok());
  std::filesystem::remove_all(dir);
}

TEST_F(KubeClientTest, GetsWithTheTokenAndVerifiesTheServer) {
  auto client = server_.Client();
  ASSERT_NE(client, nullptr);
  auto r = client->Request("GET", "/api/v1/namespaces");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_THAT(r->body, HasSubstr("kube-system"));
  EXPECT_THAT(std::string(r->Header("content-type")), HasSubstr("application/json"));
}

TEST_F(KubeClientTest, RefusesAServerItsCaDoesNotVouchFor) {
  auto config = KubeConfig::ForServer(server_.url(), server_.token_file(),
                                      "/etc/ssl/certs/ca-certificates.crt");
  auto client = KubeClient::Create(*config);
  ASSERT_TRUE(client.ok()) << client.status();
  auto r = (*client)->Request("GET", "/api/v1/namespaces");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(KubeClientTest, ReReadsARotatedToken) {
  auto client = server_.Client();
  ASSERT_TRUE(client->Request("GET", "/api/v1/namespaces").ok());
  server_.Control("rotate_token", "{}");
  auto r = client->Request("GET", "/api/v1/namespaces");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
}

TEST_F(KubeClientTest, RetriesOnceAfter401WhenTheStatDidNotChange) {
  auto client = server_.Client();
  struct stat before {};
  ASSERT_EQ(::stat(server_.token_file().c_str(), &before), 0);
  ASSERT_TRUE(client->Request("GET", "/api/v1/namespaces").ok());
  server_.Control("rotate_token", "{}");
  // Same size (tokens are of one length) and the old mtime: only the 401 tells.
  struct utimbuf times {
    before.st_atime, before.st_mtime
  };
  ASSERT_EQ(::utime(server_.token_file().c_str(), &times), 0);
  auto r = client->Request("GET", "/api/v1/namespaces");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
}

TEST_F(KubeClientTest, MissingTokenFailsAtCreate) {
  auto config = KubeConfig::ForServer(server_.url(), server_.dir() + "/nope", server_.ca_file());
  auto client = KubeClient::Create(*config);
  ASSERT_FALSE(client.ok());
  EXPECT_THAT(client.status().message(), HasSubstr("nope"));
}

TEST_F(KubeClientTest, DeadlineBoundsASlowServer) {
  auto client = server_.Client();
  server_.Control("set_delay", R"({"seconds": 3})");
  absl::Time start = absl::Now();
  auto r = client->Request("GET", "/api/v1/namespaces", {}, absl::Milliseconds(500));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  server_.Control("set_delay", R"({"seconds": 0})");
}

TEST_F(KubeClientTest, WatchStreamsLinesAndIsCancelledFromAnotherThread) {
  auto client = server_.Client();
  Cancellation cancel;
  std::atomic<int> lines{0};
  std::thread canceller([&] {
    for (int i = 0; i < 100 && lines.load() < 4; ++i) absl::SleepFor(absl::Milliseconds(50));
    cancel.Cancel();
  });
  absl::Time start = absl::Now();
  auto r = client->Watch(
      "/api/v1/namespaces?watch=true",
      [&](absl::string_view line) {
        EXPECT_THAT(std::string(line), HasSubstr("\"ADDED\""));
        ++lines;
        return absl::OkStatus();
      },
      absl::Seconds(30), &cancel);
  canceller.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(8));
  EXPECT_GE(lines.load(), 4);  // the four namespaces the server starts with
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
}

TEST_F(KubeClientTest, WatchLineOverTheLimitEndsTheWatch) {
  KubeClient::Options options;
  options.max_line_bytes = 1000;
  auto client = server_.Client(options);
  server_.Control("apply", R"({"object": {"apiVersion": "v1", "kind": "Namespace",
      "metadata": {"name": "big", "labels": {"x": ")" +
                               std::string(2000, 'a').substr(0, 63) + R"("},
      "annotations": {"y": ")" +
                               std::string(3000, 'b') + R"("}}}})");
  auto r = client->Watch(
      "/api/v1/namespaces?watch=true", [](absl::string_view) { return absl::OkStatus(); },
      absl::Seconds(30));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(KubeClientTest, WatchErrorStatusComesBackWithItsBody) {
  auto client = server_.Client();
  server_.Control("fail_next", R"({"n": 1, "status": 429, "retry_after": 2})");
  int lines = 0;
  auto r = client->Watch(
      "/api/v1/namespaces?watch=true",
      [&](absl::string_view) {
        ++lines;
        return absl::OkStatus();
      },
      absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 429);
  EXPECT_EQ(r->Header("retry-after"), "2");
  EXPECT_THAT(r->body, HasSubstr("TooManyRequests"));
  EXPECT_EQ(lines, 0);
}

TEST_F(KubeClientTest, CallbackErrorEndsTheWatchWithThatError) {
  auto client = server_.Client();
  auto r = client->Watch(
      "/api/v1/namespaces?watch=true",
      [](absl::string_view) { return absl::DataLossError("stop here"); }, absl::Seconds(30));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace ambit::kube
