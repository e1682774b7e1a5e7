#include "agent/enroll/netns_finder.h"

#include <fcntl.h>
#include <gtest/gtest.h>

#include <map>

#include "absl/strings/match.h"

namespace ambit::enroll {
namespace {

IpAddress Ip(const char* text) { return *IpAddress::Parse(text); }

// A directory of namespaces in memory. Each open hands out a descriptor of /dev/null, which
// Identify maps back to the namespace by the order descriptors were handed out.
class FakeProbe final : public NetnsProbe {
 public:
  struct Ns {
    ino_t ino = 0;
    std::vector<IpAddress> addresses;
  };
  std::map<std::string, Ns> files;  // path -> namespace
  int lists = 0;
  int address_reads = 0;

  absl::StatusOr<std::vector<std::string>> List(const std::string& dir) override {
    ++lists;
    std::vector<std::string> out;
    for (const auto& [path, ns] : files) {
      if (absl::StartsWith(path, dir + "/")) out.push_back(path);
    }
    return out;
  }
  absl::StatusOr<UniqueFd> Open(const std::string& path) override {
    auto it = files.find(path);
    if (it == files.end()) return absl::NotFoundError("open " + path + ": No such file");
    UniqueFd fd(open("/dev/null", O_RDONLY | O_CLOEXEC));
    open_[fd.get()] = path;
    return fd;
  }
  absl::StatusOr<NetnsIdentity> Identify(int fd) override {
    NetnsIdentity id;
    id.dev = 4;
    id.ino = files.at(open_.at(fd)).ino;
    return id;
  }
  absl::StatusOr<std::vector<IpAddress>> Addresses(int fd) override {
    ++address_reads;
    return files.at(open_.at(fd)).addresses;
  }

 private:
  std::map<int, std::string> open_;  // descriptor -> path; descriptors are reused, paths replaced
};

class NetnsFinderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto probe = std::make_unique<FakeProbe>();
    probe_ = probe.get();
    probe_->files["/run/netns/a"] = {101, {Ip("198.18.0.1"), Ip("2001:2::1")}};
    probe_->files["/run/netns/b"] = {102, {Ip("198.18.0.2")}};
    // The node's namespace, as ambitd sees its own.
    probe_->files["/self/net"] = {1, {Ip("198.18.9.9")}};
    NetnsFinder::Options options;
    options.dir = "/run/netns";
    options.extra_paths = {"/self/net"};
    finder_ = std::make_unique<NetnsFinder>(std::move(options), std::move(probe), &guard_, &clock_);
  }

  NodeNetnsGuard guard_{{NetnsIdentity{4, 1, "ambitd's own network namespace"}}};
  FakeClock clock_;
  FakeProbe* probe_ = nullptr;
  std::unique_ptr<NetnsFinder> finder_;
};

TEST_F(NetnsFinderTest, FindsTheNamespaceHoldingThePodIp) {
  auto found = finder_->Find({Ip("198.18.0.2")});
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->path, "/run/netns/b");
  EXPECT_TRUE(found->fd.valid());
  // By its IPv6 address too, and by either of two addresses of one pod.
  EXPECT_EQ(finder_->Find({Ip("2001:2::1")})->path, "/run/netns/a");
  EXPECT_EQ(finder_->Find({Ip("198.18.0.1"), Ip("2001:2::1")})->path, "/run/netns/a");
}

TEST_F(NetnsFinderTest, CachedAnswersNeedNoRescan) {
  ASSERT_TRUE(finder_->Find({Ip("198.18.0.1")}).ok());
  ASSERT_TRUE(finder_->Find({Ip("198.18.0.2")}).ok());
  ASSERT_TRUE(finder_->Find({Ip("198.18.0.1")}).ok());
  EXPECT_EQ(finder_->scans(), 1);
  EXPECT_EQ(probe_->lists, 1);
}

TEST_F(NetnsFinderTest, AStaleCacheEntryIsRevalidatedAndRescanned) {
  ASSERT_TRUE(finder_->Find({Ip("198.18.0.1")}).ok());
  // The pod went away and a new namespace under a new name holds the address now.
  probe_->files.erase("/run/netns/a");
  probe_->files["/run/netns/c"] = {103, {Ip("198.18.0.1")}};
  auto found = finder_->Find({Ip("198.18.0.1")});
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->path, "/run/netns/c");
  EXPECT_EQ(finder_->scans(), 2);
}

