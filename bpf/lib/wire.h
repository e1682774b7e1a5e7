/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The wire-accounting map. Kept out of lib/maps.h so that only the tc program (and not every
 * program that includes the redirect maps) carries it; the agent pins it next to them.
 */
#ifndef AMBIT_BPF_LIB_WIRE_H
#define AMBIT_BPF_LIB_WIRE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "abi/wire.h"

/* struct ambit_wire_key -> counters per CPU: what crossed each enrolled pod's interfaces; written
 * by the tc program, read (and, when a pod goes, deleted) by ambitd; pinned, survives a restart. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, AMBIT_MAX_WIRE);
	__type(key, struct ambit_wire_key);
	__type(value, struct ambit_wire_value);
} ambit_wire SEC(".maps");

#endif /* AMBIT_BPF_LIB_WIRE_H */
