// A fixed-answer HTTP/1.1 server for the waypoint benchmark: every request, whatever its method
// and path, gets `200 OK` with the same small body, on a kept-alive connection. It is the
// application behind every variant (so the server costs the same on every path) and the fast
// external authorizer of variant WX (Envoy's HTTP ext_authz takes a 200 as "allow"). A Python
// server would bound the run at a few thousand requests per second and hide the proxies' cost.
//
//   wp_http_server LISTEN_IP PORT [THREADS] [BODY_BYTES]
//
// Each worker thread owns a SO_REUSEPORT listener and an epoll loop. Request bodies framed by
// Content-Length are read and dropped. A request whose target holds "/deny/" gets `403` with body
// `denied` (so the benchmark can prove the waypoint asked the authorizer); a chunked request body
// is answered 501 and the connection closed (neither the load generators nor the waypoint's
// authorization client send one). Pipelined requests are answered in order. Prints "listening
// <port>" once every worker's listener is bound. Runs until killed.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <latch>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kMaxHeaderBytes = 64 * 1024;
constexpr size_t kReadChunk = 16 * 1024;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "wp_http_server: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

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

// One accepted connection: bytes not yet parsed, bytes of a request body still to skip, and
// answers not yet written.
struct Conn {
  UniqueFd fd;
  std::string in;
  size_t body_left = 0;
  std::string out;
  bool close_after_write = false;
};

// The value of header `name` (case-insensitive) in `head`, or empty.
std::string_view Header(std::string_view head, std::string_view name) {
  size_t pos = head.find("\r\n");
  while (pos != std::string_view::npos && pos + 2 < head.size()) {
    size_t start = pos + 2;
    size_t end = head.find("\r\n", start);
    if (end == std::string_view::npos) end = head.size();
    std::string_view line = head.substr(start, end - start);
    size_t colon = line.find(':');
    if (colon == name.size() && strncasecmp(line.data(), name.data(), name.size()) == 0) {
      std::string_view v = line.substr(colon + 1);
      while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
      while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
      return v;
    }
    pos = end;
  }
  return {};
}

class Worker {
 public:
  Worker(UniqueFd listener, std::string answer, std::string deny)
      : listener_(std::move(listener)), answer_(std::move(answer)), deny_(std::move(deny)) {}

