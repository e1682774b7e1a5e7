// A plain TCP relay (no TLS, no HTTP/2): the pure hop-cost yardstick (variant B1) for the
// network benchmark. Each worker thread owns a SO_REUSEPORT listener and an epoll loop; every
// accepted connection gets a non-blocking connect to the target and one 64 KiB buffer per
// direction, and half-closes are forwarded. Nothing is shared between threads.
//
//   net_relay LISTEN_IP LISTEN_PORT TARGET_IP TARGET_PORT [THREADS]
//
// Prints "listening" once every worker's listener is bound. Runs until killed.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <latch>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr size_t kBufferSize = 64 * 1024;

class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }
  int get() const { return fd_; }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "net_relay: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

sockaddr_in Address(const char* ip, const char* port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(std::atoi(port)));
  if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
    std::fprintf(stderr, "net_relay: bad IPv4 address %s\n", ip);
    std::exit(2);
  }
  return a;
}

// One direction of a relayed connection: bytes read from `from` waiting to be written to `to`.
struct Pipe {
  std::unique_ptr<char[]> buf = std::make_unique<char[]>(kBufferSize);
  size_t off = 0;
  size_t len = 0;
  bool eof = false;   // `from` sent FIN
  bool shut = false;  // FIN forwarded to `to`
};

struct Conn;
struct Endpoint {
  Conn* conn;
  int side;  // 0 = downstream (accepted), 1 = upstream (connected)
};

struct Conn {
  UniqueFd fd[2];
  Pipe pipe[2];  // pipe[0]: downstream -> upstream, pipe[1]: upstream -> downstream
  Endpoint ep[2];
  bool connected = false;
  bool dead = false;
};

void SetNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// Moves bytes from fd[from] to fd[1 - from]. Returns false on a fatal error.
bool Pump(Conn& c, int from) {
  Pipe& p = c.pipe[from];
  int in = c.fd[from].get(), out = c.fd[1 - from].get();
  for (int round = 0; round < 64; ++round) {  // bounded so one busy connection cannot starve
    if (p.len == 0 && !p.eof) {
      ssize_t n = read(in, p.buf.get(), kBufferSize);
      if (n < 0) return errno == EAGAIN || errno == EINTR;
      if (n == 0) {
        p.eof = true;
      } else {
        p.off = 0;
        p.len = static_cast<size_t>(n);
      }
    }
    while (p.len > 0) {
      ssize_t n = write(out, p.buf.get() + p.off, p.len);
      if (n < 0) return errno == EAGAIN || errno == EINTR;
      p.off += static_cast<size_t>(n);
      p.len -= static_cast<size_t>(n);
    }
    if (p.eof) {
      if (!p.shut) {
        shutdown(out, SHUT_WR);
        p.shut = true;
      }
      return true;
    }
  }
  return true;
}

void Rearm(int ep, Conn& c) {
  for (int side = 0; side < 2; ++side) {
    uint32_t ev = 0;
    if (side == 1 && !c.connected) {
      ev = EPOLLOUT;
    } else {
      if (c.connected && c.pipe[side].len == 0 && !c.pipe[side].eof) ev |= EPOLLIN;
      if (c.pipe[1 - side].len > 0) ev |= EPOLLOUT;  // waiting to write into this side
    }
    epoll_event e{};
    e.events = ev;
    e.data.ptr = &c.ep[side];
    epoll_ctl(ep, EPOLL_CTL_MOD, c.fd[side].get(), &e);
  }
}

void Worker(const sockaddr_in listen_addr, const sockaddr_in target, std::latch* bound) {
  UniqueFd lfd(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (lfd.get() < 0) Die("socket");
  int one = 1;
  setsockopt(lfd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(lfd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (bind(lfd.get(), reinterpret_cast<const sockaddr*>(&listen_addr), sizeof(listen_addr)) < 0)
    Die("bind");
  if (listen(lfd.get(), 4096) < 0) Die("listen");
  bound->count_down();
  UniqueFd ep(epoll_create1(EPOLL_CLOEXEC));
  epoll_event le{};
  le.events = EPOLLIN;
  le.data.ptr = nullptr;
  epoll_ctl(ep.get(), EPOLL_CTL_ADD, lfd.get(), &le);

  std::vector<epoll_event> events(256);
  std::vector<Conn*> dead;
  for (;;) {
    int n = epoll_wait(ep.get(), events.data(), static_cast<int>(events.size()), -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      Die("epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      if (events[i].data.ptr == nullptr) {
        for (int k = 0; k < 64; ++k) {
          int cfd = accept4(lfd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (cfd < 0) break;
          auto* c = new Conn;
          c->fd[0] = UniqueFd(cfd);
          c->fd[1] = UniqueFd(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
          c->ep[0] = {c, 0};
          c->ep[1] = {c, 1};
          SetNoDelay(cfd);
          SetNoDelay(c->fd[1].get());
          int r =
              connect(c->fd[1].get(), reinterpret_cast<const sockaddr*>(&target), sizeof(target));
          if (r < 0 && errno != EINPROGRESS) {
            delete c;
            continue;
          }
          for (int side = 0; side < 2; ++side) {
            epoll_event e{};
            e.data.ptr = &c->ep[side];
            epoll_ctl(ep.get(), EPOLL_CTL_ADD, c->fd[side].get(), &e);
          }
          Rearm(ep.get(), *c);
        }
        continue;
      }
      auto* e = static_cast<Endpoint*>(events[i].data.ptr);
      Conn& c = *e->conn;
      if (c.dead) continue;
      bool ok = true;
      if (!c.connected && e->side == 1) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(c.fd[1].get(), SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0)
          ok = false;
        else
          c.connected = true;
      }
      if (ok && c.connected) ok = Pump(c, 0) && Pump(c, 1);
      if (events[i].events & (EPOLLERR)) ok = false;
      bool done = c.pipe[0].shut && c.pipe[1].shut;
      if (!ok || done) {
        c.dead = true;
        dead.push_back(&c);
      } else {
        Rearm(ep.get(), c);
      }
    }
    for (Conn* c : dead) delete c;  // closing the fds removes them from epoll
    dead.clear();
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr,
                 "usage: net_relay LISTEN_IP LISTEN_PORT TARGET_IP TARGET_PORT [THREADS]\n");
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);  // a reset peer is an error to handle, not a reason to die
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  const sockaddr_in listen_addr = Address(argv[1], argv[2]);
  const sockaddr_in target = Address(argv[3], argv[4]);
  int threads =
      argc > 5 ? std::atoi(argv[5]) : static_cast<int>(std::thread::hardware_concurrency());
  if (threads < 1) threads = 1;
  std::latch bound(threads);
  std::vector<std::thread> workers;
  for (int i = 0; i < threads; ++i) workers.emplace_back(Worker, listen_addr, target, &bound);
  bound.wait();
  std::printf("listening\n");
  std::fflush(stdout);
  for (auto& t : workers) t.join();
  return 0;
}
