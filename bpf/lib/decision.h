/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Redirect decisions, kept apart from the hooks so that tests can run them through
 * BPF_PROG_TEST_RUN (tests/bpf/decision_test.bpf.c) on exactly this code.
 */
#ifndef AMBIT_BPF_LIB_DECISION_H
#define AMBIT_BPF_LIB_DECISION_H

#include "lib/addr.h"
#include "lib/maps.h"

#define AMBIT_LOOPBACK_IFINDEX 1 /* lo is always ifindex 1 in a network namespace */

static __always_inline int ambit_addr_is_loopback_or_any(const __u8 a[16])
{
	__u32 w[4];
	__builtin_memcpy(w, a, 16);
	return ambit_v6_is_loopback(w) || ambit_v6_is_any(w) ||
	       (w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0x0000ffff) && w[3] == 0);
}

/* Nonzero when an outbound connect() to dst must go direct instead of through the tunnel. */
static __always_inline int ambit_outbound_bypass(const struct ambit_sockaddr *dst)
{
	if (ambit_addr_is_loopback_or_any(dst->addr))
		return 1;
	__u32 port = dst->port;
	__u8 *flags = bpf_map_lookup_elem(&ambit_ports, &port);
	if (flags && (*flags & AMBIT_PORT_BYPASS_OUT))
		return 1;
	struct ambit_cidr_key key = {.prefixlen = 128};
	__builtin_memcpy(key.addr, dst->addr, 16);
	if (bpf_map_lookup_elem(&ambit_cidrs, &key))
		return 1;
	return 0;
}

/*
 * Which listener an inbound TCP SYN in an enrolled pod goes to: an enum ambit_listener_kind, or
 * -1 to leave the connection alone (loopback, the tunnel's own delivery, or a bypassed port).
 */
static __always_inline int ambit_inbound_kind(__u32 ingress_ifindex,
					      const struct ambit_tuple_key *tuple)
{
	__u16 local_port = tuple->dst_port;

	if (ambit_addr_is_loopback_or_any(tuple->dst_addr))
		return -1;
	if (bpf_map_lookup_elem(&ambit_deliver, tuple))
		return -1; /* the tunnel delivering to the application */
	/*
	 * Ingress on lo with a pod address as destination. The kernel reports traffic to the pod's
	 * own address with the ifindex of the interface holding it (so the rules below apply), but
	 * should lo show up here, the tunnel's HBONE connection to its own pod (a pod dialling
	 * itself) still needs the HBONE listener, which is bound to loopback and reachable only
	 * through sk_lookup. Anything else stays as the pod sent it.
	 */
	if (ingress_ifindex == AMBIT_LOOPBACK_IFINDEX)
		return local_port == AMBIT_HBONE_PORT ? AMBIT_LISTENER_HBONE : -1;
	__u32 port = local_port;
	__u8 *flags = bpf_map_lookup_elem(&ambit_ports, &port);
	if (flags && (*flags & AMBIT_PORT_BYPASS_IN))
		return -1;
	return local_port == AMBIT_HBONE_PORT ? AMBIT_LISTENER_HBONE : AMBIT_LISTENER_PLAIN;
}

/*
 * Whether a TCP connection a socket opened from network namespace netns_cookie, with the
 * addresses and ports in tuple (src: the socket's own), is a kubelet probe to record in
 * ambit_probes: the socket is in the node's network namespace and dials an enrolled pod's
 * address. 1 or 0.
 */
static __always_inline int ambit_is_node_probe(__u64 netns_cookie, const struct ambit_tuple_key *tuple)
{
	__u32 zero = 0;
	struct ambit_node_config *node = bpf_map_lookup_elem(&ambit_node, &zero);
	struct ambit_addr_key dst;

	if (!node || node->node_netns_cookie == 0 || node->node_netns_cookie != netns_cookie)
		return 0;
	__builtin_memcpy(dst.addr, tuple->dst_addr, 16);
	return bpf_map_lookup_elem(&ambit_pod_addrs, &dst) != NULL;
}

#endif /* AMBIT_BPF_LIB_DECISION_H */
