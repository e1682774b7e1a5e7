// The external-CA client against the real CA API server on loopback: the bearer token it sends
// comes from its token file at every call (a kubelet-rotated projected token), and the server
// answers by what its CallerAuthenticator decides.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "agent/ca/certificate_authority.h"
#include "agent/issuance/ca_server.h"
#include "agent/issuance/caller_auth.h"
#include "agent/issuance/signer.h"

namespace ambit::issuance {
namespace {

constexpr char kIdentity[] = "spiffe://cluster.local/ns/default/sa/web";

// Accepts the tokens it is told, each for its node; remembers which tokens it saw.
class RecordingAuthenticator final : public CallerAuthenticator {
 public:
  absl::StatusOr<std::string> NodeOf(const std::string& token) override {
    absl::MutexLock lock(&mu_);
    seen_.push_back(token);
    if (unavailable_) return absl::UnavailableError("token review failed: API server down");
    auto it = nodes_.find(token);
    if (it == nodes_.end()) return absl::UnauthenticatedError("unknown bearer token");
    return it->second;
  }
  std::string Description() const override { return "test tokens"; }
  void Allow(const std::string& token, const std::string& node) {
    absl::MutexLock lock(&mu_);
    nodes_[token] = node;
  }
  void SetUnavailable(bool v) {
    absl::MutexLock lock(&mu_);
    unavailable_ = v;
  }
  std::vector<std::string> seen() const {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, std::string> nodes_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> seen_ ABSL_GUARDED_BY(mu_);
  bool unavailable_ ABSL_GUARDED_BY(mu_) = false;
};

class RemoteSignerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/remote_signer_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ca::CaOptions o;
    o.state_dir = dir_ + "/state";
    auto ca = ca::CertificateAuthority::Create(o);
    ASSERT_TRUE(ca.ok()) << ca.status();
    ca_ = std::move(*ca);
    entitlements_ = std::make_shared<Entitlements>();
    entitlements_->Update({{"node1", {kIdentity}}});
    auth_ = std::make_shared<RecordingAuthenticator>();
    CaServerOptions server;
    server.listen = "127.0.0.1:0";
    server.authenticator = auth_;
    auto started = CaServer::Start(server, ca_, entitlements_);
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = std::move(*started);
    Write("roots.pem", ca_->TrustBundle()[0]);
    Write("token", "first-token\n");
    auto signer = MakeRemoteSigner({absl::StrCat("localhost:", server_->port()),
                                    dir_ + "/roots.pem", dir_ + "/token", absl::Seconds(5)});
    ASSERT_TRUE(signer.ok()) << signer.status();
    signer_ = std::move(*signer);
  }
  void TearDown() override {
    signer_.reset();
    server_.reset();
    std::system(absl::StrCat("rm -rf '", dir_, "'").c_str());
  }
  void Write(const std::string& name, const std::string& text) {
    // Replaced by rename, as the kubelet swaps a projected volume's files.
    std::ofstream(dir_ + "/" + name + ".tmp") << text;
    ASSERT_EQ(rename((dir_ + "/" + name + ".tmp").c_str(), (dir_ + "/" + name).c_str()), 0);
  }
  absl::StatusOr<std::vector<std::string>> Sign() {
    auto csr = ca::MakeCsrForTest({kIdentity});
    if (!csr.ok()) return csr.status();
    return signer_->Sign(csr->first, kIdentity, absl::Hours(1));
  }

  std::string dir_;
  std::shared_ptr<ca::CertificateAuthority> ca_;
  std::shared_ptr<Entitlements> entitlements_;
  std::shared_ptr<RecordingAuthenticator> auth_;
  std::unique_ptr<CaServer> server_;
  std::unique_ptr<Signer> signer_;
};

TEST_F(RemoteSignerTest, TokenFileIsReadForEveryCall) {
  auth_->Allow("first-token", "node1");
  auth_->Allow("second-token", "node1");
  auto chain = Sign();
  ASSERT_TRUE(chain.ok()) << chain.status();
  EXPECT_EQ(chain->size(), 2u);  // leaf and root
  Write("token", "second-token");
  ASSERT_TRUE(Sign().ok());
  EXPECT_EQ(auth_->seen(), (std::vector<std::string>{"first-token", "second-token"}));
  EXPECT_EQ(server_->Counts()["issued"], 2u);
}

TEST_F(RemoteSignerTest, RefusedAndUncheckableTokensAreTheCallersErrors) {
  auto refused = Sign();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated) << refused.status();
  auth_->SetUnavailable(true);
  auto down = Sign();
  // UNAVAILABLE: the data plane retries, where UNAUTHENTICATED would be final for this CSR.
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();
  EXPECT_NE(down.status().message().find("API server down"), std::string::npos) << down.status();
  EXPECT_EQ(server_->Counts()["unauthenticated"], 2u);
  EXPECT_EQ(server_->Counts()["issued"], 0u);
}

TEST_F(RemoteSignerTest, AMissingTokenFileFailsTheCallNotTheProcess) {
  auth_->Allow("first-token", "node1");
  ASSERT_EQ(unlink((dir_ + "/token").c_str()), 0);
  auto missing = Sign();
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kUnavailable) << missing.status();
  EXPECT_NE(missing.status().message().find("token"), std::string::npos) << missing.status();
  EXPECT_TRUE(auth_->seen().empty());  // nothing was sent without a token
  Write("token", "first-token");
  EXPECT_TRUE(Sign().ok());
}

}  // namespace
}  // namespace ambit::issuance
