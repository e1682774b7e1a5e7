#include "agent/enroll/pod_net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fib_rules.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <netlink/netlink.h>
#include <netlink/route/route.h>
#include <netlink/route/rule.h>
#include <sys/socket.h>

#include <memory>

#include "abi/redirect.h"
#include "absl/strings/str_cat.h"
#include "agent/common/netns.h"
#include "agent/common/status.h"

namespace ambit::enroll {
namespace {

absl::StatusOr<UniqueFd> Listen(int family, const char* addr, uint16_t port, bool v6only,
                                int backlog, const char* what) {
  UniqueFd fd(socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return absl::ErrnoToStatus(errno, absl::StrCat("socket for ", what));
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_storage ss{};
  socklen_t len;
  if (family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    inet_pton(AF_INET, addr, &sin->sin_addr);
    len = sizeof *sin;
  } else {
    int v6 = v6only ? 1 : 0;
    if (setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof v6) < 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("IPV6_V6ONLY for ", what));
    }
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    inet_pton(AF_INET6, addr, &sin6->sin6_addr);
    len = sizeof *sin6;
  }
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) < 0) {
    return absl::ErrnoToStatus(errno,
                               absl::StrCat("bind ", what,
                                            " in pod network namespace (is the pod's loopback up, "
                                            "and is the port free of the application?)"));
  }
  if (listen(fd.get(), backlog) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("listen on ", what));
  }
  return fd;
}

// IPv6 is usable in the calling thread's namespace (not compiled out, not disabled on lo).
bool HasIpv6(const std::string& proc_root) {
  UniqueFd probe(socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!probe) return false;
  const std::string path = proc_root + "/sys/net/ipv6/conf/lo/disable_ipv6";
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  char c = '1';
  return fd && read(fd.get(), &c, 1) == 1 && c == '0';
}

// `name` is relative to <proc_root>/sys, e.g. "net/ipv4/tcp_fwmark_accept".
absl::Status WriteSysctl(const std::string& proc_root, const char* name, const char* value) {
  const std::string path = absl::StrCat(proc_root, "/sys/", name);
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd || write(fd.get(), value, strlen(value)) < 0) {
    const int err = errno;
    std::string hint;
    if (err == EROFS) {
      hint =
          absl::StrCat(" (", proc_root,
                       "/sys is mounted read-only, as in a container: mount the host's /proc "
                       "read-write elsewhere, e.g. /host/proc, and pass --host-proc=/host/proc)");
    }
    return absl::ErrnoToStatus(err,
                               absl::StrCat("write ", path, " in pod network namespace", hint));
  }
  return absl::OkStatus();
}

struct NlSockDeleter {
  void operator()(nl_sock* s) const { nl_socket_free(s); }
};
struct RuleDeleter {
  void operator()(rtnl_rule* r) const { rtnl_rule_put(r); }
};
struct RouteDeleter {
  void operator()(rtnl_route* r) const { rtnl_route_put(r); }
};
struct AddrDeleter {
  void operator()(nl_addr* a) const { nl_addr_put(a); }
};

absl::Status NlError(int err, const std::string& what) {
  return absl::InternalError(absl::StrCat(what, " in pod network namespace: ", nl_geterror(err)));
}

absl::Status AddMarkRule(nl_sock* sock, int family, const PodNetOptions& o, uint32_t mark) {
  std::unique_ptr<rtnl_rule, RuleDeleter> rule(rtnl_rule_alloc());
  rtnl_rule_set_family(rule.get(), family);
  rtnl_rule_set_prio(rule.get(), o.rule_priority);
  rtnl_rule_set_mark(rule.get(), mark);
  rtnl_rule_set_mask(rule.get(), 0xffffffff);
  rtnl_rule_set_table(rule.get(), o.route_table);
  rtnl_rule_set_action(rule.get(), FR_ACT_TO_TBL);
  int err = rtnl_rule_add(sock, rule.get(), NLM_F_CREATE | NLM_F_EXCL);
  if (err < 0 && err != -NLE_EXIST) return NlError(err, "add fwmark rule");
  return absl::OkStatus();
}

