#include "agent/cli/admin_client.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "agent/common/socket_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/common/temp_dir.h"

namespace ambit::cli {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(AdminClientTest, NoSocketMeansNotRunning) {
  ambit::testing::TempDir dir;
  auto stub = ConnectAdmin(dir.PathOf("admin.sock"));
  ASSERT_FALSE(stub.ok());
  EXPECT_EQ(stub.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(stub.status().message(),
              AllOf(HasSubstr("not running"), HasSubstr(dir.PathOf("admin.sock"))));
}

TEST(AdminClientTest, StaleSocketMeansNotRunning) {
  ambit::testing::TempDir dir;
  {
    auto listener = ListenUnix(dir.PathOf("admin.sock"), SOCK_STREAM);
    ASSERT_TRUE(listener.ok()) << listener.status();
  }  // closed: the file stays, nothing listens
  auto stub = ConnectAdmin(dir.PathOf("admin.sock"));
  ASSERT_FALSE(stub.ok());
  EXPECT_EQ(stub.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(stub.status().message(), HasSubstr("nothing listens on it"));
}

TEST(AdminClientTest, ListeningSocketConnects) {
  ambit::testing::TempDir dir;
  auto listener = ListenUnix(dir.PathOf("admin.sock"), SOCK_STREAM);
  ASSERT_TRUE(listener.ok()) << listener.status();
  EXPECT_TRUE(ConnectAdmin(dir.PathOf("admin.sock")).ok());
}

// The admin socket of a running agent sits in a root-only directory. Someone else used to be
// told "ambitd is not running"; they must be told it is a permission problem, and where.
TEST(AdminClientTest, SocketClosedToThisUserIsPermissionDenied) {
  ambit::testing::TempDir dir;
  const std::string run_dir = dir.PathOf("run");
  ASSERT_EQ(mkdir(run_dir.c_str(), 0700), 0);
  const std::string socket_path = run_dir + "/admin.sock";
  auto listener = ListenUnix(socket_path, SOCK_STREAM);
  ASSERT_TRUE(listener.ok()) << listener.status();
  ASSERT_EQ(chmod(dir.path().c_str(), 0755), 0);

  // Root passes every permission check: ask as nobody from a child process. Without root, the
  // directory is closed to its owner too.
  const bool root = geteuid() == 0;
  if (!root) {
    ASSERT_EQ(chmod(run_dir.c_str(), 0), 0);
  }
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(pipe_fds[0]);
    if (root && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(2);
    auto stub = ConnectAdmin(socket_path);
    std::string text = stub.ok() ? "ok"
                                 : absl::StrCat(static_cast<int>(stub.status().code()), " ",
                                                stub.status().message());
    (void)!write(pipe_fds[1], text.data(), text.size());
    _exit(0);
  }
  close(pipe_fds[1]);
  std::string text;
  char buf[512];
  for (ssize_t n; (n = read(pipe_fds[0], buf, sizeof buf)) > 0;) text.append(buf, n);
  close(pipe_fds[0]);
  int wstatus = 0;
  ASSERT_EQ(waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << "child could not drop to nobody";
  chmod(run_dir.c_str(), 0700);
  EXPECT_THAT(text, HasSubstr(absl::StrCat(static_cast<int>(absl::StatusCode::kPermissionDenied),
                                           " permission denied")));
  EXPECT_THAT(text, HasSubstr(socket_path));
  EXPECT_THAT(text, HasSubstr("directory " + run_dir));
  EXPECT_THAT(text, Not(HasSubstr("not running")));
}

}  // namespace
}  // namespace ambit::cli
