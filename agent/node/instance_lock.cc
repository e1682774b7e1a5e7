#include "agent/node/instance_lock.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/common/instance_paths.h"

namespace ambit::node {
namespace {

constexpr const char* kLockDir = "/run/lock/ambit";

// The PID the holder wrote, or 0. The holder writes it right after it took the lock, so a
// refusal that races with that write waits a moment for it.
pid_t ReadHolder(int fd) {
  for (int attempt = 0; attempt < 20; ++attempt) {
    char buf[32] = {};
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    int64_t pid = 0;
    if (n > 0 && absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::string_view(buf, n)), &pid) &&
        pid > 0) {
      return static_cast<pid_t>(pid);
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return 0;
}

}  // namespace

std::string InstanceLock::PathFor(const std::string& instance) {
  return absl::StrCat(kLockDir, "/", instance, ".lock");
}

absl::StatusOr<InstanceLock> InstanceLock::Acquire(const std::string& instance) {
  if (!ValidInstanceName(instance)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--instance '", instance,
        "' is not a valid instance name (1-64 of A-Z a-z 0-9 . _ -, not starting with '.')"));
  }
  std::error_code ec;
  std::filesystem::create_directories(kLockDir, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", kLockDir, ": ", ec.message()));
  std::string path = PathFor(instance);
  UniqueFd fd;
  // --cleanup unlinks the file while it holds the lock: a lock taken on a file that is no
  // longer at path is no lock at all, so check and open again (bounded: each retry means some
  // other process held and removed it in between).
  for (int attempt = 0;; ++attempt) {
    fd = UniqueFd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!fd) return absl::ErrnoToStatus(errno, absl::StrCat("open lock file ", path));
    if (flock(fd.get(), LOCK_EX | LOCK_NB) < 0) {
      if (errno != EWOULDBLOCK) {
        return absl::ErrnoToStatus(errno, absl::StrCat("lock ", path));
      }
      pid_t holder = ReadHolder(fd.get());
      return absl::FailedPreconditionError(absl::StrCat(
          "instance '", instance, "' is in use by ",
          holder > 0 ? absl::StrCat("pid ", holder) : std::string("another process"), " (it holds ",
          path, "); stop that agent first, or pick another --instance"));
    }
    struct stat held, current;
    if (fstat(fd.get(), &held) == 0 && stat(path.c_str(), &current) == 0 &&
        held.st_dev == current.st_dev && held.st_ino == current.st_ino) {
      break;
    }
    if (attempt == 10) {
      return absl::UnavailableError(
          absl::StrCat("lock file ", path, " keeps being replaced; try again"));
    }
  }
  std::string pid = absl::StrCat(getpid(), "\n");
  if (ftruncate(fd.get(), 0) < 0 ||
      pwrite(fd.get(), pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    return absl::ErrnoToStatus(errno, absl::StrCat("write pid to lock file ", path));
  }
  return InstanceLock(std::move(path), std::move(fd));
}

absl::StatusOr<InstanceLock> InstanceLock::Adopt(const std::string& instance, UniqueFd fd) {
  if (!ValidInstanceName(instance)) {
    return absl::InvalidArgumentError(absl::StrCat("--instance '", instance, "' is not valid"));
  }
  std::string path = PathFor(instance);
  struct stat held, current;
  if (!fd || fstat(fd.get(), &held) < 0 || !S_ISREG(held.st_mode) ||
      stat(path.c_str(), &current) < 0 || held.st_dev != current.st_dev ||
      held.st_ino != current.st_ino) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the descriptor handed over is not the instance lock ", path, " (removed meanwhile?)"));
  }
  // Succeeds at once when the descriptor shares the holder's open file description, which
  // then holds the lock for us; fails if it is some other open of the file.
  if (flock(fd.get(), LOCK_EX | LOCK_NB) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("lock handed-over ", path));
  }
  std::string pid = absl::StrCat(getpid(), "\n");
  if (ftruncate(fd.get(), 0) < 0 ||
      pwrite(fd.get(), pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    return absl::ErrnoToStatus(errno, absl::StrCat("write pid to lock file ", path));
  }
  return InstanceLock(std::move(path), std::move(fd));
}

void InstanceLock::Remove() {
  // Unlinked before the descriptor closes: whoever opened the old file re-checks and retries.
  unlink(path_.c_str());
  fd_.Reset();
}

}  // namespace ambit::node