TEST_F(NetnsFinderTest, ASameNameReplacedNamespaceIsNotTakenForTheOld) {
  ASSERT_TRUE(finder_->Find({Ip("198.18.0.2")}).ok());
  // Same path, another namespace (new inode) that does not hold the address.
  probe_->files["/run/netns/b"] = {104, {Ip("198.18.0.7")}};
  auto found = finder_->Find({Ip("198.18.0.2")});
  EXPECT_TRUE(absl::IsUnavailable(found.status())) << found.status();
}

TEST_F(NetnsFinderTest, MissRetriesWithBackOffAndNamesTheDirectory) {
  auto miss = finder_->Find({Ip("198.18.0.50")});
  ASSERT_TRUE(absl::IsUnavailable(miss.status())) << miss.status();
  EXPECT_TRUE(absl::StrContains(miss.status().message(), "/run/netns")) << miss.status();
  EXPECT_TRUE(absl::StrContains(miss.status().message(), "198.18.0.50")) << miss.status();
  EXPECT_EQ(finder_->scans(), 1);
  // Within the back-off, misses do not read the directory again.
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(finder_->Find({Ip("198.18.0.50")}).ok());
  EXPECT_EQ(finder_->scans(), 1);
  clock_.Advance(absl::Milliseconds(450));  // past the first interval (200 ms)
  EXPECT_FALSE(finder_->Find({Ip("198.18.0.50")}).ok());
  EXPECT_EQ(finder_->scans(), 2);
  // The interval doubles up to its bound: many misses over a minute cost few scans.
  for (int i = 0; i < 600; ++i) {
    clock_.Advance(absl::Milliseconds(100));
    EXPECT_FALSE(finder_->Find({Ip("198.18.0.50")}).ok());
  }
  EXPECT_LE(finder_->scans(), 2 + 5 + 60 / 5);
  // The namespace appears: found at the next scan, and the back-off starts over.
  probe_->files["/run/netns/late"] = {105, {Ip("198.18.0.50")}};
  clock_.Advance(absl::Seconds(5));
  auto found = finder_->Find({Ip("198.18.0.50")});
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->path, "/run/netns/late");
}

TEST_F(NetnsFinderTest, TwoNamespacesHoldingTheIpIsAnErrorNotAGuess) {
  probe_->files["/run/netns/twin"] = {106, {Ip("198.18.0.2")}};
  auto found = finder_->Find({Ip("198.18.0.2")});
  ASSERT_TRUE(absl::IsFailedPrecondition(found.status())) << found.status();
  EXPECT_TRUE(absl::StrContains(found.status().message(), "/run/netns/b"));
  EXPECT_TRUE(absl::StrContains(found.status().message(), "/run/netns/twin"));
  // Also when the pod's two addresses are in two namespaces.
  auto split = finder_->Find({Ip("198.18.0.1"), Ip("198.18.0.2")});
  EXPECT_TRUE(absl::IsFailedPrecondition(split.status())) << split.status();
}

TEST_F(NetnsFinderTest, OneNamespaceUnderTwoNamesIsOneHolder) {
  probe_->files["/run/netns/b-alias"] = {102, {Ip("198.18.0.2")}};
  auto found = finder_->Find({Ip("198.18.0.2")});
  ASSERT_TRUE(found.ok()) << found.status();
}

TEST_F(NetnsFinderTest, TheNodesOwnNamespaceIsRefused) {
  // A hostNetwork pod: its IP is the node's.
  auto own = finder_->Find({Ip("198.18.9.9")});
  ASSERT_TRUE(absl::IsPermissionDenied(own.status())) << own.status();
  EXPECT_TRUE(absl::StrContains(own.status().message(), "ambitd's own network namespace"));
  // Also when the node's namespace is bound into the directory under a pod-like name.
  probe_->files["/run/netns/looks-like-a-pod"] = {1, {Ip("198.18.9.9")}};
  clock_.Advance(absl::Seconds(10));
  auto bound = finder_->Find({Ip("198.18.9.9")});
  EXPECT_TRUE(absl::IsPermissionDenied(bound.status())) << bound.status();
}

TEST_F(NetnsFinderTest, APodWithoutIpIsAnError) {
  auto found = finder_->Find({});
  EXPECT_TRUE(absl::IsInvalidArgument(found.status())) << found.status();
  EXPECT_EQ(finder_->scans(), 0);
}

TEST(PickHolderTest, NoHolderIsNotFound) {
  EXPECT_TRUE(absl::IsNotFound(PickHolder({}, {Ip("198.18.0.1")}).status()));
}

}  // namespace
}  // namespace ambit::enroll
