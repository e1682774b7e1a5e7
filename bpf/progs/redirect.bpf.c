// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Outbound redirection for enrolled pods: connect4/6 send TCP to the tunnel's listener inside the
 * pod's own netns and remember the original destination; sockops publishes it under the
 * connection's source address for the tunnel, and records the node's connections to enrolled pods
 * (kubelet probes, ambit_probes); getpeername4/6 show the application what it dialled.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lib/decision.h"

/* SO_MARK on the tunnel's own outbound sockets, and on its inbound delivery sockets (a second
 * mark, because the pod routes replies to delivery sockets back to the tunnel by that mark). */
const volatile __u32 ambit_mark = 0;
const volatile __u32 ambit_delivery_mark = 0;
/* The delivery mark of data planes of earlier builds, which may still drain during an upgrade. */
const volatile __u32 ambit_prev_delivery_mark = 0;
/* cgroup id of the agent's processes (0: none). */
const volatile __u64 ambit_agent_cgroup = 0;
const volatile __u16 ambit_outbound_port = AMBIT_OUTBOUND_PORT;

static __always_inline int ambit_is_agent(struct bpf_sock *sk)
{
	__u32 mark = sk->mark;

	if (mark != 0 && (mark == ambit_mark || mark == ambit_delivery_mark ||
			  mark == ambit_prev_delivery_mark))
		return 1;
	return ambit_agent_cgroup != 0 && bpf_get_current_cgroup_id() == ambit_agent_cgroup;
}

/* Common part of connect4/6: 1 to redirect (dst recorded), 0 to leave alone, -1 to refuse. */
static __always_inline int ambit_outbound(struct bpf_sock_addr *ctx, const struct ambit_sockaddr *dst)
{
	struct bpf_sock *sk = ctx->sk;
	struct ambit_sockaddr *stored;
	__u64 cookie;

	if (!sk || ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 0;
	cookie = bpf_get_netns_cookie(ctx);
	if (!bpf_map_lookup_elem(&ambit_pods, &cookie))
		return 0;
	if (ambit_is_agent(sk) || ambit_outbound_bypass(dst))
		return 0;
	stored = bpf_sk_storage_get(&ambit_sk_dst, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!stored) {
		/* fail closed: never let an enrolled pod's traffic skip the tunnel */
		ambit_count_drop(AMBIT_DROP_CONNECT_NO_STORAGE);
		return -1;
	}
	*stored = *dst;
	return 1;
}

SEC("cgroup/connect4")
int ambit_connect4(struct bpf_sock_addr *ctx)
{
	struct ambit_sockaddr dst = {};
	int verdict;

	ambit_addr_from_v4(dst.addr, ctx->user_ip4);
	dst.port = bpf_ntohs((__u16)ctx->user_port);
	dst.family = AF_INET;
	verdict = ambit_outbound(ctx, &dst);
	if (verdict < 0)
		return 0;
	if (verdict > 0) {
		ctx->user_ip4 = bpf_htonl(0x7f000001);
		ctx->user_port = bpf_htons(ambit_outbound_port);
	}
	return 1;
}

SEC("cgroup/connect6")
int ambit_connect6(struct bpf_sock_addr *ctx)
{
	struct ambit_sockaddr dst = {};
	__u32 ip6[4];
	int verdict;

	ip6[0] = AMBIT_CTX_READ(ctx->user_ip6[0]);
	ip6[1] = AMBIT_CTX_READ(ctx->user_ip6[1]);
	ip6[2] = AMBIT_CTX_READ(ctx->user_ip6[2]);
	ip6[3] = AMBIT_CTX_READ(ctx->user_ip6[3]);
	ambit_addr_from_v6(dst.addr, ip6);
	dst.port = bpf_ntohs((__u16)ctx->user_port);
	dst.family = AF_INET6;
	verdict = ambit_outbound(ctx, &dst);
	if (verdict < 0)
		return 0;
	if (verdict > 0) {
		if (ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0x0000ffff)) {
			/* IPv4-mapped destination on a dual-stack socket: the IPv4 listener. */
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
			ctx->user_ip6[3] = bpf_htonl(0x7f000001);
		} else {
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = 0;
			ctx->user_ip6[3] = bpf_htonl(1);
		}
		ctx->user_port = bpf_htons(ambit_outbound_port);
	}
	return 1;
}

