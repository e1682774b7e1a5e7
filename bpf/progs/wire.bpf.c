// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Wire accounting for one enrolled pod (ambitctl verify mtls): tc programs on the clsact ingress
 * and egress hooks of each of the pod's Ethernet interfaces, inside its network namespace, so
 * they see every packet crossing the namespace boundary whichever process sent it (the tunnel's
 * in-pod sockets, the application's own). TCP with 15008 on either side is HBONE (mTLS); any
 * other TCP or UDP, and any other IP protocol, is plaintext, but ICMP, ICMPv6 and IGMP are
 * not counted: they carry no application data, and neighbour discovery and multicast membership
 * reports would otherwise make every pod "send plaintext". The programs never change a
 * packet's fate (TC_ACT_UNSPEC).
 *
 * tc programs cannot read their network namespace's cookie on every kernel ambit supports, so
 * the agent loads one instance per pod with the cookie in pod_cookie, as with sk_lookup.
 * Parsing is bounded and has no loops: Ethernet, then one IPv4 or IPv6 header (of IPv6's
 * extension headers only a first hop-by-hop header is stepped over; behind any other, a packet
 * counts under that header's value, port 0), then the first 14 bytes of TCP or 4 of UDP.
 * The headers are read in place where the skb holds them linearly (ambit_load).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lib/addr.h"
#include "lib/wire.h"

const volatile __u64 pod_cookie = 0;

#define AMBIT_IPPROTO_HOPOPTS 0
#define AMBIT_IPPROTO_ICMPV6 58
#define AMBIT_TCP_FIN 0x01
#define AMBIT_TCP_SYN 0x02
#define AMBIT_TCP_RST 0x04
#define AMBIT_TCP_ACK 0x10

static __always_inline void ambit_wire_count(const struct ambit_wire_key *key,
					     const struct ambit_wire_value *add)
{
	struct ambit_wire_value *v = bpf_map_lookup_elem(&ambit_wire, key);

	if (!v) {
		/* BPF_NOEXIST: another CPU may have created it meanwhile; then count into that. */
		bpf_map_update_elem(&ambit_wire, key, add, BPF_NOEXIST);
		return;
	}
	/* Per-CPU value: plain adds suffice (tc runs with migration disabled). */
	v->bytes += add->bytes;
	v->packets += add->packets;
	v->payload += add->payload;
	v->syns += add->syns;
	v->resets += add->resets;
}

/*
 * Copies len bytes at off into to: straight from the packet's linear data when they lie there
 * (no helper call; the usual case, every header a pod's stack builds is linear), else through
 * bpf_skb_load_bytes. Under BPF_PROG_TEST_RUN this halves the parse's cost (about 75 ns to 25 ns
 * on the 2-vCPU test machine). Callers zero their buffers first: filled on either branch, an
 * uninitialised stack buffer trips the precision tracking of some verifiers ("verifier bug:
 * stack slot ..."), and the zeroing costs a few stores.
 */
static __always_inline int ambit_load(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;

	if (off <= 4096 && data + off + len <= end) {
		__builtin_memcpy(to, data + off, len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

static __always_inline int ambit_wire_account(struct __sk_buff *skb, int egress)
{
	struct ambit_wire_key key = {};
	struct ambit_wire_value add = {};
	__u32 len = skb->len, l3_off = ETH_HLEN, ip_hlen, l4_off, l3_len;
	__u16 sport = 0, dport = 0;
	__u8 proto, tcp_flags = 0;
	__u32 l4_hlen = 0, segs;
	int first_fragment = 1;

	if (len <= ETH_HLEN)
		return TC_ACT_UNSPEC;
	l3_len = len - ETH_HLEN;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip = {};

		if (ambit_load(skb, l3_off, &ip, sizeof(ip)) < 0)
			return TC_ACT_UNSPEC;
		ip_hlen = ip.ihl * 4;
		if (ip_hlen < sizeof(ip))
			return TC_ACT_UNSPEC;
		proto = ip.protocol;
		first_fragment = (bpf_ntohs(ip.frag_off) & 0x1fff) == 0;
		ambit_addr_from_v4(key.peer_addr, egress ? ip.daddr : ip.saddr);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6 = {};

		if (ambit_load(skb, l3_off, &ip6, sizeof(ip6)) < 0)
			return TC_ACT_UNSPEC;
		ip_hlen = sizeof(ip6);
		proto = ip6.nexthdr;
		if (proto == AMBIT_IPPROTO_HOPOPTS) {
			/* One step only: MLD reports (ICMPv6 behind hop-by-hop options) are control
			 * traffic like the rest of ICMPv6. */
			__u8 hop[2] = {}; /* next header, length in 8-byte units after the first 8 */

			if (ambit_load(skb, l3_off + ip_hlen, hop, sizeof(hop)) < 0)
				return TC_ACT_UNSPEC;
			proto = hop[0];
			ip_hlen += ((__u32)hop[1] + 1) * 8;
		}
		ambit_addr_from_v6(key.peer_addr,
				   egress ? ip6.daddr.in6_u.u6_addr32 : ip6.saddr.in6_u.u6_addr32);
	} else {
		return TC_ACT_UNSPEC; /* ARP and other non-IP frames carry no application data */
	}
	if (proto == IPPROTO_ICMP || proto == IPPROTO_IGMP || proto == AMBIT_IPPROTO_ICMPV6)
		return TC_ACT_UNSPEC;
	l4_off = l3_off + ip_hlen;
	if (first_fragment && proto == IPPROTO_TCP) {
		__u8 th[14] = {}; /* ports, seq, ack, data offset, flags */

		if (ambit_load(skb, l4_off, th, sizeof(th)) < 0)
			return TC_ACT_UNSPEC;
		sport = ((__u16)th[0] << 8) | th[1];
		dport = ((__u16)th[2] << 8) | th[3];
		l4_hlen = (th[12] >> 4) * 4;
		tcp_flags = th[13];
	} else if (first_fragment && proto == IPPROTO_UDP) {
		__u8 uh[4] = {};

		if (ambit_load(skb, l4_off, uh, sizeof(uh)) < 0)
			return TC_ACT_UNSPEC;
		sport = ((__u16)uh[0] << 8) | uh[1];
		dport = ((__u16)uh[2] << 8) | uh[3];
		l4_hlen = 8;
	}
	{
		/* The pod's port and the peer's, whichever way the packet goes. */
		__u16 local = egress ? sport : dport, peer = egress ? dport : sport;

		key.flags = egress ? AMBIT_WIRE_EGRESS : 0;
		if (proto == IPPROTO_TCP && (local == AMBIT_HBONE_PORT || peer == AMBIT_HBONE_PORT)) {
			key.flags |= AMBIT_WIRE_MTLS;
			key.port = AMBIT_HBONE_PORT;
			if (local == AMBIT_HBONE_PORT)
				key.flags |= AMBIT_WIRE_LOCAL_PORT;
		} else if (local != 0 && local <= peer) {
			key.port = local;
			key.flags |= AMBIT_WIRE_LOCAL_PORT;
		} else {
			key.port = peer;
		}
	}
	key.netns_cookie = pod_cookie;
	key.proto = proto;

	segs = skb->gso_segs > 1 ? skb->gso_segs : 1;
	add.packets = segs;
	/* A GSO super-packet carries its headers once; on the wire each segment has its own. */
	add.bytes = (__u64)l3_len + (__u64)(segs - 1) * (ip_hlen + l4_hlen);
	if (l4_hlen != 0 && l3_len > ip_hlen + l4_hlen)
		add.payload = l3_len - ip_hlen - l4_hlen;
	if ((tcp_flags & (AMBIT_TCP_SYN | AMBIT_TCP_ACK)) == AMBIT_TCP_SYN)
		add.syns = 1;
	if (tcp_flags & AMBIT_TCP_RST)
		add.resets = 1;
	ambit_wire_count(&key, &add);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int ambit_wire_ingress(struct __sk_buff *skb)
{
	return ambit_wire_account(skb, 0);
}

SEC("tc")
int ambit_wire_egress(struct __sk_buff *skb)
{
	return ambit_wire_account(skb, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
