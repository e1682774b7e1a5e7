#include "agent/common/daemon_flags.h"

#include <sstream>
#include <string>

#include "absl/flags/flag.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

ABSL_FLAG(std::string, config_dir, "/etc/x", "the directory read");
ABSL_FLAG(bool, take_over, false, "ask the running agent to step aside");

namespace ambit {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(SourceRelativePathTest, NoBuildPath) {
  EXPECT_EQ(SourceRelativePath("/work/wt/agent/main/ambitd.cc"), "agent/main/ambitd.cc");
  EXPECT_EQ(SourceRelativePath("agent/main/ambitd.cc"), "agent/main/ambitd.cc");
  EXPECT_EQ(SourceRelativePath("/build/abseil-cpp-x/absl/flags/parse.cc"), "absl/flags/parse.cc");
  EXPECT_EQ(SourceRelativePath("/src/tests/unit/common/t.cc"), "tests/unit/common/t.cc");
  EXPECT_EQ(SourceRelativePath("/somewhere/else/main.cc"), "main.cc");
}

TEST(PrintFlagsHelpTest, DashedNamesAndSourcePaths) {
  std::ostringstream out;
  PrintFlagsHelp(out, "prog: does things", false);
  const std::string help = out.str();
  EXPECT_THAT(help, HasSubstr("prog: does things\n"));
  EXPECT_THAT(help, HasSubstr("  Flags from tests/unit/common/daemon_flags_test.cc:\n"));
  EXPECT_THAT(help, HasSubstr("    --config-dir (the directory read); default: \"/etc/x\";\n"));
  EXPECT_THAT(help, HasSubstr("    --take-over (ask the running agent to step aside); default: "
                              "false;\n"));
  EXPECT_THAT(help, Not(HasSubstr("config_dir")));
  EXPECT_THAT(help, Not(HasSubstr("/work/")));
  EXPECT_THAT(help, Not(HasSubstr("--flagfile")));  // abseil's own: only with --helpfull

  std::ostringstream full;
  PrintFlagsHelp(full, "prog", true);
  EXPECT_THAT(full.str(), HasSubstr("--flagfile ("));
  EXPECT_THAT(full.str(), HasSubstr("--only-check-args: "));
  EXPECT_THAT(full.str(), Not(HasSubstr("NDEBUG")));
}

}  // namespace
}  // namespace ambit
