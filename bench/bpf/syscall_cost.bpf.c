// SPDX-License-Identifier: Apache-2.0
/* The pieces of what a raw syscall tracepoint program costs every syscall of every process, one
 * program pair each, for bench/bench_syscall_cost.py: attaching at all (empty programs), the
 * syscall-number test, a hash map lookup keyed by pid_tgid, a per-task storage lookup. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} by_pid_tgid SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} per_task SEC(".maps");

volatile __u64 sink;

SEC("tp_btf/sys_enter")
int BPF_PROG(empty_enter, struct pt_regs *regs, long id)
{
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(empty_exit, struct pt_regs *regs, long ret)
{
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(nr_enter, struct pt_regs *regs, long id)
{
	if (id == 0 || id == 1 || id == 44 || id == 45)
		sink++;
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(nr_exit, struct pt_regs *regs, long ret)
{
	long nr = regs->orig_ax;  /* a direct load through the BTF pointer */
	if (nr == 0 || nr == 1 || nr == 44 || nr == 45)
		sink++;
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(nr_probe_exit, struct pt_regs *regs, long ret)
{
	long nr = BPF_CORE_READ(regs, orig_ax);  /* through bpf_probe_read_kernel */
	if (nr == 0 || nr == 1 || nr == 44 || nr == 45)
		sink++;
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(hash_enter, struct pt_regs *regs, long id)
{
	if (id != 0 && id != 1)
		return 0;
	__u64 key = bpf_get_current_pid_tgid();
	if (bpf_map_lookup_elem(&by_pid_tgid, &key))
		sink++;
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(hash_exit, struct pt_regs *regs, long ret)
{
	long nr = regs->orig_ax;
	if (nr != 0 && nr != 1)
		return 0;
	__u64 key = bpf_get_current_pid_tgid();
	if (bpf_map_lookup_elem(&by_pid_tgid, &key))
		sink++;
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(task_enter, struct pt_regs *regs, long id)
{
	if (id != 0 && id != 1)
		return 0;
	if (bpf_task_storage_get(&per_task, bpf_get_current_task_btf(), 0, 0))
		sink++;
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(task_exit, struct pt_regs *regs, long ret)
{
	long nr = regs->orig_ax;
	if (nr != 0 && nr != 1)
		return 0;
	if (bpf_task_storage_get(&per_task, bpf_get_current_task_btf(), 0, 0))
		sink++;
	return 0;
}
