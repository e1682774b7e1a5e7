// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Test-only programs that run ambit's redirect decisions (bpf/lib/decision.h, the very code the
 * production hooks inline) on inputs from userspace, through BPF_PROG_TEST_RUN. The object gets
 * its own unpinned copies of the maps in bpf/lib/maps.h, which the test fills. See
 * decision_test_abi.h for why these are raw_tp programs.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "lib/decision.h"
#include "decision_test_abi.h"

_Static_assert(sizeof(union ambit_test_outbound_ctx) == AMBIT_TEST_OUTBOUND_WORDS * 8, "ctx size");
_Static_assert(sizeof(union ambit_test_inbound_ctx) == AMBIT_TEST_INBOUND_WORDS * 8, "ctx size");
_Static_assert(sizeof(union ambit_test_probe_ctx) == AMBIT_TEST_PROBE_WORDS * 8, "ctx size");

SEC("raw_tp")
int ambit_test_outbound(__u64 *ctx)
{
	union ambit_test_outbound_ctx c;

	for (int i = 0; i < AMBIT_TEST_OUTBOUND_WORDS; i++)
		c.words[i] = ctx[i];
	return AMBIT_TEST_RET_BIAS + ambit_outbound_bypass(&c.in.dst);
}

SEC("raw_tp")
int ambit_test_inbound(__u64 *ctx)
{
	union ambit_test_inbound_ctx c;

	for (int i = 0; i < AMBIT_TEST_INBOUND_WORDS; i++)
		c.words[i] = ctx[i];
	return AMBIT_TEST_RET_BIAS + ambit_inbound_kind(c.in.ingress_ifindex, &c.in.tuple);
}

SEC("raw_tp")
int ambit_test_probe(__u64 *ctx)
{
	union ambit_test_probe_ctx c;

	for (int i = 0; i < AMBIT_TEST_PROBE_WORDS; i++)
		c.words[i] = ctx[i];
	return AMBIT_TEST_RET_BIAS + ambit_is_node_probe(c.in.netns_cookie, &c.in.tuple);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