absl::Status AddRuleAndRoute(nl_sock* sock, int family, const PodNetOptions& o) {
  AMBIT_RETURN_IF_ERROR(AddMarkRule(sock, family, o, o.delivery_mark));
  if (o.previous_delivery_mark != 0 && o.previous_delivery_mark != o.delivery_mark) {
    AMBIT_RETURN_IF_ERROR(AddMarkRule(sock, family, o, o.previous_delivery_mark));
  }
  int err = 0;

  uint8_t zero[16] = {};
  std::unique_ptr<nl_addr, AddrDeleter> dst(
      nl_addr_build(family, zero, family == AF_INET ? 4 : 16));
  nl_addr_set_prefixlen(dst.get(), 0);
  std::unique_ptr<rtnl_route, RouteDeleter> route(rtnl_route_alloc());
  rtnl_route_set_family(route.get(), family);
  rtnl_route_set_table(route.get(), o.route_table);
  rtnl_route_set_type(route.get(), RTN_LOCAL);
  rtnl_route_set_scope(route.get(), RT_SCOPE_HOST);
  rtnl_route_set_dst(route.get(), dst.get());
  rtnl_nexthop* nh = rtnl_route_nh_alloc();
  rtnl_route_nh_set_ifindex(nh, 1);         // lo
  rtnl_route_add_nexthop(route.get(), nh);  // the route owns nh from here
  err = rtnl_route_add(sock, route.get(), NLM_F_CREATE | NLM_F_REPLACE);
  if (err < 0) return NlError(err, "add local route to table");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PodListeners> CreatePodListeners(int netns_fd, const PodNetOptions& options) {
  PodListeners out;
  AMBIT_RETURN_IF_ERROR(RunInNetns(netns_fd, [&]() -> absl::Status {
    AMBIT_ASSIGN_OR_RETURN(out.outbound_v4,
                           Listen(AF_INET, "127.0.0.1", AMBIT_OUTBOUND_PORT, false, options.backlog,
                                  "outbound listener 127.0.0.1:15001"));
    if (HasIpv6(options.proc_root)) {
      AMBIT_ASSIGN_OR_RETURN(out.outbound_v6,
                             Listen(AF_INET6, "::1", AMBIT_OUTBOUND_PORT, true, options.backlog,
                                    "outbound listener [::1]:15001"));
    }
    // Inbound listeners on loopback only: bpf_sk_assign (sk_lookup) steers a pod address's SYNs
    // to them, and nothing else can reach them. The data plane's own delivery connects to a pod
    // address, so it finds the application or nothing, never one of these (a delivery to
    // <pod ip>:15006 would otherwise be accepted by the tunnel again, without end).
    AMBIT_ASSIGN_OR_RETURN(
        out.plain_v4, Listen(AF_INET, "127.0.0.1", AMBIT_INBOUND_PLAIN_PORT, false, options.backlog,
                             "plaintext-inbound listener 127.0.0.1:15006"));
    AMBIT_ASSIGN_OR_RETURN(out.hbone_v4, Listen(AF_INET, "127.0.0.1", AMBIT_HBONE_PORT, false,
                                                options.backlog, "HBONE listener 127.0.0.1:15008"));
    if (out.outbound_v6.valid()) {
      AMBIT_ASSIGN_OR_RETURN(
          out.plain_v6, Listen(AF_INET6, "::1", AMBIT_INBOUND_PLAIN_PORT, true, options.backlog,
                               "plaintext-inbound listener [::1]:15006"));
      AMBIT_ASSIGN_OR_RETURN(out.hbone_v6, Listen(AF_INET6, "::1", AMBIT_HBONE_PORT, true,
                                                  options.backlog, "HBONE listener [::1]:15008"));
    }
    return absl::OkStatus();
  }));
  return out;
}

absl::Status ConfigurePodRouting(int netns_fd, const PodNetOptions& options) {
  return RunInNetns(netns_fd, [&]() -> absl::Status {
    AMBIT_RETURN_IF_ERROR(WriteSysctl(options.proc_root, "net/ipv4/tcp_fwmark_accept", "1"));
    // The kernel's own answer to a delivery SYN that finds no listener (a RST) must carry the
    // SYN's mark too, or it is routed out of the pod towards the client's real address and the
    // data plane's connect() retries for tens of seconds instead of failing at once.
    AMBIT_RETURN_IF_ERROR(WriteSysctl(options.proc_root, "net/ipv4/fwmark_reflect", "1"));
    std::unique_ptr<nl_sock, NlSockDeleter> sock(nl_socket_alloc());
    if (!sock) return absl::ResourceExhaustedError("allocate netlink socket");
    int err = nl_connect(sock.get(), NETLINK_ROUTE);
    if (err < 0) return NlError(err, "connect rtnetlink");
    AMBIT_RETURN_IF_ERROR(AddRuleAndRoute(sock.get(), AF_INET, options));
    // IPv6 may be disabled in the pod; then there is nothing to route.
    if (HasIpv6(options.proc_root)) {
      AMBIT_RETURN_IF_ERROR(WriteSysctl(options.proc_root, "net/ipv6/fwmark_reflect", "1"));
      AMBIT_RETURN_IF_ERROR(AddRuleAndRoute(sock.get(), AF_INET6, options));
    }
    return absl::OkStatus();
  });
}

}  // namespace ambit::enroll
