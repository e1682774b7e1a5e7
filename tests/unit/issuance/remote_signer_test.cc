// The external-CA client against the real CA API server on loopback: the bearer token it sends
// comes from its token file at every call (a kubelet-rotated projected token), and the server
// answers by what its CallerAuthenticator decides.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "agent/ca/certificate_authority.h"
#include "agent/issuance/ca_server.h"
#include "agent/issuance/caller_auth.h"
#include "agent/issuance/impersonation.h"
#include "agent/issuance/signer.h"
#include "istio/v1/auth/ca.grpc.pb.h"

namespace ambit::issuance {
namespace {

constexpr char kIdentity[] = "spiffe://cluster.local/ns/default/sa/web";
// Of a pod on another node.
constexpr char kOtherNode[] = "spiffe://cluster.local/ns/backend/sa/api";

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
    entitlements_->Update({{"node1", {kIdentity}}, {"node2", {kOtherNode}}});
    auth_ = std::make_shared<RecordingAuthenticator>();
    CaServerOptions server;
    server.listen = "127.0.0.1:0";
    server.authenticator = auth_;
    auto started = CaServer::Start(server, ca_, entitlements_);
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = std::move(*started);
    Write("roots.pem", ca_->TrustBundle()[0]);
    Write("token", "first-token\n");
    auto signer = MakeRemoteSigner(Options());
    ASSERT_TRUE(signer.ok()) << signer.status();
    signer_ = std::move(*signer);
  }
  void TearDown() override {
    signer_.reset();
    server_.reset();
    std::system(absl::StrCat("rm -rf '", dir_, "'").c_str());
  }
  RemoteCaOptions Options() const {
    RemoteCaOptions options;
    options.address = absl::StrCat("localhost:", server_->port());
    options.root_cert_file = dir_ + "/roots.pem";
    options.token_file = dir_ + "/token";
    options.timeout = absl::Seconds(5);
    return options;
  }
  void Write(const std::string& name, const std::string& text) {
    // Replaced by rename, as the kubelet swaps a projected volume's files.
    std::ofstream(dir_ + "/" + name + ".tmp") << text;
    ASSERT_EQ(rename((dir_ + "/" + name + ".tmp").c_str(), (dir_ + "/" + name).c_str()), 0);
  }
  absl::StatusOr<std::vector<std::string>> Sign(const std::string& identity = kIdentity,
                                                Signer* signer = nullptr) {
    auto csr = ca::MakeCsrForTest({identity});
    if (!csr.ok()) return csr.status();
    return (signer != nullptr ? signer : signer_.get())->Sign(csr->first, identity, absl::Hours(1));
  }
  // A CreateCertificate as any gRPC client may send it: a CSR for `csr_uri`, `metadata` as is.
  grpc::Status Raw(const std::string& csr_uri, const google::protobuf::Struct& metadata,
                   const std::string& cluster = "") {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ca_->TrustBundle()[0];
    auto channel =
        grpc::CreateChannel(absl::StrCat("localhost:", server_->port()), grpc::SslCredentials(ssl));
    auto stub = istio::v1::auth::IstioCertificateService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    ctx.AddMetadata("authorization", "Bearer first-token");
    if (!cluster.empty()) ctx.AddMetadata(kClusterIdHeader, cluster);
    istio::v1::auth::IstioCertificateRequest req;
    auto csr = ca::MakeCsrForTest({csr_uri});
    if (!csr.ok()) return grpc::Status(grpc::StatusCode::INTERNAL, "csr");
    req.set_csr(csr->first);
    *req.mutable_metadata() = metadata;
    istio::v1::auth::IstioCertificateResponse resp;
    return stub->CreateCertificate(&ctx, req, &resp);
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

// The client names the identity in the request's metadata, as ztunnel does; the server holds it
// to the caller's node: node1 gets its own pod's identity and not node2's.
TEST_F(RemoteSignerTest, ImpersonatedIdentityIsSentAndHeldToTheCallersNode) {
  auth_->Allow("first-token", "node1");
  ASSERT_TRUE(Sign(kIdentity).ok());
  auto other = Sign(kOtherNode);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kPermissionDenied) << other.status();
  EXPECT_NE(other.status().message().find(kOtherNode), std::string::npos) << other.status();
  EXPECT_NE(other.status().message().find("node node1"), std::string::npos) << other.status();
  auto counts = server_->Counts();
  EXPECT_EQ(counts["issued"], 1u);
  // Only a request that carried the metadata is counted so.
  EXPECT_EQ(counts["impersonation_denied"], 1u);
  EXPECT_EQ(counts["denied"], 0u);
}

TEST_F(RemoteSignerTest, ServerJudgesTheMetadataOfAnyClient) {
  auth_->Allow("first-token", "node1");
  google::protobuf::Struct none;
  EXPECT_TRUE(Raw(kIdentity, none).ok());  // ambit's older clients: the CSR's SAN alone
  EXPECT_EQ(Raw(kOtherNode, none).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(server_->Counts()["denied"], 1u);

  google::protobuf::Struct md;
  (*md.mutable_fields())[kImpersonatedIdentityKey].set_string_value(kIdentity);
  EXPECT_TRUE(Raw(kIdentity, md, "Kubernetes").ok());
  grpc::Status differs = Raw(kOtherNode, md);
  EXPECT_EQ(differs.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(differs.error_message().find("they must be the same"), std::string::npos)
      << differs.error_message();
  (*md.mutable_fields())[kImpersonatedIdentityKey].set_string_value("spiffe://cluster.local/x");
  grpc::Status malformed = Raw("spiffe://cluster.local/x", md);
  EXPECT_EQ(malformed.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(malformed.error_message().find("not an Istio workload identity"), std::string::npos)
      << malformed.error_message();
  (*md.mutable_fields())[kImpersonatedIdentityKey].set_bool_value(true);
  EXPECT_EQ(Raw(kIdentity, md).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(server_->Counts()["impersonation_invalid"], 3u);

  grpc::Status other_cluster = Raw(kIdentity, none, "east");
  EXPECT_EQ(other_cluster.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(other_cluster.error_message().find("'east'"), std::string::npos);
  EXPECT_EQ(server_->Counts()["issued"], 2u);
}

TEST_F(RemoteSignerTest, ClusterIdIsSentAndAnotherClusterIsRefused) {
  auth_->Allow("first-token", "node1");
  RemoteCaOptions options = Options();
  options.cluster_id = "east";
  auto east = MakeRemoteSigner(options);
  ASSERT_TRUE(east.ok()) << east.status();
  auto refused = Sign(kIdentity, east->get());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated) << refused.status();
  EXPECT_NE(refused.status().message().find("cluster 'east'"), std::string::npos);
  EXPECT_TRUE(auth_->seen().empty());  // refused before the token was looked at
}

// The roots file changes under the signer: its trust bundle follows, and the TLS channel is
// rebuilt with the new roots (a CA serving under a root the node no longer trusts is refused).
TEST_F(RemoteSignerTest, RootsAreReadAgainWhenTheFileChanges) {
  auth_->Allow("first-token", "node1");
  ASSERT_TRUE(Sign().ok());
  ca::CaOptions o;
  o.state_dir = dir_ + "/other-ca";
  auto other = ca::CertificateAuthority::Create(o);
  ASSERT_TRUE(other.ok()) << other.status();
  const std::string own_root = ca_->TrustBundle()[0];
  const std::string other_root = (*other)->TrustBundle()[0];

  Write("roots.pem", other_root);
  EXPECT_EQ(signer_->TrustBundle(), std::vector<std::string>{other_root});
  // The handshake fails; the call waits for a channel that works until its deadline.
  auto untrusted = Sign();
  EXPECT_TRUE(untrusted.status().code() == absl::StatusCode::kUnavailable ||
              untrusted.status().code() == absl::StatusCode::kDeadlineExceeded)
      << untrusted.status();

  Write("roots.pem", other_root + own_root);  // a rotation: both roots
  EXPECT_EQ(signer_->TrustBundle(), (std::vector<std::string>{other_root, own_root}));
  EXPECT_TRUE(Sign().ok());

  Write("roots.pem", "garbage");  // a bad file changes nothing
  EXPECT_EQ(signer_->TrustBundle().size(), 2u);
  EXPECT_TRUE(Sign().ok());
}

}  // namespace
}  // namespace ambit::issuance
