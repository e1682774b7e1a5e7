/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Contexts of the test-only programs in decision_test.bpf.c, shared with bpf_decision_test.cc.
 *
 * Userspace passes one of these as ctx_in to BPF_PROG_TEST_RUN and reads the verdict from the
 * run's retval, biased by AMBIT_TEST_RET_BIAS. Why raw_tp and not BPF_PROG_TYPE_SYSCALL (whose
 * ctx the kernel writes back into the ctx_in buffer; it refuses ctx_out): syscall programs are
 * always sleepable, and the verifier refuses LPM tries (ambit_cidrs) in sleepable programs.
 * A raw_tp context is read-only, at most 12 __u64 words, and read only in whole aligned words,
 * hence the unions.
 */
#ifndef AMBIT_TESTS_BPF_DECISION_TEST_ABI_H
#define AMBIT_TESTS_BPF_DECISION_TEST_ABI_H

#include <linux/types.h>

#include "abi/redirect.h"

#define AMBIT_TEST_OUTBOUND_WORDS 3
#define AMBIT_TEST_INBOUND_WORDS 5

/* ambit_test_outbound runs ambit_outbound_bypass(&in.dst): retval = bias + (0 or 1). */
union ambit_test_outbound_ctx {
	struct {
		struct ambit_sockaddr dst;
	} in;
	__u64 words[AMBIT_TEST_OUTBOUND_WORDS];
};

/* ambit_test_inbound runs ambit_inbound_kind(in.ingress_ifindex, &in.tuple):
 * retval = bias + (enum ambit_listener_kind or -1). */
union ambit_test_inbound_ctx {
	struct {
		struct ambit_tuple_key tuple;
		__u32 ingress_ifindex;
	} in;
	__u64 words[AMBIT_TEST_INBOUND_WORDS];
};

/* ambit_test_probe runs ambit_is_node_probe(in.netns_cookie, &in.tuple): retval = bias + (0 or
 * 1). */
#define AMBIT_TEST_PROBE_WORDS 6
union ambit_test_probe_ctx {
	struct {
		__u64 netns_cookie;
		struct ambit_tuple_key tuple;
	} in;
	__u64 words[AMBIT_TEST_PROBE_WORDS];
};

/* Added to every verdict so that -1 stays positive and a verdict of 0 is told apart from a
 * program that returned 0 for any other reason. */
#define AMBIT_TEST_RET_BIAS 1000

#endif /* AMBIT_TESTS_BPF_DECISION_TEST_ABI_H */
