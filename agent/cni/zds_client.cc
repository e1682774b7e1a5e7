#include "agent/cni/zds_client.h"

#include <fcntl.h>
#include <linux/nsfs.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "agent/common/seqpacket.h"
#include "istio/zds/zds.pb.h"

namespace ambit::cni {
namespace {

namespace zds = istio::workload::zds;

absl::Status TryAgain(absl::string_view message) {
  return CniStatus(kErrTryAgainLater, absl::StatusCode::kUnavailable, message);
}

absl::Status Refused(absl::string_view message) {
  return CniStatus(kErrAgentRefused, absl::StatusCode::kFailedPrecondition, message);
}

int MillisLeft(absl::Time deadline) {
  absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1 << 30));
}

// Applies the time left to blocking connect(2) and sendmsg(2) (AF_UNIX honours SO_SNDTIMEO for
// both).
void SetSendTimeout(int fd, absl::Time deadline) {
  absl::Duration left = std::max(deadline - absl::Now(), absl::Milliseconds(1));
  timeval tv = absl::ToTimeval(left);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

// One ZDS session with ambitd: connected, hello read.
class Session {
 public:
  static absl::StatusOr<Session> Open(const std::string& path, absl::Time deadline) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path) {
      return CniStatus(
          kErrInvalidConfig, absl::StatusCode::kInvalidArgument,
          absl::StrCat("zdsSocket: ", path, ": longer than ", sizeof addr.sun_path - 1, " bytes"));
    }
    memcpy(addr.sun_path, path.data(), path.size());
    UniqueFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    if (!fd) return absl::ErrnoToStatus(errno, "socket(AF_UNIX, SOCK_SEQPACKET)");
    SetSendTimeout(fd.get(), deadline);
    if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
      int err = errno;
      const char* why = (err == EAGAIN || err == EINPROGRESS) ? "timed out" : strerror(err);
      return TryAgain(absl::StrCat("zdsSocket: ", path, ": connect: ", why,
                                   " (is ambitd running with --zds-listen=", path, "?)"));
    }
    Session session(path, std::move(fd));
    absl::StatusOr<std::string> hello = session.Receive("ZdsHello", deadline);
    if (!hello.ok()) return hello.status();
    zds::ZdsHello msg;
    if (!msg.ParseFromString(*hello)) {
      return Refused(absl::StrCat("zdsSocket: ", path, ": the first message is not a ZdsHello"));
    }
    if (msg.version() != zds::V1) {
      return Refused(absl::StrCat("zdsSocket: ", path, ": ambitd speaks ZDS version ",
                                  static_cast<int>(msg.version()), "; ambit-cni speaks V1"));
    }
    return session;
  }

  // Sends one request and reads its ack; OK when the ack has no error.
  absl::Status Exchange(const zds::WorkloadRequest& request, const std::vector<int>& fds,
                        absl::string_view what, absl::Time deadline) {
    std::string bytes;
    if (!request.SerializeToString(&bytes)) return absl::InternalError("serialize request");
    SetSendTimeout(fd_.get(), deadline);
    absl::Status sent = SendPacket(fd_.get(), bytes, fds);
    if (!sent.ok()) {
      return TryAgain(absl::StrCat("zdsSocket: ", path_, ": sending ", what, ": ", sent.message()));
    }
    absl::StatusOr<std::string> answer = Receive(absl::StrCat("the answer to ", what), deadline);
    if (!answer.ok()) return answer.status();
    zds::WorkloadResponse response;
    if (!response.ParseFromString(*answer) || !response.has_ack()) {
      return Refused(absl::StrCat("zdsSocket: ", path_, ": the answer to ", what,
                                  " is not a WorkloadResponse with an ack"));
    }
    if (!response.ack().error().empty()) {
      return Refused(absl::StrCat("ambitd refused ", what, ": ", response.ack().error()));
    }
    return absl::OkStatus();
  }

 private:
  Session(std::string path, UniqueFd fd) : path_(std::move(path)), fd_(std::move(fd)) {}

  absl::StatusOr<std::string> Receive(absl::string_view what, absl::Time deadline) {
    pollfd p{fd_.get(), POLLIN, 0};
    for (;;) {
      int n = poll(&p, 1, MillisLeft(deadline));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return absl::ErrnoToStatus(errno, "poll on the ZDS socket");
      if (n == 0) {
        return TryAgain(absl::StrCat("zdsSocket: ", path_, ": no ", what,
                                     " from ambitd in time (the configuration's \"timeout\")"));
      }
      break;
    }
    absl::StatusOr<Packet> packet = ReceivePacket(fd_.get());
    if (!packet.ok()) {
      return TryAgain(absl::StrCat("zdsSocket: ", path_, ": ambitd closed the session before ",
                                   what, " (", packet.status().message(), ")"));
    }
    // ambitd never sends descriptors; any that came are closed with the packet.
    return std::move(packet->data);
  }

  std::string path_;
  UniqueFd fd_;
};

}  // namespace

absl::StatusOr<UniqueFd> ZdsHandOff::OpenNetns(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    int err = errno;
    return CniStatus(err == ENOENT ? kErrInvalidEnv : kErrIo, absl::StatusCode::kNotFound,
                     absl::StrCat("CNI_NETNS: ", path, ": ", strerror(err)));
  }
  int type = ioctl(fd.get(), NS_GET_NSTYPE);
  if (type != CLONE_NEWNET) {
    return CniStatus(kErrInvalidEnv, absl::StatusCode::kInvalidArgument,
                     absl::StrCat("CNI_NETNS: ", path, ": not a network namespace"));
  }
  return fd;
}

absl::Status ZdsHandOff::Add(const std::string& socket, const PodRef& pod, int netns_fd,
                             absl::Time deadline) {
  absl::StatusOr<Session> session = Session::Open(socket, deadline);
  if (!session.ok()) return session.status();
  zds::WorkloadRequest request;
  zds::AddWorkload* add = request.mutable_add();
  add->set_uid(pod.uid);
  add->mutable_workload_info()->set_name(pod.name);
  add->mutable_workload_info()->set_namespace_(pod.namespace_name);
  return session->Exchange(request, {netns_fd},
                           absl::StrCat("AddWorkload for pod ", pod.namespace_name, "/", pod.name),
                           deadline);
}

absl::Status ZdsHandOff::Del(const std::string& socket, const std::string& uid,
                             absl::Time deadline) {
  absl::StatusOr<Session> session = Session::Open(socket, deadline);
  if (!session.ok()) return session.status();
  zds::WorkloadRequest request;
  request.mutable_del()->set_uid(uid);
  return session->Exchange(request, {}, absl::StrCat("DelWorkload for uid ", uid), deadline);
}

absl::Status ZdsHandOff::Probe(const std::string& socket, absl::Time deadline) {
  return Session::Open(socket, deadline).status();
}

}  // namespace ambit::cni
