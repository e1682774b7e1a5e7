#include "agent/waypoint/access_log_buffer.h"

#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/common/clock.h"
#include "agent/common/unique_fd.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_event_loop.h"

namespace ambit::waypoint {
namespace {

// A SOCK_SEQPACKET pair keeps each write() as one message, so the tests see every batch the
// buffer wrote, as written.
class Sink {
 public:
  Sink() {
    int fds[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, fds), 0);
    write_.Reset(fds[0]);
    read_.Reset(fds[1]);
    const int size = 4 << 20;
    setsockopt(write_.get(), SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    setsockopt(read_.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  }
  int fd() const { return write_.get(); }
  // Every message written so far.
  std::vector<std::string> Messages() {
    std::vector<std::string> out;
    char buf[65536];
    for (;;) {
      const ssize_t n = recv(read_.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n <= 0) break;
      out.emplace_back(buf, static_cast<size_t>(n));
    }
    return out;
  }

 private:
  UniqueFd write_, read_;
};

std::string Line(int i, size_t pad = 0) {
  return absl::StrCat("access: path=/item/", i, " ", std::string(pad, 'x'), "\n");
}

TEST(AccessLogBufferTest, LinesWaitForTheTimerThenGoInOneWrite) {
  Sink sink;
  FakeClock clock;
  testing::FakeEventLoop loop(&clock);
  auto buffer = AccessLogBuffer::Create(sink.fd(), &loop);
  for (int i = 0; i < 3; ++i) buffer->Append(Line(i));
  EXPECT_TRUE(sink.Messages().empty());
  EXPECT_EQ(loop.pending_timers(), 1u);  // one timer per batch, not per line
  loop.Advance(absl::Milliseconds(49));
  EXPECT_TRUE(sink.Messages().empty());
  loop.Advance(absl::Milliseconds(1));
  std::vector<std::string> got = sink.Messages();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], Line(0) + Line(1) + Line(2));
  // The next line arms a new timer.
  buffer->Append(Line(3));
  EXPECT_EQ(loop.pending_timers(), 1u);
  loop.Advance(absl::Milliseconds(50));
  EXPECT_EQ(sink.Messages(), std::vector<std::string>{Line(3)});
}

TEST(AccessLogBufferTest, FlushedBySizeWithWholeLinesOnly) {
  Sink sink;
  FakeClock clock;
  testing::FakeEventLoop loop(&clock);
  auto buffer = AccessLogBuffer::Create(sink.fd(), &loop);
  std::string want;
  for (int i = 0; i < 200; ++i) {
    const std::string line = Line(i, i % 97);  // lines of varied length
    want += line;
    buffer->Append(line);
  }
  buffer->Flush();
  std::string got;
  const std::vector<std::string> writes = sink.Messages();
  EXPECT_GT(writes.size(), 1u);
  EXPECT_LT(writes.size(), 200u / 5);  // batched: far fewer writes than lines
  for (const std::string& w : writes) {
    EXPECT_LE(w.size(), 4096u);
    EXPECT_EQ(w.back(), '\n');
    got += w;
  }
  EXPECT_EQ(got, want);  // nothing lost, nothing reordered
  EXPECT_EQ(buffer->writes(), writes.size());
}

TEST(AccessLogBufferTest, ALongLineIsWrittenAloneAfterWhatWasBuffered) {
  Sink sink;
  FakeClock clock;
  testing::FakeEventLoop loop(&clock);
  auto buffer = AccessLogBuffer::Create(sink.fd(), &loop);
  buffer->Append(Line(1));
  const std::string long_line = Line(2, 10000);
  buffer->Append(long_line);
  buffer->Append(Line(3));
  buffer->Flush();
  EXPECT_EQ(sink.Messages(), (std::vector<std::string>{Line(1), long_line, Line(3)}));
}

TEST(AccessLogBufferTest, WrittenWhenDestroyedAndTheTimerOutlivesIt) {
  Sink sink;
  FakeClock clock;
  testing::FakeEventLoop loop(&clock);
  auto buffer = AccessLogBuffer::Create(sink.fd(), &loop);
  buffer->Append(Line(1));
  buffer.reset();  // a worker stopping
  EXPECT_EQ(sink.Messages(), std::vector<std::string>{Line(1)});
  loop.Advance(absl::Seconds(1));  // the timer finds the buffer gone
  EXPECT_TRUE(sink.Messages().empty());
}

TEST(AccessLogBufferTest, WorkersSharingAPipeNeverInterleaveInsideALine) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  UniqueFd read_end(fds[0]), write_end(fds[1]);
  constexpr int kWorkers = 4;
  constexpr int kLines = 3000;
  std::string all;
  std::thread reader([&] {
    char buf[65536];
    for (;;) {
      const ssize_t n = read(read_end.get(), buf, sizeof buf);
      if (n <= 0) break;
      all.append(buf, static_cast<size_t>(n));
    }
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      FakeClock clock;
      testing::FakeEventLoop loop(&clock);
      auto buffer = AccessLogBuffer::Create(write_end.get(), &loop);
      for (int i = 0; i < kLines; ++i) {
        buffer->Append(
            absl::StrCat("worker=", w, " seq=", i, " ", std::string(i % 300, 'y'), " end\n"));
        if (i % 50 == 0) loop.Advance(absl::Milliseconds(50));
      }
    });
  }
  for (std::thread& t : workers) t.join();
  write_end.Reset();
  reader.join();
  // Every line whole, and each worker's lines in its order.
  std::vector<int> next(kWorkers, 0);
  int lines = 0;
  for (absl::string_view line : absl::StrSplit(all, '\n', absl::SkipEmpty())) {
    ++lines;
    int w = -1, seq = -1;
    ASSERT_EQ(sscanf(std::string(line).c_str(), "worker=%d seq=%d", &w, &seq), 2) << line;
    ASSERT_TRUE(w >= 0 && w < kWorkers) << line;
    EXPECT_EQ(seq, next[w]) << line;
    next[w] = seq + 1;
    EXPECT_EQ(line,
              absl::StrCat("worker=", w, " seq=", seq, " ", std::string(seq % 300, 'y'), " end"));
  }
  EXPECT_EQ(lines, kWorkers * kLines);
}

}  // namespace
}  // namespace ambit::waypoint
