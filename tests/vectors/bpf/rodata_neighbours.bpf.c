// SPDX-License-Identifier: Apache-2.0
/* The agent's settings between constants that are not zero (tests/integration/test_kernel_layouts.py
 * compiles it with the pinned clang and loads it): the loader must write `cfg` where the object's BTF
 * puts it and leave every other byte of .rodata as the compiler wrote it. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "capture.h"

char LICENSE[] SEC("license") = "GPL";

const volatile __u64 before_cfg = 0x0123456789abcdefULL;
const volatile struct oke_config cfg = { .frame_budget = 7, .wakeup_bytes = 9 };  /* the agent overwrites it */
const volatile __u32 after_cfg[3] = { 0xdeadbeef, 0xfeedface, 0x0badf00d };

__u64 seen;  /* .bss: the program reads every constant, so that each stays a variable of its own */

SEC("tp_btf/sys_exit")
int prog(void *ctx)
{
	seen = before_cfg ^ cfg.frame_budget ^ cfg.self_tgid ^ after_cfg[0] ^ after_cfg[2];
	return 0;
}
