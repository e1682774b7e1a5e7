// ZDS requests arrive from a CNI side (istio-cni, ambit-cni) over ambitd's ZDS sockets. The
// first byte steers the harness: bit 0 MSG_TRUNC, bit 1 MSG_CTRUNC, bits 2-3 how many
// descriptors rode along (0-3), bit 4 whether they are network namespaces; the rest is the
// packet. Checks, besides "no crash": every descriptor is closed unless an accepted add keeps
// exactly one; an accepted request has a bounded, non-empty uid (snapshot_sent none); an error
// names what was wrong.

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "agent/zds/codec.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

bool IsOpen(int fd) { return fcntl(fd, F_GETFD) >= 0; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace zds = ambit::zds;
  ambit::fuzz::Input in(data, size);
  const uint8_t steer = in.Byte();
  int flags = 0;
  if (steer & 1) flags |= MSG_TRUNC;
  if (steer & 2) flags |= MSG_CTRUNC;
  const size_t nfds = (steer >> 2) & 3;
  const bool netns = (steer & 16) != 0;
  const absl::string_view rest = in.Rest();
  const std::string bytes(rest.data(), std::min(rest.size(), zds::kMaxRequestBytes));

  std::vector<ambit::UniqueFd> fds;
  std::vector<int> raw;
  for (size_t i = 0; i < nfds; ++i) {
    fds.emplace_back(open("/dev/null", O_RDONLY | O_CLOEXEC));
    FUZZ_REQUIRE(fds.back().valid());
    raw.push_back(fds.back().get());
  }
  auto check = [netns](int) {
    return netns ? absl::OkStatus() : absl::InvalidArgumentError("not a namespace (fuzz)");
  };
  auto r = zds::DecodeRequest(bytes, std::move(fds), flags, check);
  int kept = -1;
  if (r.ok()) {
    FUZZ_REQUIRE((flags & (MSG_TRUNC | MSG_CTRUNC)) == 0);
    if (r->type == zds::Request::Type::kAdd) {
      FUZZ_REQUIRE(nfds == 1 && netns && r->netns.valid());
      FUZZ_REQUIRE(!r->info.name.empty() && r->info.name.size() <= zds::kMaxNameBytes);
      FUZZ_REQUIRE(!r->info.namespace_name.empty() &&
                   r->info.namespace_name.size() <= zds::kMaxNamespaceBytes);
      kept = r->netns.get();
    } else {
      FUZZ_REQUIRE(nfds == 0 && !r->netns.valid());
    }
    if (r->type == zds::Request::Type::kSnapshotSent) {
      FUZZ_REQUIRE(r->uid.empty());
    } else {
      FUZZ_REQUIRE(!r->uid.empty() && r->uid.size() <= zds::kMaxUidBytes);
    }
    for (int fd : raw) FUZZ_REQUIRE(fd == kept ? IsOpen(fd) : !IsOpen(fd));
  } else {
    FUZZ_REQUIRE(!r.status().message().empty());
    for (int fd : raw) FUZZ_REQUIRE(!IsOpen(fd));
  }
  // The answers ambitd sends always fit what istio-cni reads.
  FUZZ_REQUIRE(zds::EncodeAck(bytes).size() <= 1024);
  return 0;
}
