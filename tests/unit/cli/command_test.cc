#include "agent/cli/command.h"

#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/cli/commands.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

struct Result {
  int code;
  std::string out;
  std::string err;
};

Result Invoke(const Command& root, const std::vector<std::string>& args) {
  std::ostringstream out, err;
  int code = RunCli(root, args, out, err);
  return {code, out.str(), err.str()};
}

// A tree exercising the framework: a group with an inherited flag, a leaf with its own flag and a
// variadic argument list, and a leaf that fails.
Command TestTree(std::string* seen) {
  Command echo{
      .name = "echo",
      .summary = "Echo the arguments",
      .args_usage = "WORD...",
      .min_args = 1,
      .max_args = kUnlimitedArgs,
      .flags = {{"upper", 'u', "", "upper-case the words"}},
      .run = [seen](Context& ctx) -> absl::Status {
        *seen = absl::StrCat("args=", absl::StrJoin(ctx.args(), ","),
                             " upper=", ctx.flag("upper").has_value() ? "yes" : "no",
                             " node=", ctx.flag("node").value_or("<none>"),
                             " socket=", ctx.admin_socket(),
                             " format=", static_cast<int>(ctx.output_format()));
        return absl::OkStatus();
      },
  };
  Command fail{
      .name = "fail",
      .summary = "Always fails",
      .run = [](Context&) -> absl::Status {
        return absl::UnavailableError("cannot reach ambitd at /x: connection refused");
      },
  };
  Command group{
      .name = "grp",
      .summary = "A group",
      .flags = {{"node", '\0', "NAME", "node to ask"}},
      .subcommands = {echo, fail},
  };
  return Command{.name = "tool", .summary = "A test tool.", .subcommands = {group}};
}