  void Run() {
    UniqueFd ep(epoll_create1(EPOLL_CLOEXEC));
    if (ep.get() < 0) Die("epoll_create1");
    ep_ = ep.get();
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = listener_.get();
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, listener_.get(), &ev) < 0) Die("epoll_ctl listener");
    std::vector<epoll_event> events(256);
    std::vector<char> buf(kReadChunk);
    for (;;) {
      int n = epoll_wait(ep_, events.data(), static_cast<int>(events.size()), -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        Die("epoll_wait");
      }
      for (int i = 0; i < n; ++i) {
        int fd = events[i].data.fd;
        if (fd == listener_.get()) {
          Accept();
          continue;
        }
        auto it = conns_.find(fd);
        if (it == conns_.end()) continue;
        Conn& c = *it->second;
        bool alive = true;
        if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) alive = ReadAndAnswer(c, buf);
        if (alive && !c.out.empty()) alive = Flush(c);
        if (!alive) conns_.erase(it);
      }
    }
  }

 private:
  void Accept() {
    for (;;) {
      int fd = accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;  // EAGAIN, or a connection reset before we took it
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      auto c = std::make_unique<Conn>();
      c->fd = UniqueFd(fd);
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLRDHUP;
      ev.data.fd = fd;
      if (epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) < 0) continue;  // c closes fd
      conns_[fd] = std::move(c);
    }
  }

  // Reads what is there, answers every complete request. False: close the connection.
  bool ReadAndAnswer(Conn& c, std::vector<char>& buf) {
    for (;;) {
      ssize_t r = read(c.fd.get(), buf.data(), buf.size());
      if (r == 0) return false;
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) break;
        return false;
      }
      size_t got = static_cast<size_t>(r);
      size_t skip = std::min(got, c.body_left);
      c.body_left -= skip;
      c.in.append(buf.data() + skip, got - skip);
      if (got < buf.size()) break;  // short read: the socket is drained
    }
    while (c.body_left == 0 && !c.close_after_write) {
      size_t end = c.in.find("\r\n\r\n");
      if (end == std::string::npos) {
        if (c.in.size() > kMaxHeaderBytes) return false;
        break;
      }
      std::string_view head(c.in.data(), end);
      size_t body = 0;
      if (!Header(head, "transfer-encoding").empty()) {
        c.out += "HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        c.close_after_write = true;
        break;
      }
      std::string_view cl = Header(head, "content-length");
      if (!cl.empty()) body = std::strtoull(std::string(cl).c_str(), nullptr, 10);
      bool close = strcasecmp(std::string(Header(head, "connection")).c_str(), "close") == 0;
      std::string_view target = head.substr(0, head.find("\r\n"));
      c.out +=
          target.find(" HTTP/") != std::string_view::npos &&
                  target.substr(0, target.find(" HTTP/")).find("/deny/") != std::string_view::npos
              ? deny_
              : answer_;
      size_t consumed = end + 4;
      size_t in_buffer = std::min(body, c.in.size() - consumed);
      consumed += in_buffer;
      c.body_left = body - in_buffer;
      c.in.erase(0, consumed);
      if (close) c.close_after_write = true;
    }
    return true;
  }

  // Writes pending answers; waits for EPOLLOUT when the socket is full. False: close.
  bool Flush(Conn& c) {
    while (!c.out.empty()) {
      ssize_t w = send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) break;
        return false;
      }
      c.out.erase(0, static_cast<size_t>(w));
    }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | (c.out.empty() ? 0u : static_cast<uint32_t>(EPOLLOUT));
    ev.data.fd = c.fd.get();
    epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd.get(), &ev);
    return !(c.out.empty() && c.close_after_write);
  }

  UniqueFd listener_;
  std::string answer_;
  std::string deny_;
  int ep_ = -1;
  std::unordered_map<int, std::unique_ptr<Conn>> conns_;
};

UniqueFd Listen(const sockaddr_in& addr) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) Die("socket");
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) < 0) Die("bind");
  if (listen(fd.get(), 4096) < 0) Die("listen");
  return fd;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 5) {
    std::fprintf(stderr, "usage: %s LISTEN_IP PORT [THREADS] [BODY_BYTES]\n", argv[0]);
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::atoi(argv[2])));
  if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
    std::fprintf(stderr, "wp_http_server: bad IPv4 address %s\n", argv[1]);
    return 2;
  }
  int threads = argc > 3 ? std::atoi(argv[3]) : 1;
  long body_bytes = argc > 4 ? std::atol(argv[4]) : 2;
  if (threads < 1 || threads > 64 || body_bytes < 0 || body_bytes > (1 << 20)) {
    std::fprintf(stderr, "wp_http_server: THREADS in 1..64, BODY_BYTES in 0..1048576\n");
    return 2;
  }
  std::string body(static_cast<size_t>(body_bytes), 'x');
  if (body_bytes == 2) body = "ok";
  std::string answer = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: " +
                       std::to_string(body.size()) + "\r\n\r\n" + body;
  const std::string deny =
      "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 6\r\n\r\ndenied";

  // The first listener picks the port (PORT 0); the others join it with SO_REUSEPORT.
  std::vector<UniqueFd> listeners;
  listeners.push_back(Listen(addr));
  sockaddr_in bound{};
  socklen_t len = sizeof(bound);
  if (getsockname(listeners[0].get(), reinterpret_cast<sockaddr*>(&bound), &len) < 0) {
    Die("getsockname");
  }
  addr.sin_port = bound.sin_port;
  for (int i = 1; i < threads; ++i) listeners.push_back(Listen(addr));

  std::vector<std::thread> workers;
  std::latch started(threads);
  for (auto& l : listeners) {
    workers.emplace_back([l = std::move(l), &answer, &deny, &started]() mutable {
      Worker w(std::move(l), answer, deny);
      started.count_down();
      w.Run();
    });
  }
  started.wait();
  std::printf("listening %d\n", ntohs(bound.sin_port));
  std::fflush(stdout);
  for (auto& t : workers) t.join();
  return 0;
}
