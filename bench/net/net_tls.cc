// TLS load against an HBONE port (15008) for the network benchmark: full TLS 1.3 mutual handshakes
// with an SVID, no session resumption (every handshake is a full one), the way a peer node opens a
// pooled HBONE connection. Bounded in count and time; prints one JSON line (or "ready N").
//
//   net_tls handshakes CERTDIR HOST PORT COUNT SECONDS THREADS
//       THREADS clients, each in a loop: connect, handshake (TLS 1.3, ALPN h2, our SVID), send the
//       HTTP/2 preface and SETTINGS, wait for the server's first application data (its SETTINGS:
//       proof that it verified our certificate and finished its side), close. Stops after COUNT
//       handshakes or SECONDS.
//   net_tls idle CERTDIR HOST PORT COUNT SECONDS
//       COUNT such connections, each also acknowledging the server's SETTINGS (an idle pooled
//       HBONE connection: TLS up, HTTP/2 settled, no stream), then prints "ready N" and holds them
//       until stdin closes or SECONDS pass.
//
// CERTDIR holds cert.pem (chain), key.pem and root.pem, as tests/e2e/svid.py writes them. The
// server's chain is verified against root.pem; its SPIFFE ID is not checked (ambit's own client
// does that; here only the server's cost matters).
//
// BoringSSL, as the data plane uses it (docs/ARCHITECTURE.md#process-split): never link gRPC or
// OpenSSL here.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
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
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      if (fd_ >= 0) close(fd_);
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  ~UniqueFd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

// One open connection: the SSL must go before its socket.
struct Conn {
  UniqueFd fd;
  bssl::UniquePtr<SSL> ssl;
};

// The client connection preface (RFC 9113 section 3.4) and an empty SETTINGS frame.
constexpr char kPreface[] =
    "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    "\x00\x00\x00\x04\x00\x00\x00\x00\x00";
constexpr size_t kPrefaceLen = sizeof(kPreface) - 1;
// SETTINGS with the ACK flag.
constexpr char kSettingsAck[] = "\x00\x00\x00\x04\x01\x00\x00\x00\x00";
constexpr size_t kSettingsAckLen = sizeof(kSettingsAck) - 1;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "net_tls: %s\n", what.c_str());
  ERR_print_errors_fp(stderr);
  std::exit(1);
}

bssl::UniquePtr<SSL_CTX> MakeContext(const std::string& dir) {
  bssl::UniquePtr<SSL_CTX> ctx(SSL_CTX_new(TLS_method()));
  if (!ctx) Die("SSL_CTX_new");
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx.get(), TLS1_3_VERSION);
  // Every handshake a full one: no session cache, no tickets kept.
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), (dir + "/cert.pem").c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx.get(), (dir + "/key.pem").c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_load_verify_locations(ctx.get(), (dir + "/root.pem").c_str(), nullptr) != 1) {
    Die("loading the SVID from " + dir);
  }
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  static const uint8_t kAlpn[] = {2, 'h', '2'};
  SSL_CTX_set_alpn_protos(ctx.get(), kAlpn, sizeof(kAlpn));
  return ctx;
}

sockaddr_in Address(const char* ip, const char* port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(std::atoi(port)));
  if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) Die(std::string("bad IPv4 address ") + ip);
  return a;
}

bool WriteAll(SSL* ssl, const char* p, size_t n) {
  return SSL_write(ssl, p, static_cast<int>(n)) == static_cast<int>(n);
}