/* The connection of skops's socket as its peer sees it: src is this socket's end. */
static __always_inline void ambit_sockops_tuple(struct bpf_sock_ops *skops, struct ambit_tuple_key *tuple)
{
	if (skops->family == AF_INET) {
		ambit_addr_from_v4(tuple->src_addr, skops->local_ip4);
		ambit_addr_from_v4(tuple->dst_addr, skops->remote_ip4);
	} else {
		__u32 l6[4] = {AMBIT_CTX_READ(skops->local_ip6[0]), AMBIT_CTX_READ(skops->local_ip6[1]),
			       AMBIT_CTX_READ(skops->local_ip6[2]), AMBIT_CTX_READ(skops->local_ip6[3])};
		__u32 r6[4] = {AMBIT_CTX_READ(skops->remote_ip6[0]), AMBIT_CTX_READ(skops->remote_ip6[1]),
			       AMBIT_CTX_READ(skops->remote_ip6[2]), AMBIT_CTX_READ(skops->remote_ip6[3])};
		ambit_addr_from_v6(tuple->src_addr, l6);
		ambit_addr_from_v6(tuple->dst_addr, r6);
	}
	tuple->src_port = (__u16)skops->local_port;
	tuple->dst_port = (__u16)bpf_ntohl(AMBIT_CTX_READ(skops->remote_port));
}

/*
 * A connection from the node's network namespace to an enrolled pod (a kubelet probe): recorded
 * in ambit_probes under its tuple for the pod's tunnel, and watched so that the entry goes when
 * the socket closes (a later connection reusing the tuple is not the node's unless it records
 * itself again).
 */
static __always_inline void ambit_record_probe(struct bpf_sock_ops *skops, __u64 cookie)
{
	struct ambit_tuple_key tuple = {};

	ambit_sockops_tuple(skops, &tuple);
	if (!ambit_is_node_probe(cookie, &tuple))
		return;
	if (bpf_map_update_elem(&ambit_probes, &tuple, &cookie, BPF_ANY)) {
		ambit_count_drop(AMBIT_DROP_PROBE_UPDATE);
		return;
	}
	bpf_sock_ops_cb_flags_set(skops, AMBIT_CTX_READ(skops->bpf_sock_ops_cb_flags) |
						 BPF_SOCK_OPS_STATE_CB_FLAG);
}

SEC("sockops")
int ambit_sockops(struct bpf_sock_ops *skops)
{
	struct ambit_conn_key key = {};
	struct ambit_sockaddr *dst;
	struct bpf_sock *sk;
	__u32 op = skops->op;

	if (op == BPF_SOCK_OPS_STATE_CB) {
		/* Only sockets ambit_record_probe watches get here. */
		if (skops->args[1] == BPF_TCP_CLOSE) {
			struct ambit_tuple_key tuple = {};

			ambit_sockops_tuple(skops, &tuple);
			bpf_map_delete_elem(&ambit_probes, &tuple);
		}
		return 1;
	}
	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	sk = skops->sk;
	if (!sk)
		return 1;
	key.netns_cookie = bpf_get_netns_cookie(skops);
	dst = bpf_sk_storage_get(&ambit_sk_dst, sk, 0, 0);
	if (!dst) {
		ambit_record_probe(skops, key.netns_cookie);
		return 1;
	}
	if (skops->family == AF_INET) {
		ambit_addr_from_v4(key.src_addr, skops->local_ip4);
	} else {
		__u32 ip6[4] = {AMBIT_CTX_READ(skops->local_ip6[0]), AMBIT_CTX_READ(skops->local_ip6[1]),
				AMBIT_CTX_READ(skops->local_ip6[2]), AMBIT_CTX_READ(skops->local_ip6[3])};
		ambit_addr_from_v6(key.src_addr, ip6);
	}
	key.src_port = (__u16)skops->local_port;
	/* If this fails the tunnel finds no entry and resets the connection (fail closed). */
	if (bpf_map_update_elem(&ambit_orig_dst, &key, dst, BPF_ANY))
		ambit_count_drop(AMBIT_DROP_ORIG_DST_UPDATE);
	return 1;
}

SEC("cgroup/getpeername4")
int ambit_getpeername4(struct bpf_sock_addr *ctx)
{
	struct ambit_sockaddr *dst;
	__u32 ip4;

	if (!ctx->sk)
		return 1;
	dst = bpf_sk_storage_get(&ambit_sk_dst, ctx->sk, 0, 0);
	if (!dst || dst->family != AF_INET)
		return 1;
	__builtin_memcpy(&ip4, dst->addr + 12, 4);
	ctx->user_ip4 = ip4;
	ctx->user_port = bpf_htons(dst->port);
	return 1;
}

SEC("cgroup/getpeername6")
int ambit_getpeername6(struct bpf_sock_addr *ctx)
{
	struct ambit_sockaddr *dst;
	__u32 ip6[4];

	if (!ctx->sk)
		return 1;
	dst = bpf_sk_storage_get(&ambit_sk_dst, ctx->sk, 0, 0);
	if (!dst || dst->family != AF_INET6)
		return 1;
	__builtin_memcpy(ip6, dst->addr, 16);
	ctx->user_ip6[0] = ip6[0];
	ctx->user_ip6[1] = ip6[1];
	ctx->user_ip6[2] = ip6[2];
	ctx->user_ip6[3] = ip6[3];
	ctx->user_port = bpf_htons(dst->port);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
