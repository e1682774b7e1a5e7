// VerifyMtls requests are checked before any state is read (CheckVerifyMtlsRequest): a table of
// requests, and whether each is refused naming its field.
#include <string>

#include "agent/admin/admin_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::admin {
namespace {

using ::testing::HasSubstr;

struct Row {
  std::string pod;
  int64_t since;
  bool ok;
  std::string field;  // named in the error when !ok
};

TEST(VerifyMtlsRequestTest, Table) {
  const Row rows[] = {
      {"", 0, true, ""},
      {"default/web", 0, true, ""},
      {"kube-system/coredns-7db6d8ff4d-abcde", 300, true, ""},
      {"ns/a.b-c", 86400, true, ""},
      {"web", 0, false, "VerifyMtlsRequest.pod"},                          // no namespace
      {"/web", 0, false, "VerifyMtlsRequest.pod"},                         // empty namespace
      {"default/", 0, false, "VerifyMtlsRequest.pod"},                     // empty name
      {"Default/web", 0, false, "VerifyMtlsRequest.pod"},                  // upper case
      {"default/we b", 0, false, "VerifyMtlsRequest.pod"},                 // space
      {"default/a/b", 0, false, "VerifyMtlsRequest.pod"},                  // a second slash
      {std::string(64, 'a') + "/web", 0, false, "VerifyMtlsRequest.pod"},  // namespace > 63
      {"default/" + std::string(254, 'a'), 0, false, "VerifyMtlsRequest.pod"},
      {std::string("default/w\0b", 11), 0, false, "VerifyMtlsRequest.pod"},
      {"", -1, false, "VerifyMtlsRequest.since_seconds"},
      {"", 86401, false, "VerifyMtlsRequest.since_seconds"},
  };
  for (const Row& row : rows) {
    ambit::admin::v1::VerifyMtlsRequest req;
    req.set_pod(row.pod);
    req.set_since_seconds(row.since);
    absl::Status s = CheckVerifyMtlsRequest(req);
    EXPECT_EQ(s.ok(), row.ok) << row.pod << " " << row.since << ": " << s;
    if (!row.ok) {
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(s.message(), HasSubstr(row.field));
    }
  }
}

}  // namespace
}  // namespace ambit::admin
