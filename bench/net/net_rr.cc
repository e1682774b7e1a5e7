// Request/response load for the network benchmark: an echo server and four clients, each
// bounded in count and time, each printing one JSON line.
//
//   net_rr server PORT                          echo server on 0.0.0.0:PORT ("listening")
//   net_rr rr    HOST PORT SIZE COUNT SECONDS   SIZE-byte round trips on one connection
//   net_rr crr   HOST PORT COUNT SECONDS        connect + 1-byte round trip + close, repeated
//   net_rr rate  HOST PORT SIZE RATE SECONDS    SIZE-byte requests at RATE/s on one connection;
//                                               latency counted from each request's scheduled
//                                               time, so a stall is not hidden
//   net_rr idle  HOST PORT COUNT SECONDS        COUNT connections, one round trip each, then
//                                               prints "ready" and holds them until stdin
//                                               closes or SECONDS pass
//   net_rr load  HOST PORT SIZE RATE SECONDS CONNS
//                                               open loop: SIZE-byte requests at RATE/s over
//                                               CONNS pipelined connections, sent on schedule
//                                               whether or not earlier answers came back;
//                                               prints the achieved rate and the latency from
//                                               each request's scheduled time
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "bench/net/tool_util.h"

namespace {

using ambit::bench::NowNs;
using ambit::bench::RaiseFdLimit;

class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "net_rr: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

sockaddr_in Address(const char* ip, const char* port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(std::atoi(port)));
  if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
    std::fprintf(stderr, "net_rr: bad IPv4 address %s\n", ip);
    std::exit(2);
  }
  return a;
}

void SetNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

UniqueFd Connect(const sockaddr_in& a) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) Die("socket");
  SetNoDelay(fd.get());
  timeval tv{5, 0};  // a lost peer fails the run instead of hanging it
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&a), sizeof(a)) < 0) Die("connect");
  return fd;
}

void WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      Die("write");
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void ReadExactly(int fd, char* p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) Die("read");
    if (r == 0) {
      errno = ECONNRESET;
      Die("read: peer closed");
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
}

// The q-quantile of sorted nanosecond samples, in microseconds (0 when there are none).
double PercentileUs(const std::vector<int64_t>& sorted_ns, double q) {
  if (sorted_ns.empty()) return 0.0;
  size_t i = std::min(sorted_ns.size() - 1,
                      static_cast<size_t>(q * static_cast<double>(sorted_ns.size())));
  return static_cast<double>(sorted_ns[i]) / 1000.0;
}

void PrintPercentiles(const char* mode, std::vector<int64_t>& ns, double seconds) {
  std::sort(ns.begin(), ns.end());
  auto pct = [&](double q) { return PercentileUs(ns, q); };
  std::printf(
      "{\"mode\": \"%s\", \"count\": %zu, \"seconds\": %.3f, \"p50_us\": %.2f, "
      "\"p90_us\": %.2f, \"p99_us\": %.2f, \"max_us\": %.2f}\n",
      mode, ns.size(), seconds, pct(0.50), pct(0.90), pct(0.99), pct(1.0));
}

int Server(const char* port) {
  RaiseFdLimit();
  sockaddr_in a = Address("0.0.0.0", port);
  UniqueFd lfd(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  int one = 1;
  setsockopt(lfd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(lfd.get(), reinterpret_cast<const sockaddr*>(&a), sizeof(a)) < 0) Die("bind");
  if (listen(lfd.get(), 4096) < 0) Die("listen");
  UniqueFd ep(epoll_create1(EPOLL_CLOEXEC));
  epoll_event le{};
  le.events = EPOLLIN;
  le.data.fd = lfd.get();
  epoll_ctl(ep.get(), EPOLL_CTL_ADD, lfd.get(), &le);
  std::printf("listening\n");
  std::fflush(stdout);
  std::vector<epoll_event> events(256);
  std::vector<char> buf(64 * 1024);
  for (;;) {
    int n = epoll_wait(ep.get(), events.data(), static_cast<int>(events.size()), -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) Die("epoll_wait");
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == lfd.get()) {
        for (int k = 0; k < 64; ++k) {
          int c = accept4(lfd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          SetNoDelay(c);
          epoll_event e{};
          e.events = EPOLLIN;
          e.data.fd = c;
          epoll_ctl(ep.get(), EPOLL_CTL_ADD, c, &e);
        }
        continue;
      }
      ssize_t r = read(fd, buf.data(), buf.size());
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (r <= 0) {
        close(fd);  // also leaves the epoll set
        continue;
      }
      // Echo back; a full socket buffer (bulk-ish use) waits briefly instead of buffering.
      const char* p = buf.data();
      size_t left = static_cast<size_t>(r);
      bool ok = true;
      while (left > 0 && ok) {
        ssize_t w = write(fd, p, left);
        if (w > 0) {
          p += w;
          left -= static_cast<size_t>(w);
        } else if (w < 0 && errno == EAGAIN) {
          pollfd pf{fd, POLLOUT, 0};
          ok = poll(&pf, 1, 5000) > 0;
        } else if (!(w < 0 && errno == EINTR)) {
          ok = false;
        }
      }
      if (!ok) close(fd);
    }
  }
}

