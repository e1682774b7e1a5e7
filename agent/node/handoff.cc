#include "agent/node/handoff.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/common/seqpacket.h"
#include "agent/common/socket_util.h"
#include "agent/common/version.h"
#include "ambit/dataplane/v1/handoff.pb.h"
#include "bpf/abi/redirect.h"

namespace ambit::node {
namespace {

namespace pb = ::ambit::dataplane::v1;

// A request is a few dozen bytes; anything far larger is not one.
constexpr size_t kMaxRequestBytes = 4096;
constexpr size_t kMaxField = 256;

}  // namespace

std::string HandOffSocketFor(const std::string& run_dir) { return run_dir + "/agent-handoff.sock"; }

std::string BuildVersion() { return std::string(Version()); }

TakeOverRequest ThisAgent(const std::string& instance) {
  TakeOverRequest r;
  r.pid = getpid();
  r.build = BuildVersion();
  r.bpf_abi = AMBIT_ABI_VERSION;
  r.instance = instance;
  return r;
}

absl::StatusOr<TakeOverRequest> ParseTakeOverRequest(const std::string& bytes) {
  if (bytes.size() > kMaxRequestBytes) {
    return absl::InvalidArgumentError(absl::StrCat("hand-off request of ", bytes.size(),
                                                   " bytes (at most ", kMaxRequestBytes, ")"));
  }
  pb::HandOff message;
  if (!message.ParseFromString(bytes)) {
    return absl::InvalidArgumentError(
        "hand-off packet does not parse as ambit.dataplane.v1.HandOff");
  }
  if (!message.has_request()) {
    return absl::InvalidArgumentError("hand-off packet is no TakeOverRequest");
  }
  const pb::TakeOverRequest& in = message.request();
  if (in.version() != pb::HAND_OFF_VERSION_1) {
    return absl::InvalidArgumentError(
        absl::StrCat("hand-off version ", in.version(), " is not one this agent speaks (1)"));
  }
  if (in.pid() <= 0 || in.pid() > (int64_t{1} << 22)) {
    return absl::InvalidArgumentError(absl::StrCat("hand-off request names pid ", in.pid()));
  }
  if (in.instance().empty() || in.instance().size() > kMaxField || in.build().size() > kMaxField) {
    return absl::InvalidArgumentError("hand-off request's instance or build is empty or too long");
  }
  TakeOverRequest out;
  out.pid = in.pid();
  out.build = in.build();
  out.bpf_abi = in.bpf_abi();
  out.instance = in.instance();
  return out;
}

absl::Status SendTakeOverAnswer(int conn, bool stepped_aside, const std::string& refused,
                                int lock_fd) {
  pb::HandOff message;
  pb::TakeOverAnswer* a = message.mutable_answer();
  a->set_version(pb::HAND_OFF_VERSION_1);
  a->set_stepped_aside(stepped_aside);
  a->set_refused(refused);
  a->set_pid(getpid());
  a->set_build(BuildVersion());
  a->set_bpf_abi(AMBIT_ABI_VERSION);
  std::vector<int> fds;
  if (stepped_aside && lock_fd >= 0) {
    a->set_lock_attached(true);
    fds.push_back(lock_fd);
  }
  return SendPacket(conn, message.SerializeAsString(), fds);
}

absl::StatusOr<SteppedAside> RequestTakeOver(const std::string& socket_path,
                                             const TakeOverRequest& request,
                                             absl::Duration timeout) {
  auto conn = ConnectUnix(socket_path, SOCK_SEQPACKET);
  if (!conn.ok()) {
    return absl::UnavailableError(absl::StrCat("no agent serves the hand-off socket ", socket_path,
                                               ": ", conn.status().message()));
  }
  pb::HandOff message;
  pb::TakeOverRequest* r = message.mutable_request();
  r->set_version(pb::HAND_OFF_VERSION_1);
  r->set_pid(request.pid);
  r->set_build(request.build);
  r->set_bpf_abi(request.bpf_abi);
  r->set_instance(request.instance);
  if (absl::Status s = SendPacket(conn->get(), message.SerializeAsString(), {}); !s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("send take-over request to ", socket_path, ": ", s.message()));
  }
  // The running agent answers after it stepped aside, which joins its threads (a CA call in
  // flight ends within its own deadline): wait for it, bounded.
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    pollfd p{conn->get(), POLLIN, 0};
    const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left <= 0) {
      return absl::DeadlineExceededError(absl::StrCat(
          "the running agent did not answer the take-over within ", absl::FormatDuration(timeout)));
    }
    int rc = poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (rc < 0 && errno != EINTR) return absl::ErrnoToStatus(errno, "poll hand-off socket");
    if (rc > 0) break;
  }
  auto packet = ReceivePacket(conn->get());
  if (!packet.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "the running agent closed the hand-off without an answer: ", packet.status().message()));
  }
  pb::HandOff answer;
  if (packet->data.size() > kMaxRequestBytes || !answer.ParseFromString(packet->data) ||
      !answer.has_answer()) {
    return absl::InvalidArgumentError("the running agent's hand-off answer does not parse");
  }
  const pb::TakeOverAnswer& a = answer.answer();
  if (!a.stepped_aside()) {
    return absl::FailedPreconditionError(absl::StrCat("the running agent (pid ", a.pid(),
                                                      ", build ", a.build(),
                                                      ") refused the take-over: ", a.refused()));
  }
  SteppedAside out;
  out.pid = a.pid();
  out.build = a.build();
  out.bpf_abi = a.bpf_abi();
  if (a.lock_attached() && packet->fds.size() == 1) out.lock = std::move(packet->fds[0]);
  return out;
}

}  // namespace ambit::node
