#pragma once

// A worker's access-log lines, written in batches: one write() per batch instead of one per
// request (a write per line was about 8% of the waypoint's CPU under load). A batch is written
// when the next line would take it past `max_batch_bytes`, when `flush_after` has passed since
// its first line, and at Flush (the worker's end). Lines stay whole and in order: a batch holds
// only complete lines, and at most PIPE_BUF bytes by default, which the kernel writes to a pipe
// in one piece, so batches of several workers (and the process's other log lines) never mix
// inside a line. A line longer than a batch is written on its own, as an unbatched log line is.
//
// Thread-compatible: one buffer per worker, used on its loop's thread.

#include <cstddef>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/common/event_loop.h"

namespace ambit::waypoint {

struct AccessLogBufferOptions {
  size_t max_batch_bytes = 4096;                        // PIPE_BUF on Linux
  absl::Duration flush_after = absl::Milliseconds(50);  // how stale a line may get
};

class AccessLogBuffer : public std::enable_shared_from_this<AccessLogBuffer> {
 public:
  // fd (not owned, e.g. stderr) must stay open while the buffer lives; loop arms the flush
  // timer and must outlive every Append (the timer holds only a weak_ptr).
  static std::shared_ptr<AccessLogBuffer> Create(int fd, EventLoop* loop,
                                                 AccessLogBufferOptions options = {});
  ~AccessLogBuffer() { Flush(); }
  AccessLogBuffer(const AccessLogBuffer&) = delete;
  AccessLogBuffer& operator=(const AccessLogBuffer&) = delete;

  // One complete line, its newline included.
  void Append(absl::string_view line);
  // Writes what is buffered now.
  void Flush();

  size_t buffered() const { return pending_.size(); }
  uint64_t writes() const { return writes_; }  // write() calls made, for tests

 private:
  AccessLogBuffer(int fd, EventLoop* loop, AccessLogBufferOptions options)
      : fd_(fd), loop_(loop), options_(options) {}
  void Write(absl::string_view bytes);

  const int fd_;
  EventLoop* loop_;
  const AccessLogBufferOptions options_;
  std::string pending_;
  bool timer_armed_ = false;
  uint64_t writes_ = 0;
};

}  // namespace ambit::waypoint
