#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "abi/redirect.h"
#include "absl/strings/str_cat.h"
#include "agent/bpf/drops.h"
#include "agent/bpf/redirector.h"

namespace ambit::bpf {
namespace {

namespace fs = std::filesystem;

class PinsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           absl::StrCat("pins_test_", ::testing::UnitTest::GetInstance()->random_seed(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void Touch(const fs::path& p) {
    fs::create_directories(p.parent_path());
    std::ofstream(p).put('x');
  }
  fs::path dir_;
};

TEST_F(PinsTest, ThisBuildPinsUnderItsVersion) {
  EXPECT_EQ(VersionedPinRoot("/sys/fs/bpf/ambit/x"),
            absl::StrCat("/sys/fs/bpf/ambit/x/v", AMBIT_ABI_VERSION));
}

TEST_F(PinsTest, NothingToMigrateFromOwnVersionOrAnEmptyDirectory) {
  EXPECT_TRUE(FindPreviousAbis(dir_.string()).empty());
  EXPECT_TRUE(FindPreviousAbis((dir_ / "missing").string()).empty());
  Touch(dir_ / absl::StrCat("v", AMBIT_ABI_VERSION) / "links" / "connect4");
  EXPECT_TRUE(FindPreviousAbis(dir_.string()).empty());
}

TEST_F(PinsTest, FindsUnversionedAndOtherVersionsNewestFirst) {
  Touch(dir_ / absl::StrCat("v", AMBIT_ABI_VERSION) / "ambit_pods");
  Touch(dir_ / "ambit_pods");  // version 1: right in the instance directory
  Touch(dir_ / "links" / "connect4");
  Touch(dir_ / absl::StrCat("v", AMBIT_ABI_VERSION + 7) / "ambit_pods");
  auto found = FindPreviousAbis(dir_.string());
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0].version, AMBIT_ABI_VERSION + 7u);
  EXPECT_EQ(found[0].root, (dir_ / absl::StrCat("v", AMBIT_ABI_VERSION + 7)).string());
  EXPECT_EQ(found[1].version, 1u);
  EXPECT_EQ(found[1].root, dir_.string());
}

TEST_F(PinsTest, HasPinnedLinksSeesEveryVersion) {
  EXPECT_FALSE(Redirector::HasPinnedLinks(dir_.string()));
  Touch(dir_ / "links" / "connect4");
  EXPECT_TRUE(Redirector::HasPinnedLinks(dir_.string()));
  fs::remove_all(dir_ / "links");
  Touch(dir_ / absl::StrCat("v", AMBIT_ABI_VERSION) / "links" / "connect4");
  EXPECT_TRUE(Redirector::HasPinnedLinks(dir_.string()));
}

TEST(DropReasonsTest, OneNamedAndExplainedEntryPerReason) {
  const auto& reasons = DropReasons();
  ASSERT_EQ(reasons.size(), static_cast<size_t>(AMBIT_DROP_REASONS));
  std::set<std::string> names;
  for (const auto& r : reasons) {
    ASSERT_NE(r.name, nullptr);
    ASSERT_NE(r.program, nullptr);
    ASSERT_NE(r.meaning, nullptr);
    EXPECT_TRUE(names.insert(r.name).second) << r.name;
    EXPECT_GT(std::string(r.meaning).size(), 20u) << r.name;
  }
  EXPECT_EQ(std::string(reasons[AMBIT_DROP_NO_LISTENER].name), "no_listener");
  EXPECT_EQ(std::string(reasons[AMBIT_DROP_CONNECT_NO_STORAGE].name), "connect_no_storage");
  EXPECT_EQ(std::string(reasons[AMBIT_DROP_PROBE_UPDATE].name), "probe_update_failed");
}

}  // namespace
}  // namespace ambit::bpf
