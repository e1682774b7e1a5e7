// What a CreateCertificate asks for, with and without ztunnel's ImpersonatedIdentity, and the
// cluster check istiod makes on the "clusterid" metadata: table tests over the pure decisions.
#include "agent/issuance/impersonation.h"

#include <google/protobuf/struct.pb.h>
#include <gtest/gtest.h>

namespace ambit::issuance {
namespace {

constexpr char kWeb[] = "spiffe://cluster.local/ns/default/sa/web";
constexpr char kApi[] = "spiffe://cluster.local/ns/backend/sa/api";

struct Row {
  const char* name;
  std::optional<std::string> impersonated;
  std::vector<std::string> csr_uris;
  absl::StatusCode code;
  std::string identity_or_message;  // OK: the identity; else a part of the message
};

TEST(RequestedIdentityTest, Table) {
  const std::vector<Row> rows = {
      {"csr alone", std::nullopt, {kWeb}, absl::StatusCode::kOk, kWeb},
      {"csr alone, a non-Istio SPIFFE ID is the CA's to judge",
       std::nullopt,
       {"spiffe://cluster.local/custom"},
       absl::StatusCode::kOk,
       "spiffe://cluster.local/custom"},
      {"csr without URI", std::nullopt, {}, absl::StatusCode::kInvalidArgument, "asks for 0"},
      {"csr with two URIs",
       std::nullopt,
       {kWeb, kApi},
       absl::StatusCode::kInvalidArgument,
       "asks for 2"},
      {"impersonated, csr agrees", kWeb, {kWeb}, absl::StatusCode::kOk, kWeb},
      {"impersonated, csr asks for another",
       kWeb,
       {kApi},
       absl::StatusCode::kInvalidArgument,
       "csr asks for spiffe://cluster.local/ns/backend/sa/api but ImpersonatedIdentity is "
       "spiffe://cluster.local/ns/default/sa/web"},
      {"impersonated, csr without URI", kWeb, {}, absl::StatusCode::kInvalidArgument, "asks for 0"},
      {"impersonated, csr with it and more",
       kWeb,
       {kWeb, kApi},
       absl::StatusCode::kInvalidArgument,
       "asks for 2"},
      {"impersonated, not a SPIFFE ID",
       "web",
       {"web"},
       absl::StatusCode::kInvalidArgument,
       "ImpersonatedIdentity 'web' is not a SPIFFE ID"},
      {"impersonated, upper-case trust domain",
       "spiffe://Cluster.local/ns/a/sa/b",
       {"spiffe://Cluster.local/ns/a/sa/b"},
       absl::StatusCode::kInvalidArgument,
       "is not a SPIFFE ID"},
      {"impersonated, not Istio's shape",
       "spiffe://cluster.local/ns/default",
       {"spiffe://cluster.local/ns/default"},
       absl::StatusCode::kInvalidArgument,
       "is not an Istio workload identity"},
      {"impersonated, extra segment",
       "spiffe://cluster.local/ns/default/sa/web/x",
       {"spiffe://cluster.local/ns/default/sa/web/x"},
       absl::StatusCode::kInvalidArgument,
       "is not an Istio workload identity"},
      {"impersonated, other keys",
       "spiffe://cluster.local/namespace/default/sa/web",
       {"spiffe://cluster.local/namespace/default/sa/web"},
       absl::StatusCode::kInvalidArgument,
       "is not an Istio workload identity"},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    auto got = RequestedIdentity(row.impersonated, row.csr_uris);
    ASSERT_EQ(got.status().code(), row.code) << got.status();
    if (got.ok()) {
      EXPECT_EQ(*got, row.identity_or_message);
    } else {
      EXPECT_NE(got.status().message().find(row.identity_or_message), std::string::npos)
          << got.status();
    }
  }
}

TEST(ImpersonatedIdentityTest, ReadsTheStringValueOnly) {
  google::protobuf::Struct metadata;
  auto none = ImpersonatedIdentity(metadata);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());

  (*metadata.mutable_fields())["WorkloadName"].set_string_value("web-1");
  none = ImpersonatedIdentity(metadata);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());

  // istiod reads an empty string as no impersonation.
  (*metadata.mutable_fields())[kImpersonatedIdentityKey].set_string_value("");
  none = ImpersonatedIdentity(metadata);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());

  (*metadata.mutable_fields())[kImpersonatedIdentityKey].set_string_value(kWeb);
  auto web = ImpersonatedIdentity(metadata);
  ASSERT_TRUE(web.ok());
  EXPECT_EQ(web->value_or(""), kWeb);

  (*metadata.mutable_fields())[kImpersonatedIdentityKey].set_number_value(7);
  auto number = ImpersonatedIdentity(metadata);
  EXPECT_EQ(number.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(number.status().message().find("must be a string"), std::string::npos);

  (*metadata.mutable_fields())[kImpersonatedIdentityKey].mutable_list_value()->add_values();
  EXPECT_EQ(ImpersonatedIdentity(metadata).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CheckClusterIdTest, OnlyAnotherClusterIsRefused) {
  EXPECT_TRUE(CheckClusterId("", "Kubernetes").ok());
  EXPECT_TRUE(CheckClusterId("Kubernetes", "Kubernetes").ok());
  absl::Status other = CheckClusterId("east", "Kubernetes");
  EXPECT_EQ(other.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(other.message().find("'east'"), std::string::npos) << other;
  EXPECT_NE(other.message().find("'Kubernetes'"), std::string::npos) << other;
  // Cluster names are compared exactly, as istiod's cluster.ID is.
  EXPECT_FALSE(CheckClusterId("kubernetes", "Kubernetes").ok());
}

}  // namespace
}  // namespace ambit::issuance
