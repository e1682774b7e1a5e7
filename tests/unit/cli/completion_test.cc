#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/cli/commands.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::cli {
namespace {

using ::testing::HasSubstr;

void Walk(const Command& cmd, const std::string& path,
          std::vector<std::pair<std::string, const Command*>>& out) {
  out.emplace_back(path, &cmd);
  for (const Command& sub : cmd.subcommands) Walk(sub, absl::StrCat(path, " ", sub.name), out);
}

// The scripts come from the tree main runs: every command path and every flag a command
// declares is in each of them, so a command added to the tree completes without a script edit.
TEST(CompletionTest, EveryCommandAndFlagOfTheTreeIsInEveryScript) {
  const Command root = RootCommand();
  std::vector<std::pair<std::string, const Command*>> nodes;
  Walk(root, kProgramName, nodes);
  ASSERT_GT(nodes.size(), 10u);
  for (const char* shell : {"bash", "zsh", "fish"}) {
    auto script = CompletionScript(root, shell);
    ASSERT_TRUE(script.ok()) << script.status();
    for (const auto& [path, cmd] : nodes) {
      if (std::string(shell) != "fish") {
        EXPECT_THAT(*script, HasSubstr(absl::StrCat("'", path, "'")));
      }
      for (const Command& sub : cmd->subcommands) {
        EXPECT_THAT(*script, HasSubstr(sub.name)) << shell << ": " << path;
      }
      for (const FlagSpec& f : cmd->flags) {
        EXPECT_THAT(*script, HasSubstr(std::string(shell) == "fish" ? absl::StrCat("-l ", f.name)
                                                                    : absl::StrCat("--", f.name)))
            << shell << ": " << path;
      }
    }
    for (const FlagSpec& f : GlobalFlags()) {
      EXPECT_THAT(*script, HasSubstr(std::string(shell) == "fish" ? absl::StrCat("-l ", f.name)
                                                                  : absl::StrCat("--", f.name)));
    }
  }
}

TEST(CompletionTest, UnknownShellIsRefused) {
  auto script = CompletionScript(RootCommand(), "tcsh");
  EXPECT_EQ(script.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(script.status().message(), HasSubstr("bash, zsh or fish"));
}

}  // namespace
}  // namespace ambit::cli