int RoundTrips(const char* host, const char* port, size_t size, long count, double max_s) {
  UniqueFd fd = Connect(Address(host, port));
  std::vector<char> req(size, 'x'), resp(size);
  for (int i = 0; i < 100; ++i) {  // warm-up: caches, pools, TCP windows
    WriteAll(fd.get(), req.data(), size);
    ReadExactly(fd.get(), resp.data(), size);
  }
  std::vector<int64_t> ns;
  ns.reserve(static_cast<size_t>(count));
  const int64_t start = NowNs(), deadline = start + static_cast<int64_t>(max_s * 1e9);
  for (long i = 0; i < count; ++i) {
    int64_t t0 = NowNs();
    if (t0 > deadline) break;
    WriteAll(fd.get(), req.data(), size);
    ReadExactly(fd.get(), resp.data(), size);
    ns.push_back(NowNs() - t0);
  }
  PrintPercentiles("rr", ns, static_cast<double>(NowNs() - start) / 1e9);
  return 0;
}

int ConnectRequestResponse(const char* host, const char* port, long count, double max_s) {
  const sockaddr_in a = Address(host, port);
  char b = 'x';
  const int64_t start = NowNs(), deadline = start + static_cast<int64_t>(max_s * 1e9);
  long done = 0;
  for (; done < count && NowNs() < deadline; ++done) {
    UniqueFd fd = Connect(a);
    WriteAll(fd.get(), &b, 1);
    ReadExactly(fd.get(), &b, 1);
  }
  double seconds = static_cast<double>(NowNs() - start) / 1e9;
  std::printf("{\"mode\": \"crr\", \"count\": %ld, \"seconds\": %.3f, \"conns_per_s\": %.1f}\n",
              done, seconds, static_cast<double>(done) / seconds);
  return 0;
}

int FixedRate(const char* host, const char* port, size_t size, double rate, double seconds) {
  UniqueFd fd = Connect(Address(host, port));
  std::vector<char> req(size, 'x'), resp(size);
  for (int i = 0; i < 100; ++i) {
    WriteAll(fd.get(), req.data(), size);
    ReadExactly(fd.get(), resp.data(), size);
  }
  const long count = static_cast<long>(rate * seconds);
  const int64_t interval = static_cast<int64_t>(1e9 / rate);
  std::vector<int64_t> ns;
  ns.reserve(static_cast<size_t>(count));
  const int64_t start = NowNs() + interval;
  const int64_t deadline = start + static_cast<int64_t>(2 * seconds * 1e9) + 1000000000;
  for (long i = 0; i < count && NowNs() < deadline; ++i) {
    const int64_t due = start + i * interval;
    timespec ts{static_cast<time_t>(due / 1000000000), static_cast<long>(due % 1000000000)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
    }
    WriteAll(fd.get(), req.data(), size);
    ReadExactly(fd.get(), resp.data(), size);
    ns.push_back(NowNs() - due);
  }
  PrintPercentiles("rate", ns, static_cast<double>(NowNs() - start) / 1e9);
  return 0;
}

