/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Maps shared by ambit's programs. The agent pins each one under
 * /sys/fs/bpf/ambit/<instance>/v<AMBIT_ABI_VERSION>/<map name> and re-opens it on restart, so
 * every map here survives an agent restart; pinning is set from userspace
 * (bpf_map__set_pin_path), not here, so test objects can include this header without pinning
 * anything.
 */
#ifndef AMBIT_BPF_LIB_MAPS_H
#define AMBIT_BPF_LIB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "abi/redirect.h"

/* netns cookie -> enrolled pod; written by ambitd on enroll/remove. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AMBIT_MAX_PODS);
	__type(key, __u64);
	__type(value, struct ambit_pod_info);
} ambit_pods SEC(".maps");

/* per-socket original destination of a redirected connect(); written by connect4/6. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ambit_sockaddr);
} ambit_sk_dst SEC(".maps");

/* {netns cookie, source} -> original destination; written by sockops, read and deleted by the
 * tunnel after accept(). LRU so entries of connections that never reach the tunnel age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, AMBIT_MAX_ORIG_DST);
	__type(key, struct ambit_conn_key);
	__type(value, struct ambit_sockaddr);
} ambit_orig_dst SEC(".maps");

/* port -> enum ambit_port_flags; written by ambitd from its bypass configuration. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} ambit_ports SEC(".maps");

/* destination prefix -> 1: outbound connections that skip the tunnel; written by ambitd. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, AMBIT_MAX_CIDRS);
	__type(key, struct ambit_cidr_key);
	__type(value, __u8);
} ambit_cidrs SEC(".maps");

/* connections the tunnel is opening to applications (tuple -> 1); written and deleted by the
 * tunnel around each connect(); sk_lookup leaves them alone. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AMBIT_MAX_DELIVER);
	__type(key, struct ambit_tuple_key);
	__type(value, __u8);
} ambit_deliver SEC(".maps");

/* AMBIT_LISTENER_KEY(pod slot, family, kind) -> the pod's loopback-bound inbound listener;
 * written by ambitd, which owns the listeners. A closed listener leaves the map, and sk_lookup
 * then drops. _v2: one listener per family (ambit_listeners held one dual-stack wildcard
 * listener per kind; ambitd removes that pin). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, AMBIT_MAX_PODS * AMBIT_LISTENER_FAMILIES * AMBIT_LISTENER_KINDS);
	__type(key, __u32);
	__type(value, __u64);
} ambit_listen_v2 SEC(".maps");

/* key 0 -> struct ambit_node_config; written by ambitd at start (--node-netns). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ambit_node_config);
} ambit_node SEC(".maps");

/* address of an enrolled pod -> its netns cookie; written by ambitd on enroll/remove. Only
 * connections from the node to these addresses are recorded as kubelet probes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AMBIT_MAX_POD_ADDRS);
	__type(key, struct ambit_addr_key);
	__type(value, __u64);
} ambit_pod_addrs SEC(".maps");

/* node connections to pods (tuple -> node netns cookie): written by sockops, deleted by sockops
 * when the node's socket closes and by the data plane when it accepts the connection. LRU, so a
 * flood of node connections evicts old entries instead of failing new ones. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, AMBIT_MAX_PROBES);
	__type(key, struct ambit_tuple_key);
	__type(value, __u64);
} ambit_probes SEC(".maps");

/* enum ambit_drop_reason -> times a program failed closed for that reason, per CPU; written by
 * every program, read and summed by ambitd (ambitctl bpf, ambit_bpf_drops_total). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, AMBIT_DROP_REASONS);
	__type(key, __u32);
	__type(value, __u64);
} ambit_drops SEC(".maps");

/* Per-CPU slot, so a plain increment suffices: programs of these types do not migrate. */
static __always_inline void ambit_count_drop(__u32 reason)
{
	__u64 *count = bpf_map_lookup_elem(&ambit_drops, &reason);

	if (count)
		*count += 1;
}

#endif /* AMBIT_BPF_LIB_MAPS_H */
