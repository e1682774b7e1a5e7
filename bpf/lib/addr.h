/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Address helpers shared by ambit's programs. Header-only, no maps. */
#ifndef AMBIT_BPF_LIB_ADDR_H
#define AMBIT_BPF_LIB_ADDR_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "abi/redirect.h"

/* libc's socket headers do not build for the BPF target; these values are the kernel's ABI. */
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif

/* Reads a context field exactly once, at its own offset and width: the verifier rejects the
 * merged or offset loads clang would otherwise emit for adjacent ctx fields. */
#define AMBIT_CTX_READ(field) (*(volatile typeof(field) *)&(field))

static __always_inline void ambit_addr_from_v4(__u8 out[16], __u32 ip4_be)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &ip4_be, 4);
}

static __always_inline void ambit_addr_from_v6(__u8 out[16], const __u32 ip6_be[4])
{
	__u32 w[4] = {ip6_be[0], ip6_be[1], ip6_be[2], ip6_be[3]};
	__builtin_memcpy(out, w, 16);
}

static __always_inline int ambit_v4_is_loopback(__u32 ip4_be)
{
	return (bpf_ntohl(ip4_be) >> 24) == 127;
}

/* ::1, or IPv4-mapped 127/8. */
static __always_inline int ambit_v6_is_loopback(const __u32 ip6_be[4])
{
	if (ip6_be[0] != 0 || ip6_be[1] != 0)
		return 0;
	if (ip6_be[2] == 0 && ip6_be[3] == bpf_htonl(1))
		return 1;
	if (ip6_be[2] == bpf_htonl(0x0000ffff))
		return ambit_v4_is_loopback(ip6_be[3]);
	return 0;
}

/* The unspecified address (0.0.0.0 or ::): connecting there means "this host". */
static __always_inline int ambit_v6_is_any(const __u32 ip6_be[4])
{
	return (ip6_be[0] | ip6_be[1] | ip6_be[2] | ip6_be[3]) == 0;
}

#endif /* AMBIT_BPF_LIB_ADDR_H */