int Idle(const char* host, const char* port, long count, double hold_s) {
  RaiseFdLimit();
  const sockaddr_in a = Address(host, port);
  std::vector<UniqueFd> conns;
  conns.reserve(static_cast<size_t>(count));
  char b = 'x';
  for (long i = 0; i < count; ++i) {
    conns.push_back(Connect(a));
    WriteAll(conns.back().get(), &b, 1);
    ReadExactly(conns.back().get(), &b, 1);
  }
  std::printf("ready %zu\n", conns.size());
  std::fflush(stdout);
  pollfd pf{0, POLLIN, 0};
  poll(&pf, 1, static_cast<int>(hold_s * 1000));
  return 0;
}

// The open-loop sender behind the sweeps' saturation curve (bench/sweep). Unlike `rate`, which
// waits for each answer before the next request, a slow path here builds a queue instead of
// slowing the sender (wrk2's model): past saturation the achieved rate falls below the offered
// one and the latency, counted from each request's scheduled time, grows with the queue.
// Requests are identical, so a connection only counts the bytes it still owes and the scheduled
// times of the requests whose answers are outstanding (answers come back in order).
struct LoadConn {
  explicit LoadConn(UniqueFd f) : fd(std::move(f)) {}
  UniqueFd fd;
  size_t unsent = 0;        // request bytes scheduled but not yet written
  size_t partial = 0;       // bytes of the current answer read so far
  std::deque<int64_t> due;  // scheduled times of the requests awaiting an answer
  bool want_out = false;    // EPOLLOUT registered (the socket buffer was full)
};