// Connects, handshakes, sends the preface, reads the server's first application data. Blocking
// sockets with 5 s timeouts: a lost server fails the run instead of hanging it. Empty on failure
// (the reason on stderr when `verbose`).
bool Open(SSL_CTX* ctx, const sockaddr_in& a, bool ack, Conn* out, bool verbose) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return false;
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  timeval tv{5, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&a), sizeof(a)) < 0) {
    if (verbose) std::perror("net_tls: connect");
    return false;
  }
  bssl::UniquePtr<SSL> ssl(SSL_new(ctx));
  if (!ssl || SSL_set_fd(ssl.get(), fd.get()) != 1) return false;
  ERR_clear_error();
  if (SSL_connect(ssl.get()) != 1) {
    if (verbose) {
      std::fprintf(stderr, "net_tls: handshake failed\n");
      ERR_print_errors_fp(stderr);
    }
    return false;
  }
  const uint8_t* alpn = nullptr;
  unsigned alpn_len = 0;
  SSL_get0_alpn_selected(ssl.get(), &alpn, &alpn_len);
  if (alpn_len != 2 || std::memcmp(alpn, "h2", 2) != 0) {
    if (verbose) std::fprintf(stderr, "net_tls: server did not select ALPN h2\n");
    return false;
  }
  if (!WriteAll(ssl.get(), kPreface, kPrefaceLen)) return false;
  char buf[4096];
  if (SSL_read(ssl.get(), buf, sizeof(buf)) <= 0) {  // the server's SETTINGS
    if (verbose) {
      std::fprintf(stderr, "net_tls: no HTTP/2 SETTINGS from the server\n");
      ERR_print_errors_fp(stderr);
    }
    return false;
  }
  if (ack && !WriteAll(ssl.get(), kSettingsAck, kSettingsAckLen)) return false;
  out->fd = std::move(fd);
  out->ssl = std::move(ssl);
  return true;
}

int Handshakes(const char* dir, const char* host, const char* port, long count, double max_s,
               int threads) {
  bssl::UniquePtr<SSL_CTX> ctx = MakeContext(dir);
  const sockaddr_in a = Address(host, port);
  std::atomic<long> started{0}, done{0}, failed{0};
  const int64_t start = NowNs(), deadline = start + static_cast<int64_t>(max_s * 1e9);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      while (NowNs() < deadline && started.fetch_add(1) < count) {
        Conn c;
        if (Open(ctx.get(), a, /*ack=*/false, &c, failed.load() == 0)) {
          done.fetch_add(1);
        } else if (failed.fetch_add(1) > 10) {
          return;  // the server is gone or refusing: stop instead of spinning
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  double seconds = static_cast<double>(NowNs() - start) / 1e9;
  std::printf(
      "{\"mode\": \"handshakes\", \"count\": %ld, \"failed\": %ld, \"seconds\": %.3f, "
      "\"per_s\": %.1f}\n",
      done.load(), failed.load(), seconds, static_cast<double>(done.load()) / seconds);
  return failed.load() > 0 ? 1 : 0;
}

int Idle(const char* dir, const char* host, const char* port, long count, double hold_s) {
  RaiseFdLimit();
  bssl::UniquePtr<SSL_CTX> ctx = MakeContext(dir);
  const sockaddr_in a = Address(host, port);
  std::vector<Conn> conns(static_cast<size_t>(count));
  const int64_t deadline = NowNs() + static_cast<int64_t>(hold_s * 1e9);
  for (long i = 0; i < count; ++i) {
    if (NowNs() > deadline || !Open(ctx.get(), a, /*ack=*/true, &conns[i], true)) {
      Die("opening idle connection " + std::to_string(i));
    }
  }
  std::printf("ready %ld\n", count);
  std::fflush(stdout);
  pollfd pf{0, POLLIN, 0};
  int64_t left_ms = (deadline - NowNs()) / 1000000;
  poll(&pf, 1, static_cast<int>(left_ms > 0 ? left_ms : 0));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "handshakes" && argc == 8) {
    return Handshakes(argv[2], argv[3], argv[4], std::atol(argv[5]), std::atof(argv[6]),
                      std::max(1, std::atoi(argv[7])));
  }
  if (mode == "idle" && argc == 7) {
    return Idle(argv[2], argv[3], argv[4], std::atol(argv[5]), std::atof(argv[6]));
  }
  std::fprintf(stderr,
               "usage: net_tls handshakes CERTDIR HOST PORT COUNT SECONDS THREADS | "
               "idle CERTDIR HOST PORT COUNT SECONDS\n");
  return 2;
}