TEST(RunCliTest, ParsesFlagsAnywhereInEveryForm) {
  std::string seen;
  Command root = TestTree(&seen);
  Result r = Invoke(
      root, {"grp", "--node", "n1", "echo", "a", "-u", "b", "-ojson", "--admin-socket=/tmp/s"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(seen, "args=a,b upper=yes node=n1 socket=/tmp/s format=1");

  r = Invoke(root, {"-o", "yaml", "grp", "echo", "--node=n2", "--", "-u", "--x"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(seen, "args=-u,--x upper=no node=n2 socket=/run/ambit/admin.sock format=2");

  r = Invoke(root, {"grp", "echo", "-o=table", "x"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(seen, "args=x upper=no node=<none> socket=/run/ambit/admin.sock format=0");
}

TEST(RunCliTest, UsageErrorsExitTwoWithUsageOnStderr) {
  std::string seen;
  Command root = TestTree(&seen);
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  std::vector<Case> cases = {
      {{}, "tool: missing command"},
      {{"nope"}, "tool: unknown command 'nope'"},
      {{"grp"}, "tool grp: missing command"},
      {{"grp", "nope"}, "tool grp: unknown command 'nope'"},
      {{"grp", "echo"}, "tool grp echo: missing argument (usage: tool grp echo WORD...)"},
      {{"grp", "fail", "extra"}, "tool grp fail: unexpected argument 'extra'"},
      {{"grp", "echo", "--bogus", "x"}, "tool grp echo: unknown flag '--bogus'"},
      {{"grp", "echo", "-z", "x"}, "tool grp echo: unknown flag '-z'"},
      // A subcommand's flag is not known before the subcommand is named.
      {{"grp", "-u", "echo", "x"}, "tool grp: unknown flag '-u'"},
      {{"grp", "echo", "x", "-o"}, "tool grp echo: flag --output needs a value (FORMAT)"},
      {{"grp", "echo", "x", "-o", "xml"},
       "tool grp echo: -o/--output: unknown output format 'xml': use table, wide, json or yaml"},
      {{"grp", "echo", "x", "--upper=1"}, "tool grp echo: flag --upper takes no value"},
      {{"grp", "echo", "x", "--admin-socket="},
       "tool grp echo: --admin-socket needs a non-empty path"},
      {{"--=x"}, "tool: unknown flag '--=x'"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrJoin(c.args, " "));
    Result r = Invoke(root, c.args);
    EXPECT_EQ(r.code, kExitUsage);
    EXPECT_EQ(r.out, "");
    EXPECT_THAT(r.err, StartsWith(c.message + "\n\n"));
    EXPECT_THAT(r.err, HasSubstr("Usage:\n"));
  }
}

TEST(RunCliTest, HandlerErrorExitsOneWithMessage) {
  std::string seen;
  Result r = Invoke(TestTree(&seen), {"grp", "fail"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "tool grp fail: cannot reach ambitd at /x: connection refused\n");
}

TEST(RunCliTest, HelpOnEveryLevel) {
  std::string seen;
  Command root = TestTree(&seen);
  for (const auto& args : std::vector<std::vector<std::string>>{{"--help"},
                                                                {"-h"},
                                                                {"help"},
                                                                {"grp", "--help"},
                                                                {"help", "grp"},
                                                                {"grp", "echo", "-h"},
                                                                {"help", "grp", "echo"},
                                                                {"grp", "echo", "a", "--help"}}) {
    SCOPED_TRACE(absl::StrJoin(args, " "));
    Result r = Invoke(root, args);
    EXPECT_EQ(r.code, kExitOk);
    EXPECT_EQ(r.err, "");
    EXPECT_THAT(r.out, HasSubstr("Usage:\n"));
    EXPECT_THAT(r.out, HasSubstr("Global flags:\n"));
  }
  EXPECT_EQ(seen, "");  // help never runs a handler

  Result top = Invoke(root, {"--help"});
  EXPECT_THAT(top.out, HasSubstr("  tool <command> [flags]\n"));
  EXPECT_THAT(top.out, HasSubstr("Commands:\n  grp    A group\n  help   Show help"));
  EXPECT_THAT(top.out, HasSubstr("Run 'tool <command> --help'"));

  Result leaf = Invoke(root, {"grp", "echo", "--help"});
  EXPECT_THAT(leaf.out,
              StartsWith("Echo the arguments\n\nUsage:\n  tool grp echo WORD... [flags]\n"));
  // Own and inherited flags, then the global ones.
  EXPECT_THAT(leaf.out, HasSubstr("Flags:\n  -u, --upper       upper-case the words\n"
                                  "      --node NAME   node to ask\n"));
  EXPECT_THAT(leaf.out, HasSubstr("  -o, --output FORMAT "));
  EXPECT_THAT(leaf.out, HasSubstr("      --admin-socket PATH "));
}

TEST(AmbitctlTest, IdParseIstioJson) {
  Result r = Invoke(RootCommand(),
                    {"id", "parse", "spiffe://cluster.local/ns/default/sa/web", "-o", "json"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out,
            "{\n"
            "  \"valid\": true,\n"
            "  \"trustDomain\": \"cluster.local\",\n"
            "  \"path\": \"/ns/default/sa/web\",\n"
            "  \"namespace\": \"default\",\n"
            "  \"serviceAccount\": \"web\"\n"
            "}\n");
}

TEST(AmbitctlTest, IdParseInvalidExitsOneWithReason) {
  Result r = Invoke(RootCommand(), {"id", "parse", "spiffe://example.org/a/../b", "-o", "yaml"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.out,
            "valid: false\n"
            "error: \"path contains a relative segment '..' at position 23: '.' and '..' are "
            "not allowed\"\n");
  EXPECT_EQ(r.err, "");
}

TEST(AmbitctlTest, IdParseTable) {
  Result r = Invoke(RootCommand(), {"id", "parse", "spiffe://example.org"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out,
            "Valid:         true\n"
            "Trust domain:  example.org\n"
            "Path:          -\n");
}

TEST(AmbitctlTest, Version) {
  Result r = Invoke(RootCommand(), {"version", "--client", "-o", "json"});
  EXPECT_EQ(r.code, kExitOk);
  EXPECT_EQ(r.out, absl::StrCat("{\n  \"clientVersion\": \"", Version(), "\"\n}\n"));
}

TEST(AmbitctlTest, VersionWithoutAnAgentPrintsTheClientsAndFails) {
  Result r = Invoke(RootCommand(), {"version", "--admin-socket", "/nonexistent/admin.sock"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("Client version:  ", Version(), "\n")));
  EXPECT_THAT(r.err, HasSubstr("no admin socket at /nonexistent/admin.sock"));
}

// Which agent is asked: a flag beats the environment, a socket beats an instance, and an
// instance's socket is where ambitd puts it (agent/common/instance_paths.h).
TEST(ResolveAdminSocketTest, FlagsThenEnvironmentThenDefault) {
  using Env = std::map<std::string, std::string>;
  struct Row {
    std::optional<std::string> socket_flag, instance_flag;
    Env env;
    std::string want;
  };
  const std::vector<Row> rows = {
      {std::nullopt, std::nullopt, {}, "/run/ambit/admin.sock"},
      {std::nullopt, "default", {}, "/run/ambit/admin.sock"},
      {std::nullopt, "blue", {}, "/run/ambit/blue/admin.sock"},
      {"/tmp/a.sock", std::nullopt, {}, "/tmp/a.sock"},
      {std::nullopt, std::nullopt, {{"AMBIT_INSTANCE", "green"}}, "/run/ambit/green/admin.sock"},
      {std::nullopt, std::nullopt, {{"AMBIT_ADMIN_SOCKET", "/tmp/e.sock"}}, "/tmp/e.sock"},
      {std::nullopt,
       std::nullopt,
       {{"AMBIT_ADMIN_SOCKET", "/tmp/e.sock"}, {"AMBIT_INSTANCE", "green"}},
       "/tmp/e.sock"},
      {std::nullopt, "blue", {{"AMBIT_INSTANCE", "green"}}, "/run/ambit/blue/admin.sock"},
      {std::nullopt, "blue", {{"AMBIT_ADMIN_SOCKET", "/tmp/e.sock"}}, "/run/ambit/blue/admin.sock"},
      {"/tmp/a.sock", std::nullopt, {{"AMBIT_INSTANCE", "green"}}, "/tmp/a.sock"},
  };
  for (const Row& row : rows) {
    auto env = [&row](const char* name) -> std::optional<std::string> {
      auto it = row.env.find(name);
      return it == row.env.end() ? std::nullopt : std::make_optional(it->second);
    };
    auto got = ResolveAdminSocket(row.socket_flag, row.instance_flag, env);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, row.want) << row.socket_flag.value_or("-") << " "
                              << row.instance_flag.value_or("-");
  }
  auto bad = ResolveAdminSocket(std::nullopt, std::nullopt, [](const char* name) {
    return std::string(name) == "AMBIT_INSTANCE" ? std::make_optional<std::string>("../x")
                                                 : std::nullopt;
  });
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("AMBIT_INSTANCE='../x'"));
}

TEST(RunCliTest, InstanceFlagAndItsErrors) {
  std::string seen;
  const Command root = TestTree(&seen);
  Result r = Invoke(root, {"grp", "echo", "x", "--instance", "blue"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(seen, HasSubstr("socket=/run/ambit/blue/admin.sock"));
  r = Invoke(root, {"grp", "echo", "x", "--instance", "a/b"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_THAT(r.err, HasSubstr("--instance 'a/b' is not an instance name"));
  r = Invoke(root, {"grp", "echo", "x", "--instance", "blue", "--admin-socket", "/tmp/s"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_THAT(r.err, HasSubstr("--admin-socket and --instance both name the agent"));
}

TEST(RunCliTest, WideIsATableWithMoreColumns) {
  std::string seen;
  const Command root = TestTree(&seen);
  Result r = Invoke(root, {"grp", "echo", "x", "-o", "wide"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(seen, HasSubstr("format=0"));  // handlers that know no wide columns print a table
}

}  // namespace
}  // namespace ambit::cli
