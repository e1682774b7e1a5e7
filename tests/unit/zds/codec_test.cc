#include "agent/zds/codec.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "istio/zds/zds.pb.h"

namespace ambit::zds {
namespace {

namespace pb = ::istio::workload::zds;

std::string AddBytes(std::string uid, std::string name = "web-0", std::string ns = "prod",
                     std::string sa = "web") {
  pb::WorkloadRequest r;
  r.mutable_add()->set_uid(uid);
  r.mutable_add()->mutable_workload_info()->set_name(name);
  r.mutable_add()->mutable_workload_info()->set_namespace_(ns);
  r.mutable_add()->mutable_workload_info()->set_service_account(sa);
  return r.SerializeAsString();
}

std::string DelBytes(std::string uid) {
  pb::WorkloadRequest r;
  r.mutable_del()->set_uid(uid);
  return r.SerializeAsString();
}

UniqueFd OwnNetns() { return UniqueFd(open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)); }

std::vector<UniqueFd> Fds(UniqueFd a) {
  std::vector<UniqueFd> v;
  v.push_back(std::move(a));
  return v;
}

// Counts this process's open descriptors, to show the decoder closes what it refuses.
int OpenFds() {
  int n = 0;
  for (int fd = 0; fd < 4096; ++fd) n += fcntl(fd, F_GETFD) >= 0;
  return n;
}

TEST(ZdsCodecTest, DecodesAddWithItsNetns) {
  auto r = DecodeRequest(AddBytes("uid-1"), Fds(OwnNetns()), 0, KernelNetnsCheck);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->type, Request::Type::kAdd);
  EXPECT_EQ(r->uid, "uid-1");
  EXPECT_EQ(r->info.name, "web-0");
  EXPECT_EQ(r->info.namespace_name, "prod");
  EXPECT_EQ(r->info.service_account, "web");
  EXPECT_TRUE(r->netns.valid());
}

TEST(ZdsCodecTest, DecodesKeepDelSnapshot) {
  pb::WorkloadRequest keep;
  keep.mutable_keep()->set_uid("k");
  auto k = DecodeRequest(keep.SerializeAsString(), {}, 0, KernelNetnsCheck);
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->type, Request::Type::kKeep);
  EXPECT_EQ(k->uid, "k");
  auto d = DecodeRequest(DelBytes("d"), {}, 0, KernelNetnsCheck);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->type, Request::Type::kDel);
  pb::WorkloadRequest snap;
  snap.mutable_snapshot_sent();
  auto s = DecodeRequest(snap.SerializeAsString(), {}, 0, KernelNetnsCheck);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->type, Request::Type::kSnapshotSent);
}

struct Row {
  const char* name;
  std::string bytes;
  int fds;  // own netns descriptors attached
  int flags;
  const char* error;  // substring of the error
};

TEST(ZdsCodecTest, RefusesWithANamedErrorAndClosesDescriptors) {
  const std::string long_uid(kMaxUidBytes + 1, 'u');
  const std::string long_ns(kMaxNamespaceBytes + 1, 'n');
  pb::WorkloadRequest empty;
  pb::WorkloadRequest add_no_info;
  add_no_info.mutable_add()->set_uid("u");
  const std::vector<Row> rows = {
      {"truncated", AddBytes("u"), 1, MSG_TRUNC, "longer than 1024 bytes"},
      {"ctruncated", AddBytes("u"), 1, MSG_CTRUNC, "more descriptors than fit"},
      {"no payload", empty.SerializeAsString(), 0, 0, "no payload"},
      {"garbage", std::string("\xff\xff\xff\xff\x0f", 5), 0, 0, "undecodable"},
      {"add without fd", AddBytes("u"), 0, 0, "add carries 0 descriptors"},
      {"add with two fds", AddBytes("u"), 2, 0, "add carries 2 descriptors"},
      {"del with fd", DelBytes("u"), 1, 0, "del carries 1 descriptors; only add"},
      {"empty uid", AddBytes(""), 1, 0, "add: uid is empty"},
      {"long uid", AddBytes(long_uid), 1, 0, "add: uid is 129 bytes"},
      {"empty name", AddBytes("u", ""), 1, 0, "workload_info.name is empty"},
      {"empty namespace", AddBytes("u", "a", ""), 1, 0, "workload_info.namespace is empty"},
      {"long namespace", AddBytes("u", "a", long_ns), 1, 0, "workload_info.namespace is 64"},
      {"slash in name", AddBytes("u", "a/b"), 1, 0, "not allowed"},
      {"no workload_info", add_no_info.SerializeAsString(), 1, 0, "workload_info is missing"},
      {"del empty uid", DelBytes(""), 0, 0, "del: uid is empty"},
  };
  const int before = OpenFds();
  for (const Row& row : rows) {
    std::vector<UniqueFd> fds;
    for (int i = 0; i < row.fds; ++i) fds.push_back(OwnNetns());
    auto r = DecodeRequest(row.bytes, std::move(fds), row.flags, KernelNetnsCheck);
    ASSERT_FALSE(r.ok()) << row.name;
    EXPECT_NE(r.status().message().find(row.error), std::string::npos)
        << row.name << ": " << r.status().message();
  }
  EXPECT_EQ(OpenFds(), before);
}

TEST(ZdsCodecTest, RefusesADescriptorThatIsNoNetworkNamespace) {
  char path[] = "/tmp/zds_codec_XXXXXX";
  UniqueFd file(mkstemp(path));
  unlink(path);
  auto r = DecodeRequest(AddBytes("u"), Fds(std::move(file)), 0, KernelNetnsCheck);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not a network namespace: the descriptor is not a namespace"),
            std::string::npos)
      << r.status();

  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  UniqueFd other(sv[1]);
  r = DecodeRequest(AddBytes("u"), Fds(UniqueFd(sv[0])), 0, KernelNetnsCheck);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not a network namespace"), std::string::npos);

  r = DecodeRequest(AddBytes("u"), Fds(UniqueFd(open("/proc/self/ns/uts", O_RDONLY))), 0,
                    KernelNetnsCheck);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("namespace of another kind"), std::string::npos)
      << r.status();
}

TEST(ZdsCodecTest, EncodesHelloAndAcks) {
  pb::ZdsHello hello;
  ASSERT_TRUE(hello.ParseFromString(EncodeHello()));
  EXPECT_EQ(hello.version(), pb::V1);
  pb::WorkloadResponse ok;
  ASSERT_TRUE(ok.ParseFromString(EncodeAck("")));
  ASSERT_TRUE(ok.has_ack());
  EXPECT_EQ(ok.ack().error(), "");
  const std::string huge(5000, 'e');
  const std::string bytes = EncodeAck(huge);
  EXPECT_LE(bytes.size(), 1024u);  // what istio-cni reads
  pb::WorkloadResponse cut;
  ASSERT_TRUE(cut.ParseFromString(bytes));
  EXPECT_EQ(cut.ack().error().size(), kMaxAckErrorBytes);
}

}  // namespace
}  // namespace ambit::zds
