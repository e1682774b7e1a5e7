#include "agent/zds/codec.h"

#include <errno.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "absl/strings/str_cat.h"
#include "istio/zds/zds.pb.h"

namespace ambit::zds {
namespace {

namespace pb = ::istio::workload::zds;

// Kubernetes names and uids are ASCII without spaces or control characters; anything else is
// refused before it reaches a log line or a map key.
absl::Status CheckField(const std::string& what, std::string_view value, size_t max) {
  if (value.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " is empty"));
  if (value.size() > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is ", value.size(), " bytes, more than ", max));
  }
  for (char c : value) {
    if (c <= 0x20 || c >= 0x7f || c == '/') {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " holds a character that is not allowed (byte ",
                       static_cast<int>(static_cast<unsigned char>(c)), ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

const char* TypeName(Request::Type type) {
  switch (type) {
    case Request::Type::kAdd:
      return "add";
    case Request::Type::kKeep:
      return "keep";
    case Request::Type::kDel:
      return "del";
    case Request::Type::kSnapshotSent:
      return "snapshot_sent";
  }
  return "unknown";
}

absl::Status KernelNetnsCheck(int fd) {
  const int type = ioctl(fd, NS_GET_NSTYPE);
  if (type < 0) {
    // ENOTTY: not an nsfs file at all (a regular file, a socket, a pipe).
    return absl::InvalidArgumentError(
        errno == ENOTTY
            ? std::string("the descriptor is not a namespace")
            : absl::StrCat("the descriptor's namespace type cannot be read: ",
                           absl::ErrnoToStatus(errno, "ioctl(NS_GET_NSTYPE)").message()));
  }
  if (type != CLONE_NEWNET) {
    return absl::InvalidArgumentError(
        absl::StrCat("the descriptor is a namespace of another kind (type ", type,
                     "), not a "
                     "network namespace"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Request> DecodeRequest(std::string_view bytes, std::vector<UniqueFd> fds,
                                      int msg_flags, const NetnsCheck& is_netns) {
  // `fds` is owned here: every return below closes what was received.
  if (msg_flags & MSG_CTRUNC) {
    return absl::InvalidArgumentError("request carried more descriptors than fit (truncated)");
  }
  if (msg_flags & MSG_TRUNC) {
    return absl::InvalidArgumentError(
        absl::StrCat("request longer than ", kMaxRequestBytes, " bytes (truncated)"));
  }
  pb::WorkloadRequest msg;
  if (!msg.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError("request is not a WorkloadRequest (undecodable bytes)");
  }
  Request r;
  switch (msg.payload_case()) {
    case pb::WorkloadRequest::kAdd: {
      r.type = Request::Type::kAdd;
      if (fds.size() != 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "add carries ", fds.size(), " descriptors; exactly one (the pod's netns) is required"));
      }
      if (absl::Status s = is_netns(fds[0].get()); !s.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("add's descriptor is not a network namespace: ", s.message()));
      }
      const pb::AddWorkload& add = msg.add();
      r.uid = add.uid();
      if (absl::Status s = CheckField("add: uid", r.uid, kMaxUidBytes); !s.ok()) return s;
      if (!add.has_workload_info()) {
        return absl::InvalidArgumentError("add: workload_info is missing");
      }
      r.info.name = add.workload_info().name();
      r.info.namespace_name = add.workload_info().namespace_();
      r.info.service_account = add.workload_info().service_account();
      if (absl::Status s = CheckField("add: workload_info.name", r.info.name, kMaxNameBytes);
          !s.ok()) {
        return s;
      }
      if (absl::Status s =
              CheckField("add: workload_info.namespace", r.info.namespace_name, kMaxNamespaceBytes);
          !s.ok()) {
        return s;
      }
      if (!r.info.service_account.empty()) {
        if (absl::Status s = CheckField("add: workload_info.service_account",
                                        r.info.service_account, kMaxServiceAccountBytes);
            !s.ok()) {
          return s;
        }
      }
      r.netns = std::move(fds[0]);
      return r;
    }
    case pb::WorkloadRequest::kKeep:
      r.type = Request::Type::kKeep;
      r.uid = msg.keep().uid();
      break;
    case pb::WorkloadRequest::kDel:
      r.type = Request::Type::kDel;
      r.uid = msg.del().uid();
      break;
    case pb::WorkloadRequest::kSnapshotSent:
      r.type = Request::Type::kSnapshotSent;
      break;
    case pb::WorkloadRequest::PAYLOAD_NOT_SET:
      return absl::InvalidArgumentError("request has no payload");
  }
  if (!fds.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(TypeName(r.type), " carries ", fds.size(),
                                                   " descriptors; only add may carry one"));
  }
  if (r.type != Request::Type::kSnapshotSent) {
    if (absl::Status s = CheckField(absl::StrCat(TypeName(r.type), ": uid"), r.uid, kMaxUidBytes);
        !s.ok()) {
      return s;
    }
  }
  return r;
}

std::string EncodeHello() {
  pb::ZdsHello hello;
  hello.set_version(pb::V1);
  return hello.SerializeAsString();
}

std::string EncodeAck(std::string_view error) {
  pb::WorkloadResponse resp;
  // A proto3 string must be UTF-8: anything but printable ASCII (an error may quote what a
  // peer sent) goes out as '?'.
  std::string text(error.substr(0, kMaxAckErrorBytes));
  for (char& c : text) {
    if (c < 0x20 || c > 0x7e) c = '?';
  }
  resp.mutable_ack()->set_error(std::move(text));
  return resp.SerializeAsString();
}

}  // namespace ambit::zds
