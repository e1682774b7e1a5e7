#include "agent/waypoint/access_log_buffer.h"

#include <errno.h>
#include <unistd.h>

#include <utility>

namespace ambit::waypoint {

std::shared_ptr<AccessLogBuffer> AccessLogBuffer::Create(int fd, EventLoop* loop,
                                                         AccessLogBufferOptions options) {
  return std::shared_ptr<AccessLogBuffer>(new AccessLogBuffer(fd, loop, options));
}

void AccessLogBuffer::Append(absl::string_view line) {
  if (!pending_.empty() && pending_.size() + line.size() > options_.max_batch_bytes) Flush();
  if (line.size() >= options_.max_batch_bytes) {
    Write(line);  // alone: a batch never splits a line
    return;
  }
  pending_.append(line.data(), line.size());
  if (!timer_armed_ && loop_ != nullptr) {
    timer_armed_ = true;
    loop_->RunAfter(options_.flush_after, [weak = weak_from_this()] {
      if (auto self = weak.lock()) {
        self->timer_armed_ = false;
        self->Flush();
      }
    });
  }
}

void AccessLogBuffer::Flush() {
  if (pending_.empty()) return;
  Write(pending_);
  pending_.clear();
}

void AccessLogBuffer::Write(absl::string_view bytes) {
  // A log write that fails (a closed stderr) has nowhere to report to; the line is dropped, as
  // log::Line drops it. A short write (a regular file on a full disk) is continued.
  while (!bytes.empty()) {
    ++writes_;
    const ssize_t n = ::write(fd_, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
}

}  // namespace ambit::waypoint
