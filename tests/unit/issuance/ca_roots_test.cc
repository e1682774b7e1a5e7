// The external CA's roots from a file: read at start (no roots, no start), re-read when the file
// is replaced (a mounted ConfigMap's symlink swap, an operator's rename), the last good roots kept
// when the file turns bad.
#include "agent/issuance/ca_roots.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "agent/ca/certificate_authority.h"
#include "agent/issuance/signer.h"

namespace ambit::issuance {
namespace {

class RootCertFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ca_roots_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    for (int i = 0; i < 2; ++i) {
      ca::CaOptions o;
      o.state_dir = absl::StrCat(dir_, "/ca", i);
      auto ca = ca::CertificateAuthority::Create(o);
      ASSERT_TRUE(ca.ok()) << ca.status();
      roots_[i] = (*ca)->TrustBundle()[0];
    }
    path_ = dir_ + "/root-cert.pem";
  }
  void TearDown() override { std::system(absl::StrCat("rm -rf '", dir_, "'").c_str()); }
  // As the kubelet updates a mounted ConfigMap: a new directory, the symlink renamed over.
  void Publish(const std::string& text) {
    const std::string data = absl::StrCat(dir_, "/data-", ++version_);
    ASSERT_EQ(mkdir(data.c_str(), 0755), 0);
    std::ofstream(data + "/root-cert.pem") << text;
    const std::string link = dir_ + "/link.tmp";
    ASSERT_EQ(symlink((data + "/root-cert.pem").c_str(), link.c_str()), 0);
    ASSERT_EQ(rename(link.c_str(), path_.c_str()), 0);
  }

  std::string dir_, path_;
  std::string roots_[2];
  int version_ = 0;
};

TEST_F(RootCertFileTest, NoRootsNoStart) {
  auto missing = MakeRootCertFile(path_);
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find(path_), std::string::npos) << missing.status();
  Publish("not a certificate\n");
  auto garbage = MakeRootCertFile(path_);
  EXPECT_EQ(garbage.status().code(), absl::StatusCode::kInvalidArgument) << garbage.status();
  EXPECT_NE(garbage.status().message().find("no PEM certificate"), std::string::npos);
  // A certificate block whose body is not DER: named by its position.
  Publish(roots_[0] + "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
  auto truncated = MakeRootCertFile(path_);
  EXPECT_EQ(truncated.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(truncated.status().message().find("certificate 2 of 2 does not parse"),
            std::string::npos)
      << truncated.status();
}

TEST_F(RootCertFileTest, ReplacedFileIsReadAgainAndBadContentKeepsTheLastGood) {
  Publish(roots_[0]);
  auto source = MakeRootCertFile(path_);
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->Roots().value_or(""), roots_[0]);
  // A rotation: both roots, then only the new one.
  Publish(roots_[0] + roots_[1]);
  EXPECT_EQ((*source)->Roots().value_or(""), roots_[0] + roots_[1]);
  Publish(roots_[1]);
  EXPECT_EQ((*source)->Roots().value_or(""), roots_[1]);
  // Bad content and a vanished file: the node keeps trusting what it trusted.
  Publish("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
  EXPECT_EQ((*source)->Roots().value_or(""), roots_[1]);
  ASSERT_EQ(unlink(path_.c_str()), 0);
  EXPECT_EQ((*source)->Roots().value_or(""), roots_[1]);
  Publish(roots_[0]);
  EXPECT_EQ((*source)->Roots().value_or(""), roots_[0]);
  EXPECT_EQ((*source)->Description(), "file " + path_);
}

TEST(RootCertHolderTest, UnavailableUntilTheFirstGoodRoots) {
  RootCertHolder holder("ConfigMap a/b");
  EXPECT_EQ(holder.Current().status().code(), absl::StatusCode::kUnavailable);
  holder.Failed(absl::NotFoundError("ConfigMap a/b not found"));
  auto none = holder.Current();
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(none.status().message().find("ConfigMap a/b not found"), std::string::npos)
      << none.status();
  EXPECT_NE(none.status().message().find("nothing is sent to the CA"), std::string::npos);
  EXPECT_FALSE(holder.Offer("", "ConfigMap a/b key root-cert.pem").ok());
  EXPECT_EQ(holder.Current().status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace ambit::issuance
