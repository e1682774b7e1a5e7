#include "agent/common/framed.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "absl/time/clock.h"
#include "agent/common/unique_fd.h"

namespace ambit {
namespace {

struct Pair {
  UniqueFd a, b;
};

Pair MakePair() {
  int fds[2];
  EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  return Pair{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

TEST(Framed, RoundTripsAMessage) {
  Pair p = MakePair();
  std::string message(100000, 'x');
  message[5] = '\0';
  // 100 kB does not fit the socket buffer at once: write from a second thread.
  std::thread writer([&] { EXPECT_TRUE(WriteFramed(p.a.get(), message, absl::Seconds(5)).ok()); });
  auto got = ReadFramed(p.b.get(), 1 << 20, absl::Seconds(5));
  writer.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, message);
}

TEST(Framed, RefusesOversizedMessages) {
  Pair p = MakePair();
  ASSERT_TRUE(WriteFramed(p.a.get(), std::string(100, 'x'), absl::Seconds(1)).ok());
  auto got = ReadFramed(p.b.get(), 10, absl::Seconds(1));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted);
}

// A peer that trickles bytes cannot hold the reader past its deadline: the timeout bounds the
// whole exchange, not each read.
TEST(Framed, TheDeadlineBoundsTheWholeRead) {
  Pair p = MakePair();
  std::thread trickle([&] {
    const char header[4] = {100, 0, 0, 0};
    for (int i = 0; i < 4; ++i) {
      (void)!write(p.a.get(), header + i, 1);
      absl::SleepFor(absl::Milliseconds(150));
    }
    for (int i = 0; i < 8; ++i) {
      (void)!write(p.a.get(), "x", 1);
      absl::SleepFor(absl::Milliseconds(150));
    }
  });
  absl::Time start = absl::Now();
  auto got = ReadFramed(p.b.get(), 1 << 20, absl::Milliseconds(400));
  absl::Duration took = absl::Now() - start;
  trickle.join();
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
  EXPECT_LT(took, absl::Milliseconds(1000));
}

TEST(Framed, StatsSocketSitsBesideTheControlSocket) {
  EXPECT_EQ(StatsSocketFor("/run/ambit/dataplane.sock"), "/run/ambit/dataplane-stats.sock");
  EXPECT_EQ(StatsSocketFor("dataplane.sock"), "./dataplane-stats.sock");
}

}  // namespace
}  // namespace ambit
