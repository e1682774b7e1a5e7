#include "agent/common/sealed_file.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"

namespace ambit {
namespace {

constexpr int kRequiredSeals = F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW;

}  // namespace

absl::Status CheckSealedFileRef(absl::string_view what, size_t fd_count, uint64_t size,
                                uint64_t max_size) {
  if (fd_count != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " carried ", fd_count, " fds; it takes its one sealed file"));
  }
  if (size > max_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " of ", size, " bytes is above the limit of ", max_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> CreateSealedFile(const char* name, absl::string_view bytes) {
  UniqueFd fd(memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return absl::ErrnoToStatus(errno, absl::StrCat("memfd_create ", name));
  if (ftruncate(fd.get(), static_cast<off_t>(bytes.size())) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("size ", name, " to ", bytes.size(), " bytes"));
  }
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n =
        pwrite(fd.get(), bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return absl::ErrnoToStatus(errno, absl::StrCat("write ", name));
    done += static_cast<size_t>(n);
  }
  if (fcntl(fd.get(), F_ADD_SEALS, kRequiredSeals | F_SEAL_SEAL) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("seal ", name));
  }
  return fd;
}

absl::StatusOr<SealedMapping> SealedMapping::Map(int fd, uint64_t expected_size,
                                                 uint64_t max_size) {
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("the file is not a sealable memfd: ", strerror(errno)));
  }
  if ((seals & kRequiredSeals) != kRequiredSeals) {
    return absl::FailedPreconditionError(
        "the file is not sealed against writing, shrinking and growing");
  }
  struct stat st;
  if (fstat(fd, &st) < 0) return absl::ErrnoToStatus(errno, "fstat sealed file");
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size != expected_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("the file holds ", size, " bytes but ", expected_size, " were announced"));
  }
  if (size > max_size) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the file holds ", size, " bytes, above the limit of ", max_size));
  }
  if (size == 0) return SealedMapping(nullptr, 0);
  void* data = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (data == MAP_FAILED) return absl::ErrnoToStatus(errno, "mmap sealed file");
  return SealedMapping(data, size);
}

SealedMapping::SealedMapping(SealedMapping&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

SealedMapping& SealedMapping::operator=(SealedMapping&& other) noexcept {
  if (this != &other) {
    Unmap();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

SealedMapping::~SealedMapping() { Unmap(); }

void SealedMapping::Unmap() {
  if (data_ != nullptr) munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace ambit
