// SPDX-License-Identifier: Apache-2.0
/* The shape that was refused (tests/unit/test_headroom.py compiles it with the pinned clang): a
 * program whose chain through a bpf_loop callback needs more than 512 bytes of stack, and a
 * callback whose `? 1 : 0` the compiler folds into a zero-extension no verifier range-checks. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct big { __u64 w[40]; };  /* 320 bytes */

__noinline int step_one(struct big *b, __u32 i)
{
	volatile __u64 tmp[24] = {};
	if (!b)
		return 0;  /* 192 bytes more, under the callback */
	tmp[i & 15] = b->w[i & 31];
	return tmp[(i + 1) & 15] != 0;
}

static long step(__u32 i, void *ctx)
{
	return step_one(ctx, i) ? 1 : 0;
}

SEC("tp_btf/sys_exit")
int prog(void *ctx)
{
	struct big b = {};
	b.w[bpf_get_prandom_u32() & 31] = 1;
	bpf_loop(16, step, &b, 0);
	return b.w[3] != 0;
}

char LICENSE[] SEC("license") = "GPL";
