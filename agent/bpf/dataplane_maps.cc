#include "agent/bpf/dataplane_maps.h"

#include <errno.h>

#include <cstring>

#include "abi/redirect.h"
#include "absl/strings/str_cat.h"
#include "bpf/bpf.h"

namespace ambit::bpf {

absl::StatusOr<OriginalDestination> TakeOriginalDestination(int map_fd, uint64_t netns_cookie,
                                                            const SocketAddress& client) {
  ambit_conn_key key{};
  key.netns_cookie = netns_cookie;
  std::memcpy(key.src_addr, client.ip.bytes().data(), 16);
  key.src_port = client.port;
  ambit_sockaddr value{};
  if (bpf_map_lookup_and_delete_elem(map_fd, &key, &value) < 0) {
    if (errno == ENOENT) {
      return absl::NotFoundError(
          absl::StrCat("no original destination recorded for ", client.ToString()));
    }
    return absl::ErrnoToStatus(errno, "read ambit_orig_dst");
  }
  OriginalDestination out;
  out.address.ip = IpAddress::FromBytes(value.addr);
  out.address.port = value.port;
  out.family = value.family;
  return out;
}

namespace {
ambit_tuple_key TupleKey(const SocketAddress& src, const SocketAddress& dst) {
  ambit_tuple_key key{};
  std::memcpy(key.src_addr, src.ip.bytes().data(), 16);
  std::memcpy(key.dst_addr, dst.ip.bytes().data(), 16);
  key.src_port = src.port;
  key.dst_port = dst.port;
  return key;
}
}  // namespace

absl::StatusOr<bool> TakeKubeletProbe(int map_fd, const SocketAddress& src,
                                      const SocketAddress& dst) {
  if (map_fd < 0) return false;
  ambit_tuple_key key = TupleKey(src, dst);
  uint64_t node_netns_cookie = 0;
  if (bpf_map_lookup_and_delete_elem(map_fd, &key, &node_netns_cookie) == 0) return true;
  if (errno == ENOENT) return false;
  return absl::ErrnoToStatus(errno, "read ambit_probes");
}

absl::Status AllowDelivery(int map_fd, const SocketAddress& src, const SocketAddress& dst) {
  ambit_tuple_key key = TupleKey(src, dst);
  uint8_t one = 1;
  if (bpf_map_update_elem(map_fd, &key, &one, BPF_ANY) < 0) {
    return absl::ErrnoToStatus(errno, "add delivery entry to ambit_deliver");
  }
  return absl::OkStatus();
}

void ForgetDelivery(int map_fd, const SocketAddress& src, const SocketAddress& dst) {
  ambit_tuple_key key = TupleKey(src, dst);
  bpf_map_delete_elem(map_fd, &key);
}

}  // namespace ambit::bpf
