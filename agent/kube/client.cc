#include "agent/kube/client.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "agent/common/status.h"
#include "agent/common/unique_fd.h"

namespace ambit::kube {
namespace {

// A token or CA path is a file of a few KiB; anything much larger is not one.
constexpr size_t kMaxTokenBytes = 64 << 10;

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, absl::string_view what) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return absl::ErrnoToStatus(errno, absl::StrCat("open ", what, " ", path));
  std::string content;
  char buf[4096];
  while (true) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("read ", what, " ", path));
    }
    if (n == 0) break;
    content.append(buf, static_cast<size_t>(n));
    if (content.size() > kMaxTokenBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " ", path, " is larger than ", kMaxTokenBytes, " bytes"));
    }
  }
  return content;
}

struct CurlEasyDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct CurlMultiDeleter {
  void operator()(CURLM* m) const { curl_multi_cleanup(m); }
};
struct CurlSlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};

absl::Status GlobalInit() {
  static CURLcode code = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (code != CURLE_OK) {
    return absl::InternalError(absl::StrCat("curl_global_init: ", curl_easy_strerror(code)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view KubeResponse::Header(absl::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (n == name) return v;
  }
  return {};
}

std::string QueryEscape(absl::string_view value) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(value.size());
  for (unsigned char c : value) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

absl::StatusOr<KubeConfig> KubeConfig::InCluster(absl::string_view sa_dir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (host == nullptr || *host == '\0' || port == nullptr || *port == '\0') {
    return absl::FailedPreconditionError(
        "--kube-api=in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set "
        "(not running in a pod?); pass the server's https URL instead");
  }
  std::string h = host;
  if (h.find(':') != std::string::npos && h.front() != '[') h = absl::StrCat("[", h, "]");
  std::string dir(sa_dir);
  AMBIT_ASSIGN_OR_RETURN(KubeConfig config, ForServer(absl::StrCat("https://", h, ":", port),
                                                      dir + "/token", dir + "/ca.crt"));
  if (auto ns = ReadSmallFile(dir + "/namespace", "namespace file"); ns.ok()) {
    config.namespace_name = std::string(absl::StripAsciiWhitespace(*ns));
  }
  return config;
}

absl::StatusOr<KubeConfig> KubeConfig::ForServer(absl::string_view url, std::string token_file,
                                                 std::string ca_file) {
  absl::string_view rest = url;
  if (!absl::ConsumePrefix(&rest, "https://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("API server URL '", url,
                     "' is not https://host[:port]: the bearer token must not travel "
                     "in clear"));
  }
  while (absl::ConsumeSuffix(&rest, "/")) {
  }
  if (rest.empty() || rest.find_first_of("/?#@ ") != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("API server URL '", url, "' is not https://host[:port]"));
  }
  if (token_file.empty() || ca_file.empty()) {
    return absl::InvalidArgumentError("the API server needs a token file and a CA file");
  }
  KubeConfig config;
  config.server = absl::StrCat("https://", rest);
  config.token_file = std::move(token_file);
  config.ca_file = std::move(ca_file);
  return config;
}

absl::StatusOr<KubeConfig> KubeConfig::FromFlags(absl::string_view api, std::string token_file,
                                                 std::string ca_file) {
  const std::string sa(kServiceAccountDir);
  if (api == "in-cluster") {
    AMBIT_ASSIGN_OR_RETURN(KubeConfig config, InCluster());
    if (!token_file.empty()) config.token_file = std::move(token_file);
    if (!ca_file.empty()) config.ca_file = std::move(ca_file);
    return config;
  }
  return ForServer(api, token_file.empty() ? sa + "/token" : std::move(token_file),
                   ca_file.empty() ? sa + "/ca.crt" : std::move(ca_file));
}

void Cancellation::Cancel() {
  cancelled_.store(true, std::memory_order_release);
  absl::MutexLock lock(&mu_);
  for (void* m : active_) curl_multi_wakeup(static_cast<CURLM*>(m));
}

bool Cancellation::Register(void* multi) {
  absl::MutexLock lock(&mu_);
  if (cancelled()) return false;
  active_.insert(multi);
  return true;
}

void Cancellation::Unregister(void* multi) {
  absl::MutexLock lock(&mu_);
  active_.erase(multi);
}

struct KubeClient::Token {
  std::string value;
  uint64_t dev = 0, ino = 0, size = 0;
  int64_t mtime_ns = 0;
};

// What one transfer collects, shared with libcurl's callbacks.
struct KubeClient::Call {
  const Options* options;
  const std::function<absl::Status(absl::string_view)>* on_line;  // null: collect the body
  KubeResponse response;
  std::string pending;  // a watch line not yet complete
  CURL* easy = nullptr;
  // Whether the body is a stream of lines: known at its first byte, from the status (a watch's
  // error answer, e.g. 410, is one JSON Status object, collected whole).
  bool decided = false, streaming = false;
  absl::Status abort;  // why a callback stopped the transfer

  static size_t OnHeader(char* data, size_t size, size_t n, void* arg) {
    auto* call = static_cast<Call*>(arg);
    absl::string_view line(data, size * n);
    if (absl::StartsWith(line, "HTTP/")) {
      call->response.headers.clear();  // a new response (after 100 Continue)
      return size * n;
    }
    size_t colon = line.find(':');
    if (colon != absl::string_view::npos && call->response.headers.size() < 200) {
      call->response.headers.emplace_back(
          absl::AsciiStrToLower(absl::StripAsciiWhitespace(line.substr(0, colon))),
          std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
    }
    return size * n;
  }

  static size_t OnData(char* data, size_t size, size_t n, void* arg) {
    auto* call = static_cast<Call*>(arg);
    return call->Take(absl::string_view(data, size * n)) ? size * n : 0;
  }

  bool Take(absl::string_view data) {
    if (on_line != nullptr && !decided) {
      long status = 0;
      curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
      streaming = status == 200;
      decided = true;
    }
    if (on_line == nullptr || !streaming) {
      if (response.body.size() + data.size() > options->max_body_bytes) {
        abort = absl::ResourceExhaustedError(absl::StrCat("the API server's answer is larger than ",
                                                          options->max_body_bytes, " bytes"));
        return false;
      }
      response.body.append(data.data(), data.size());
      return true;
    }
    while (!data.empty()) {
      size_t nl = data.find('\n');
      absl::string_view chunk = data.substr(0, nl);
      if (pending.size() + chunk.size() > options->max_line_bytes) {
        abort = absl::ResourceExhaustedError(absl::StrCat(
            "a watch event is longer than ", options->max_line_bytes, " bytes; watch abandoned"));
        return false;
      }
      if (nl == absl::string_view::npos) {
        pending.append(chunk.data(), chunk.size());
        return true;
      }
      absl::string_view line;
      if (pending.empty()) {
        line = chunk;
      } else {
        pending.append(chunk.data(), chunk.size());
        line = pending;
      }
      absl::ConsumeSuffix(&line, "\r");
      if (!line.empty()) {
        absl::Status s = (*on_line)(line);
        if (!s.ok()) {
          abort = std::move(s);
          return false;
        }
      }
      pending.clear();
      data.remove_prefix(nl + 1);
    }
    return true;
  }
};

KubeClient::KubeClient(KubeConfig config, Options options)
    : config_(std::move(config)), options_(std::move(options)) {}

KubeClient::~KubeClient() = default;

absl::StatusOr<std::unique_ptr<KubeClient>> KubeClient::Create(KubeConfig config, Options options) {
  AMBIT_RETURN_IF_ERROR(GlobalInit());
  curl_version_info_data* info = curl_version_info(CURLVERSION_NOW);
  if (info == nullptr || (info->features & CURL_VERSION_SSL) == 0) {
    return absl::FailedPreconditionError("libcurl was built without TLS support");
  }
  auto client = std::unique_ptr<KubeClient>(new KubeClient(std::move(config), std::move(options)));
  // Fail at start-up on a missing token or CA rather than at the first request.
  AMBIT_RETURN_IF_ERROR(client->CurrentToken(false).status());
  UniqueFd ca(::open(client->config_.ca_file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!ca)
    return absl::ErrnoToStatus(errno, absl::StrCat("open CA file ", client->config_.ca_file));
  return client;
}

absl::StatusOr<std::string> KubeClient::CurrentToken(bool force) {
  struct stat st {};
  if (::stat(config_.token_file.c_str(), &st) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("stat token file ", config_.token_file));
  }
  absl::MutexLock lock(&token_mu_);
  const int64_t mtime_ns = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
  if (!force && token_ != nullptr && token_->dev == st.st_dev && token_->ino == st.st_ino &&
      token_->size == static_cast<uint64_t>(st.st_size) && token_->mtime_ns == mtime_ns) {
    return token_->value;
  }
  AMBIT_ASSIGN_OR_RETURN(std::string raw, ReadSmallFile(config_.token_file, "token file"));
  std::string value(absl::StripAsciiWhitespace(raw));
  if (value.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("token file ", config_.token_file, " is empty"));
  }
  for (char c : value) {
    if (static_cast<unsigned char>(c) < 0x21 || static_cast<unsigned char>(c) > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token file ", config_.token_file, " holds a character a bearer token cannot have"));
    }
  }
  token_ = std::make_unique<Token>(Token{value, static_cast<uint64_t>(st.st_dev),
                                         static_cast<uint64_t>(st.st_ino),
                                         static_cast<uint64_t>(st.st_size), mtime_ns});
  return value;
}

absl::StatusOr<KubeResponse> KubeClient::Request(absl::string_view method, absl::string_view path,
                                                 absl::string_view body, absl::Duration deadline,
                                                 Cancellation* cancel) {
  if (deadline <= absl::ZeroDuration()) deadline = options_.request_timeout;
  return WithToken(method, path, body, deadline, nullptr, cancel);
}

absl::StatusOr<KubeResponse> KubeClient::Watch(
    absl::string_view path, const std::function<absl::Status(absl::string_view)>& on_line,
    absl::Duration deadline, Cancellation* cancel) {
  return WithToken("GET", path, {}, deadline, &on_line, cancel);
}

absl::StatusOr<KubeResponse> KubeClient::WithToken(
    absl::string_view method, absl::string_view path, absl::string_view body,
    absl::Duration deadline, const std::function<absl::Status(absl::string_view)>* on_line,
    Cancellation* cancel) {
  AMBIT_ASSIGN_OR_RETURN(std::string token, CurrentToken(false));
  AMBIT_ASSIGN_OR_RETURN(KubeResponse response,
                         Perform(method, path, body, deadline, on_line, cancel, token));
  if (response.status != 401) return response;
  // Kubelet may have rotated the token since the stat: read it again, whatever the stat says.
  AMBIT_ASSIGN_OR_RETURN(std::string fresh, CurrentToken(true));
  return Perform(method, path, body, deadline, on_line, cancel, fresh);
}

absl::StatusOr<KubeResponse> KubeClient::Perform(
    absl::string_view method, absl::string_view path, absl::string_view body,
    absl::Duration deadline, const std::function<absl::Status(absl::string_view)>* on_line,
    Cancellation* cancel, const std::string& token) {
  if (path.empty() || path.front() != '/') {
    return absl::InvalidArgumentError(absl::StrCat("API path '", path, "' does not start with /"));
  }
  const std::string url = absl::StrCat(config_.server, path);
  std::unique_ptr<CURL, CurlEasyDeleter> easy(curl_easy_init());
  std::unique_ptr<CURLM, CurlMultiDeleter> multi(curl_multi_init());
  if (easy == nullptr || multi == nullptr) return absl::ResourceExhaustedError("curl handles");

  Call call{&options_, on_line, {}, {}, easy.get(), false, false, absl::OkStatus()};
  char error_buffer[CURL_ERROR_SIZE] = {};
  std::unique_ptr<curl_slist, CurlSlistDeleter> headers;
  auto add_header = [&headers](const std::string& h) {
    headers.reset(curl_slist_append(headers.release(), h.c_str()));
  };
  add_header(absl::StrCat("Authorization: Bearer ", token));
  add_header("Accept: application/json");
  if (!body.empty()) add_header("Content-Type: application/json");
  add_header("Expect:");

  CURL* e = easy.get();
  const std::string method_str(method);
  const std::string body_str(body);
  const long deadline_ms = static_cast<long>(absl::ToInt64Milliseconds(deadline));
  curl_easy_setopt(e, CURLOPT_URL, url.c_str());
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_CAINFO, config_.ca_file.c_str());
  curl_easy_setopt(e, CURLOPT_CAPATH, nullptr);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(e, CURLOPT_SSLVERSION, static_cast<long>(CURL_SSLVERSION_TLSv1_2));
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_NOPROXY, "*");  // the API server is reached directly
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(options_.connect_timeout)));
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, deadline_ms > 0 ? deadline_ms : 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 30L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 10L);
  curl_easy_setopt(e, CURLOPT_USERAGENT, options_.user_agent.c_str());
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &Call::OnHeader);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, &call);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &Call::OnData);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &call);
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");  // gzip when the server offers it
  if (method_str == "GET") {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  } else {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method_str.c_str());
    if (!body_str.empty() || method_str == "POST" || method_str == "PUT") {
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, body_str.c_str());
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body_str.size()));
    }
  }

  if (cancel != nullptr && !cancel->Register(multi.get())) {
    return absl::CancelledError("cancelled");
  }
  curl_multi_add_handle(multi.get(), e);
  CURLcode result = CURLE_OK;
  bool done = false, cancelled = false;
  while (!done) {
    int running = 0;
    CURLMcode mc = curl_multi_perform(multi.get(), &running);
    if (mc != CURLM_OK) {
      result = CURLE_FAILED_INIT;
      break;
    }
    int msgs = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi.get(), &msgs)) {
      if (msg->msg == CURLMSG_DONE) {
        result = msg->data.result;
        done = true;
      }
    }
    if (done || running == 0) break;
    if (cancel != nullptr && cancel->cancelled()) {
      cancelled = true;
      break;
    }
    curl_multi_poll(multi.get(), nullptr, 0, 1000, nullptr);
    if (cancel != nullptr && cancel->cancelled()) {
      cancelled = true;
      break;
    }
  }
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &call.response.status);
  curl_multi_remove_handle(multi.get(), e);
  if (cancel != nullptr) cancel->Unregister(multi.get());
  if (cancelled) return absl::CancelledError(absl::StrCat(method, " ", path, ": cancelled"));
  if (!call.abort.ok()) return call.abort;
  if (result != CURLE_OK) {
    std::string detail = error_buffer[0] != '\0' ? error_buffer : curl_easy_strerror(result);
    std::string message = absl::StrCat(method, " ", url, ": ", detail);
    switch (result) {
      case CURLE_OPERATION_TIMEDOUT:
        return absl::DeadlineExceededError(message);
      case CURLE_PEER_FAILED_VERIFICATION:
      case CURLE_SSL_CACERT_BADFILE:
        return absl::UnavailableError(absl::StrCat(
            message, " (the server's certificate does not verify against ", config_.ca_file, ")"));
      default:
        return absl::UnavailableError(message);
    }
  }
  if (on_line != nullptr && call.streaming && !call.pending.empty()) {
    // The stream ended in the middle of a line: the event is lost, which a re-watch from the
    // last resourceVersion recovers.
    call.pending.clear();
  }
  return std::move(call.response);
}

}  // namespace ambit::kube