int OpenLoad(const char* host, const char* port, size_t size, double rate, double seconds,
             int nconns) {
  if (size == 0 || rate <= 0 || seconds <= 0 || nconns <= 0 || nconns > 1024) {
    std::fprintf(stderr, "net_rr load: SIZE, RATE, SECONDS > 0 and 0 < CONNS <= 1024\n");
    return 2;
  }
  const sockaddr_in a = Address(host, port);
  std::vector<LoadConn> conns;
  conns.reserve(static_cast<size_t>(nconns));
  std::vector<char> out(64 * 1024, 'x'), in(64 * 1024);
  UniqueFd ep(epoll_create1(EPOLL_CLOEXEC));
  for (size_t k = 0; k < static_cast<size_t>(nconns); ++k) {
    conns.emplace_back(Connect(a));
    int fd = conns[k].fd.get();
    for (int i = 0; i < 10; ++i) {  // warm-up: caches, pools, TCP windows
      WriteAll(fd, out.data(), std::min(size, out.size()));
      ReadExactly(fd, in.data(), std::min(size, in.size()));
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u64 = k;
    if (epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &e) < 0) Die("epoll_ctl");
  }
  const long count = std::max(1L, static_cast<long>(rate * seconds));
  const int64_t start = NowNs() + 1000000;
  auto due_of = [&](long i) {
    return start + static_cast<int64_t>(static_cast<double>(i) * 1e9 / rate);
  };
  // Bounded: answers still missing this long after the last scheduled send count as lost.
  const int64_t drain_ns = static_cast<int64_t>(std::max(2.0, seconds) * 1e9);
  std::vector<int64_t> ns;
  ns.reserve(static_cast<size_t>(count));
  long sent = 0;
  int64_t last_answer = start;
  auto flush = [&](LoadConn& c, size_t k) {
    while (c.unsent > 0) {
      ssize_t w = write(c.fd.get(), out.data(), std::min(c.unsent, out.size()));
      if (w > 0) {
        c.unsent -= static_cast<size_t>(w);
      } else if (w < 0 && errno == EINTR) {
        continue;
      } else if (w < 0 && errno == EAGAIN) {
        break;
      } else {
        Die("write");
      }
    }
    bool want = c.unsent > 0;
    if (want != c.want_out) {
      epoll_event e{};
      e.events = want ? (EPOLLIN | EPOLLOUT) : EPOLLIN;
      e.data.u64 = k;
      epoll_ctl(ep.get(), EPOLL_CTL_MOD, c.fd.get(), &e);
      c.want_out = want;
    }
  };
  std::vector<epoll_event> events(static_cast<size_t>(nconns));
  size_t outstanding = 0;
  for (;;) {
    int64_t now = NowNs();
    for (; sent < count && due_of(sent) <= now; ++sent) {
      size_t k = static_cast<size_t>(sent % nconns);
      conns[k].unsent += size;
      conns[k].due.push_back(due_of(sent));
      ++outstanding;
    }
    for (size_t k = 0; k < conns.size(); ++k) {
      if (conns[k].unsent > 0 && !conns[k].want_out) flush(conns[k], k);
    }
    if (sent == count && outstanding == 0) break;
    const int64_t end = due_of(count - 1) + drain_ns;
    if (now >= end) break;
    int64_t wait = sent < count ? due_of(sent) - now : end - now;
    timespec ts{static_cast<time_t>(wait / 1000000000), static_cast<long>(wait % 1000000000)};
    int n = epoll_pwait2(ep.get(), events.data(), static_cast<int>(events.size()), &ts, nullptr);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) Die("epoll_pwait2");
    for (int i = 0; i < n; ++i) {
      size_t k = events[i].data.u64;
      LoadConn& c = conns[k];
      if (events[i].events & EPOLLOUT) flush(c, k);
      if (!(events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
      for (;;) {
        ssize_t r = read(c.fd.get(), in.data(), in.size());
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && errno == EAGAIN) break;
        if (r < 0) Die("read");
        if (r == 0) {
          errno = ECONNRESET;
          Die("read: peer closed");
        }
        c.partial += static_cast<size_t>(r);
        const int64_t t = NowNs();
        while (c.partial >= size && !c.due.empty()) {
          c.partial -= size;
          ns.push_back(t - c.due.front());
          c.due.pop_front();
          --outstanding;
          last_answer = t;
        }
      }
    }
  }
  const size_t completed = ns.size();
  // A request never answered counts with the time it has waited so far: a stall stays visible.
  const int64_t stop = NowNs();
  for (auto& c : conns) {
    for (int64_t d : c.due) ns.push_back(stop - d);
  }
  const double elapsed =
      std::max(static_cast<double>(last_answer - start), static_cast<double>(count) * 1e9 / rate) /
      1e9;
  std::sort(ns.begin(), ns.end());
  auto pct = [&](double q) { return PercentileUs(ns, q); };
  std::printf(
      "{\"mode\": \"load\", \"offered_per_s\": %.1f, \"connections\": %d, \"sent\": %ld, "
      "\"completed\": %zu, \"lost\": %zu, \"seconds\": %.3f, \"achieved_per_s\": %.1f, "
      "\"p50_us\": %.2f, \"p90_us\": %.2f, \"p99_us\": %.2f, \"max_us\": %.2f}\n",
      rate, nconns, sent, completed, ns.size() - completed, elapsed,
      static_cast<double>(completed) / elapsed, pct(0.50), pct(0.90), pct(0.99), pct(1.0));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);  // a reset peer is an error to handle, not a reason to die
  std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "server" && argc == 3) return Server(argv[2]);
  if (mode == "rr" && argc == 7)
    return RoundTrips(argv[2], argv[3], std::strtoul(argv[4], nullptr, 10), std::atol(argv[5]),
                      std::atof(argv[6]));
  if (mode == "crr" && argc == 6)
    return ConnectRequestResponse(argv[2], argv[3], std::atol(argv[4]), std::atof(argv[5]));
  if (mode == "rate" && argc == 7)
    return FixedRate(argv[2], argv[3], std::strtoul(argv[4], nullptr, 10), std::atof(argv[5]),
                     std::atof(argv[6]));
  if (mode == "idle" && argc == 6)
    return Idle(argv[2], argv[3], std::atol(argv[4]), std::atof(argv[5]));
  if (mode == "load" && argc == 8)
    return OpenLoad(argv[2], argv[3], std::strtoul(argv[4], nullptr, 10), std::atof(argv[5]),
                    std::atof(argv[6]), std::atoi(argv[7]));
  std::fprintf(stderr,
               "usage: net_rr server PORT | rr HOST PORT SIZE COUNT SECONDS | "
               "crr HOST PORT COUNT SECONDS | rate HOST PORT SIZE RATE SECONDS | "
               "idle HOST PORT COUNT SECONDS | load HOST PORT SIZE RATE SECONDS CONNS\n");
  return 2;
}
