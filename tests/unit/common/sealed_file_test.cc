#include "agent/common/sealed_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"

namespace ambit {
namespace {

TEST(SealedFileTest, RoundTripsBytesLargerThanAControlMessage) {
  std::string bytes(9 << 20, 'x');
  bytes[12345] = 'y';
  auto fd = CreateSealedFile("test", bytes);
  ASSERT_TRUE(fd.ok()) << fd.status();
  auto mapping = SealedMapping::Map(fd->get(), bytes.size(), 64 << 20);
  ASSERT_TRUE(mapping.ok()) << mapping.status();
  EXPECT_EQ(mapping->bytes(), bytes);
}

TEST(SealedFileTest, SealedFileCannotBeWrittenOrResized) {
  auto fd = CreateSealedFile("test", "abc");
  ASSERT_TRUE(fd.ok());
  EXPECT_LT(pwrite(fd->get(), "z", 1, 0), 0);
  EXPECT_LT(ftruncate(fd->get(), 1), 0);
  EXPECT_LT(ftruncate(fd->get(), 100), 0);
}

TEST(SealedFileTest, RefusesAnUnsealedFile) {
  UniqueFd fd(memfd_create("unsealed", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  ASSERT_TRUE(fd);
  ASSERT_EQ(write(fd.get(), "abc", 3), 3);
  auto mapping = SealedMapping::Map(fd.get(), 3, 100);
  EXPECT_EQ(mapping.status().code(), absl::StatusCode::kFailedPrecondition);
  // Sealed against writing only: it could still grow or shrink under the reader.
  ASSERT_EQ(fcntl(fd.get(), F_ADD_SEALS, F_SEAL_WRITE), 0);
  EXPECT_EQ(SealedMapping::Map(fd.get(), 3, 100).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(SealedFileTest, RefusesAnOrdinaryFile) {
  char path[] = "/tmp/ambit-sealed-XXXXXX";
  UniqueFd fd(mkstemp(path));
  ASSERT_TRUE(fd);
  unlink(path);
  EXPECT_EQ(SealedMapping::Map(fd.get(), 0, 100).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(SealedFileTest, RefusesASizeOtherThanAnnounced) {
  auto fd = CreateSealedFile("test", "abcd");
  ASSERT_TRUE(fd.ok());
  EXPECT_EQ(SealedMapping::Map(fd->get(), 5, 100).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SealedMapping::Map(fd->get(), 4, 3).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(SealedFileTest, EmptyFileMapsToNothing) {
  auto fd = CreateSealedFile("test", "");
  ASSERT_TRUE(fd.ok());
  auto mapping = SealedMapping::Map(fd->get(), 0, 100);
  ASSERT_TRUE(mapping.ok());
  EXPECT_TRUE(mapping->bytes().empty());
}

}  // namespace
}  // namespace ambit
