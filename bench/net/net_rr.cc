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
#include <arpa/inet.h>
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
#include <string>
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

void PrintPercentiles(const char* mode, std::vector<int64_t>& ns, double seconds) {
  std::sort(ns.begin(), ns.end());
  auto pct = [&](double q) {
    if (ns.empty()) return 0.0;
    size_t i = std::min(ns.size() - 1, static_cast<size_t>(q * static_cast<double>(ns.size())));
    return static_cast<double>(ns[i]) / 1000.0;
  };
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
  std::fprintf(stderr,
               "usage: net_rr server PORT | rr HOST PORT SIZE COUNT SECONDS | "
               "crr HOST PORT COUNT SECONDS | rate HOST PORT SIZE RATE SECONDS | "
               "idle HOST PORT COUNT SECONDS\n");
  return 2;
}
