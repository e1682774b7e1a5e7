// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Inbound steering for one enrolled pod, attached to that pod's netns with sk_lookup: a TCP SYN
 * to port 15008 goes to the HBONE listener of its family, any other port to the plaintext-inbound
 * listener of its family, where PeerAuthentication decides. The listeners are bound to loopback,
 * so nothing else reaches them from a pod address. With the listener gone the SYN is dropped, so plaintext
 * never reaches the application by accident.
 *
 * sk_lookup programs cannot read their netns cookie, so the agent loads one instance per pod with
 * that pod's slot in pod_slot; every instance shares the pinned maps.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lib/decision.h"

const volatile __u32 pod_slot = 0;

SEC("sk_lookup")
int ambit_sk_lookup(struct bpf_sk_lookup *ctx)
{
	struct ambit_tuple_key tuple = {};
	struct bpf_sock *sk;
	__u32 key;
	long err;
	int kind;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	if (ctx->family == AF_INET) {
		ambit_addr_from_v4(tuple.dst_addr, ctx->local_ip4);
		ambit_addr_from_v4(tuple.src_addr, ctx->remote_ip4);
	} else {
		__u32 l6[4] = {AMBIT_CTX_READ(ctx->local_ip6[0]), AMBIT_CTX_READ(ctx->local_ip6[1]),
			       AMBIT_CTX_READ(ctx->local_ip6[2]), AMBIT_CTX_READ(ctx->local_ip6[3])};
		__u32 r6[4] = {AMBIT_CTX_READ(ctx->remote_ip6[0]), AMBIT_CTX_READ(ctx->remote_ip6[1]),
			       AMBIT_CTX_READ(ctx->remote_ip6[2]), AMBIT_CTX_READ(ctx->remote_ip6[3])};
		ambit_addr_from_v6(tuple.dst_addr, l6);
		ambit_addr_from_v6(tuple.src_addr, r6);
	}
	tuple.dst_port = (__u16)ctx->local_port;
	tuple.src_port = bpf_ntohs(AMBIT_CTX_READ(ctx->remote_port));
	kind = ambit_inbound_kind(ctx->ingress_ifindex, &tuple);
	if (kind < 0)
		return SK_PASS;
	key = AMBIT_LISTENER_KEY(pod_slot, ctx->family == AF_INET6 ? 1 : 0, kind);
	sk = bpf_map_lookup_elem(&ambit_listen_v2, &key);
	if (!sk) {
		ambit_count_drop(AMBIT_DROP_NO_LISTENER);
		return SK_DROP;
	}
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		ambit_count_drop(AMBIT_DROP_SK_ASSIGN);
		return SK_DROP;
	}
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
