#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "agent/common/unique_fd.h"

namespace ambit {

// Bytes handed from one process to another through an anonymous file (memfd) that the sender
// sealed against writing, shrinking and growing before passing it. The receiver checks the seals
// itself, so once it has the descriptor the bytes it maps cannot change under it, whatever the
// sender does next. No size limit but the receiver's: the control channel carries only the
// descriptor.

// A memfd named `name` (visible in /proc/PID/fd) holding exactly `bytes`, sealed. CLOEXEC.
absl::StatusOr<UniqueFd> CreateSealedFile(const char* name, absl::string_view bytes);

// The checks of a control message that announces a sealed file, made when it is decoded: exactly
// one descriptor came with it, and the announced size is at most max_size. InvalidArgument naming
// `what` (the message) otherwise.
absl::Status CheckSealedFileRef(absl::string_view what, size_t fd_count, uint64_t size,
                                uint64_t max_size);

// A read-only private mapping of a sealed file; unmapped on destruction. Move-only.
class SealedMapping {
 public:
  // Maps fd after checking it is a sealed memfd (write, shrink and grow seals all set) of
  // exactly expected_size bytes, at most max_size. FailedPrecondition for a file that is not
  // sealed, InvalidArgument for a size that differs from the one announced, ResourceExhausted
  // above max_size.
  static absl::StatusOr<SealedMapping> Map(int fd, uint64_t expected_size, uint64_t max_size);

  SealedMapping(SealedMapping&& other) noexcept;
  SealedMapping& operator=(SealedMapping&& other) noexcept;
  SealedMapping(const SealedMapping&) = delete;
  SealedMapping& operator=(const SealedMapping&) = delete;
  ~SealedMapping();

  absl::string_view bytes() const {
    return absl::string_view(static_cast<const char*>(data_), size_);
  }

 private:
  SealedMapping(void* data, size_t size) : data_(data), size_(size) {}
  void Unmap();
  void* data_ = nullptr;
  size_t size_ = 0;
};

// The message of type `Message` (a Protobuf message; only its ParseFromArray is used, so this
// module needs no Protobuf) in a sealed file announced as `size` bytes, at most `max_size`:
// SealedMapping::Map's errors, DataLoss "`what`: the file is not a `type_name`" for bytes that
// do not parse.
template <typename Message>
absl::StatusOr<Message> ReadSealedMessage(int fd, uint64_t size, uint64_t max_size,
                                          absl::string_view what, absl::string_view type_name) {
  absl::StatusOr<SealedMapping> file = SealedMapping::Map(fd, size, max_size);
  if (!file.ok()) return file.status();
  Message message;
  if (!message.ParseFromArray(file->bytes().data(), static_cast<int>(file->bytes().size()))) {
    return absl::DataLossError(absl::StrCat(what, ": the file is not a ", type_name));
  }
  return message;
}

}  // namespace ambit
