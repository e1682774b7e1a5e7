/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Wire accounting (ambitctl verify mtls): the key and value of ambit_wire, shared by the tc
 * program that counts every packet crossing an enrolled pod's network namespace boundary
 * (bpf/progs/wire.bpf.c) and the agent that sums them (agent/bpf/wire.cc). Included by BPF C
 * (after <linux/bpf.h>) and by C++. Pinned with the other maps, under the same ABI version
 * (AMBIT_ABI_VERSION in abi/redirect.h).
 */
#ifndef AMBIT_BPF_ABI_WIRE_H
#define AMBIT_BPF_ABI_WIRE_H

#include <linux/types.h>

/* Bounded: LRU, so a pod talking to many peers evicts its oldest idle flows' counters instead of
 * failing to count new ones (the agent folds what it read before eviction into its totals). */
#define AMBIT_MAX_WIRE 16384

/* ambit_wire_key.flags */
enum ambit_wire_flags {
	/* The packet left the pod (egress); else it entered the pod (ingress). */
	AMBIT_WIRE_EGRESS = 1 << 0,
	/* `port` is the pod's own port (the peer dialled the pod); else the peer's. */
	AMBIT_WIRE_LOCAL_PORT = 1 << 1,
	/* TCP with 15008 (HBONE, mTLS) on either side; everything else counted is plaintext. */
	AMBIT_WIRE_MTLS = 1 << 2,
};

/*
 * One flow class of one pod: {pod, peer address, service port and its side, protocol, class,
 * direction}. The service port is 15008 for HBONE, else the lower of the two ports (an ephemeral
 * client port is the higher one under Linux's default ip_local_port_range), so that the key
 * space grows with the services a pod talks to, not with its connections.
 */
struct ambit_wire_key {
	__u64 netns_cookie; /* the enrolled pod's network namespace */
	__u8 peer_addr[16]; /* IPv4-mapped for IPv4 */
	__u16 port; /* host byte order; 0 for a protocol without ports or a non-first fragment */
	__u8 proto; /* IPPROTO_TCP, IPPROTO_UDP, or another IP protocol */
	__u8 flags; /* enum ambit_wire_flags */
	__u32 pad;
};

/* Counters of one key, per CPU; the agent sums the CPUs. */
struct ambit_wire_value {
	__u64 bytes; /* IP bytes (headers included) */
	__u64 packets; /* wire packets (GSO super-packets count their segments) */
	__u64 payload; /* bytes above the TCP or UDP header: what an application sent */
	__u64 syns; /* TCP SYN without ACK: connection attempts, in this direction */
	__u64 resets; /* TCP RST */
};

#endif /* AMBIT_BPF_ABI_WIRE_H */
