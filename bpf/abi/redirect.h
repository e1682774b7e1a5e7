/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The one definition of every map key and value shared by ambit's redirect programs and the
 * agent. Included by BPF C (after <linux/bpf.h>) and by C++.
 *
 * Addresses are always 16 bytes; IPv4 is stored IPv4-mapped (::ffff:a.b.c.d) so both families
 * share one key layout.
 */
#ifndef AMBIT_BPF_ABI_REDIRECT_H
#define AMBIT_BPF_ABI_REDIRECT_H

#include <linux/types.h>

#define AMBIT_OUTBOUND_PORT 15001 /* tunnel listener for redirected outbound connections */
#define AMBIT_INBOUND_PLAIN_PORT 15006 /* plaintext that reached a pod */
#define AMBIT_HBONE_PORT 15008 /* mTLS tunnel (HBONE) */

/*
 * Version of everything ambit pins: map types, keys, values and sizes, and the pin names. Pins
 * live under <bpffs>/ambit/<instance>/v<AMBIT_ABI_VERSION>/; an agent that finds another
 * version's pins migrates from them and then removes them (agent/bpf/redirector.cc). Version 1
 * is the unversioned layout directly under <bpffs>/ambit/<instance>/. Bump on any change to
 * this file that alters a pinned object, or to the set of pinned maps.
 */
/* 3: ambit_node, ambit_pod_addrs, ambit_probes; a fifth drop reason. 4: ambit_wire (abi/wire.h)
 * and the tc accounting programs on each enrolled pod's interfaces. */
#define AMBIT_ABI_VERSION 4

#define AMBIT_MAX_PODS 1024
#define AMBIT_MAX_ORIG_DST 65536
#define AMBIT_MAX_CIDRS 256
#define AMBIT_MAX_DELIVER 16384
#define AMBIT_MAX_POD_ADDRS 4096 /* a pod has an address per family, some have more */
#define AMBIT_MAX_PROBES 16384 /* kubelet connections being set up or open at once */

/* Listener kinds in ambit_listen_v2. */
enum ambit_listener_kind {
	AMBIT_LISTENER_PLAIN = 0,
	AMBIT_LISTENER_HBONE = 1,
	AMBIT_LISTENER_KINDS = 2,
};

/*
 * The inbound listeners are bound to the pod's loopback (127.0.0.1 and [::1]), so an ordinary
 * socket lookup for a pod address (the tunnel's own delivery connect, above all) can never reach
 * one: only sk_lookup's bpf_sk_assign does. A loopback-bound socket takes one family, hence one
 * listener per family and kind. Family index: 0 IPv4, 1 IPv6.
 */
#define AMBIT_LISTENER_FAMILIES 2
#define AMBIT_LISTENER_KEY(slot, family_index, kind) \
	(((slot) * AMBIT_LISTENER_FAMILIES + (family_index)) * AMBIT_LISTENER_KINDS + (kind))

/*
 * Slots of ambit_drops: every path on which a program fails closed (refuses or drops instead of
 * steering) counts one here, so a drop is never silent. The agent's table of names and meanings
 * (agent/bpf/drops.cc) follows this order.
 */
enum ambit_drop_reason {
	/* connect4/6: no socket-local storage for the original destination; connect() refused. */
	AMBIT_DROP_CONNECT_NO_STORAGE = 0,
	/* sockops: the original destination could not be published in ambit_orig_dst; the tunnel
	 * finds no entry and resets the connection. */
	AMBIT_DROP_ORIG_DST_UPDATE = 1,
	/* sk_lookup: the pod has no listener of the SYN's family and kind; SYN dropped. */
	AMBIT_DROP_NO_LISTENER = 2,
	/* sk_lookup: bpf_sk_assign refused the pod's listener; SYN dropped. */
	AMBIT_DROP_SK_ASSIGN = 3,
	/* sockops: a node connection to a pod could not be recorded in ambit_probes; the tunnel
	 * treats it as any plaintext (STRICT refuses it). */
	AMBIT_DROP_PROBE_UPDATE = 4,
	AMBIT_DROP_REASONS = 5,
};

/* ambit_ports values: which directions skip redirection for a port. */
enum ambit_port_flags {
	AMBIT_PORT_BYPASS_OUT = 1 << 0,
	AMBIT_PORT_BYPASS_IN = 1 << 1,
};

/* ambit_pods value: one enrolled pod, keyed by its netns cookie (__u64). */
struct ambit_pod_info {
	__u32 slot; /* index of the pod's listeners in ambit_listen_v2 */
	__u32 flags; /* reserved */
};

/* An address and port as the application dialled them. */
struct ambit_sockaddr {
	__u8 addr[16]; /* IPv4-mapped for IPv4 */
	__u16 port; /* host byte order */
	__u16 family; /* AF_INET or AF_INET6: the socket's own family */
	__u32 pad;
};

/* ambit_orig_dst key: the redirected connection as the tunnel sees it after accept(). */
struct ambit_conn_key {
	__u64 netns_cookie;
	__u8 src_addr[16]; /* IPv4-mapped for IPv4 */
	__u16 src_port; /* host byte order */
	__u16 pad0;
	__u32 pad1;
};

/* ambit_deliver key: one connection the tunnel is opening to an application inside the pod.
 * Such a SYN is indistinguishable from outside traffic in sk_lookup (same addresses, ingress
 * ifindex of the pod's interface, no mark visible), so the tunnel lists it here while it connects. */
struct ambit_tuple_key {
	__u8 src_addr[16]; /* IPv4-mapped for IPv4 */
	__u8 dst_addr[16];
	__u16 src_port; /* host byte order */
	__u16 dst_port; /* host byte order */
};

/* ambit_node value (one entry, key 0): node-wide settings ambitd writes at start. */
struct ambit_node_config {
	/* Cookie of the node's network namespace (kubelet's, --node-netns): its TCP connections to
	 * enrolled pods' addresses are recorded in ambit_probes. 0: none recorded. */
	__u64 node_netns_cookie;
};

/* ambit_pod_addrs key: one address of an enrolled pod (the value is the pod's netns cookie). */
struct ambit_addr_key {
	__u8 addr[16]; /* IPv4-mapped for IPv4 */
};

/*
 * ambit_probes: a connection a socket of the node's network namespace opened to an enrolled pod,
 * keyed by struct ambit_tuple_key as the pod sees it (src: the node socket's address and port,
 * dst: the pod's address and port); the value is the node netns cookie. Written by sockops when
 * the source port is chosen, deleted when that socket closes, and taken (read and deleted) by
 * the data plane when it accepts the connection on the pod's plaintext listener.
 */

/* ambit_cidrs key: an LPM prefix over the 16-byte mapped address. */
struct ambit_cidr_key {
	__u32 prefixlen; /* in bits over addr; IPv4 /n is 96 + n */
	__u8 addr[16];
};

#endif /* AMBIT_BPF_ABI_REDIRECT_H */
