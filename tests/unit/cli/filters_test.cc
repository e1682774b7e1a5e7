#include "agent/cli/filters.h"

#include <sstream>
#include <string>
#include <vector>

#include "agent/cli/command.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::cli {
namespace {

using ::testing::HasSubstr;

// Runs a leaf with the list commands' flags and hands back the filter it built.
absl::StatusOr<RowFilter> FilterOf(const std::vector<std::string>& args) {
  std::optional<absl::StatusOr<RowFilter>> got;
  Command root{.name = "t",
               .subcommands = {Command{.name = "ls",
                                       .flags = NamespaceAndAddressFlags(),
                                       .run = [&got](Context& ctx) -> absl::Status {
                                         got = RowFilter::FromFlags(ctx);
                                         return absl::OkStatus();
                                       }}}};
  std::vector<std::string> argv = {"ls"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::ostringstream out, err;
  const int code = RunCli(root, argv, out, err);
  if (code != kExitOk) return absl::InvalidArgumentError(err.str());
  return *got;
}

TEST(RowFilterTest, NoFlagsKeepsEverything) {
  auto f = FilterOf({});
  ASSERT_TRUE(f.ok());
  EXPECT_FALSE(f->active());
  EXPECT_TRUE(f->Namespace("anything"));
  EXPECT_TRUE(f->QualifiedName("a/b"));
  EXPECT_TRUE(f->Address({}));
}

TEST(RowFilterTest, NamespaceShortAndLong) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"-n", "backend"}, {"--namespace", "backend"}, {"-nbackend"}, {"--namespace=backend"}}) {
    auto f = FilterOf(args);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_TRUE(f->Namespace("backend"));
    EXPECT_FALSE(f->Namespace("default"));
    EXPECT_TRUE(f->QualifiedName("backend/api"));
    EXPECT_FALSE(f->QualifiedName("backend2/api"));
    EXPECT_FALSE(f->QualifiedName("backend"));  // no name part: not of the namespace
    EXPECT_EQ(f->Describe(), "in namespace backend");
  }
}

TEST(RowFilterTest, AllNamespacesIsTheDefaultAndExcludesNamespace) {
  auto all = FilterOf({"-A"});
  ASSERT_TRUE(all.ok());
  EXPECT_FALSE(all->active());
  auto both = FilterOf({"-A", "-n", "x"});
  ASSERT_FALSE(both.ok());
  EXPECT_THAT(both.status().message(), HasSubstr("exclude each other"));
  EXPECT_FALSE(FilterOf({"-n", ""}).ok());
}

TEST(RowFilterTest, AddressMatchesAnySpellingAndPorts) {
  auto f = FilterOf({"--address", "2001:2::7"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE(f->Address({"198.18.0.1", "2001:0002:0000::0007"}));
  EXPECT_TRUE(f->Address({"[2001:2::7]:8080"}));
  EXPECT_FALSE(f->Address({"2001:2::8", "[2001:2::8]:8080"}));
  EXPECT_FALSE(f->Address({}));
  auto v4 = FilterOf({"--address=198.18.1.7"});
  ASSERT_TRUE(v4.ok());
  EXPECT_TRUE(v4->Address({"198.18.1.7:80"}));
  EXPECT_FALSE(v4->Address({"198.18.1.70:80", "garbage"}));
  auto bad = FilterOf({"--address", "web"});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("--address 'web' is not an IP address"));
}

}  // namespace
}  // namespace ambit::cli
